//! Least privilege on the bus: what each kind of process may publish and
//! subscribe to, written as a nats-server `accounts` block.
//!
//! Three roles share one account (they share the subjects and the JetStream
//! state of the groups):
//!
//! | role | may |
//! |------|-----|
//! | **device** of group *g* | everything under `understudy.<g>.` (beats, goodbyes, events, its services' local subjects, control and settings of its own group), network-wide presence; JetStream for *g*'s lease, settings (the hold, each device's stored score/online) and project buckets and the events stream; read every group's heartbeats and goodbyes (the network-wide counts, B10); reply to requests it receives |
//! | **gateway** (and operators' CLI) | ask any group's devices (control, roster, settings such as the show hold), trigger elections, announce its sessions' presence; read heartbeats, goodbyes, events and presence; read (never write) the lease, settings and project buckets (a hold is written by a device of the group, asked on `understudy.<g>.settings`) |
//! | **observer** | read heartbeats, goodbyes, events and presence, ask for a roster; read the buckets; nothing else — no control, no trigger, no `$KV` write |
//!
//! So a device of one group cannot publish on another group's subjects nor
//! touch its buckets, and an observer cannot change anything. What is
//! allowed is listed subject by subject below (no `>` over the JetStream
//! API), so a reader can check each against docs/bus.md. nats-server's
//! configuration cannot template a user's group into its permissions, so
//! [`accounts_config`] writes one device user per group.
//!
//! `understudy nats-config` prints this block; `deploy/nats/` ships one made
//! by it (docs/security.md).

use std::fmt::Write as _;

use understudy_protocol::{GroupName, subjects};

/// The account every understudy user belongs to.
pub const ACCOUNT: &str = "UNDERSTUDY";

/// What a user may do on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A device of one group (every service of it).
    Device(GroupName),
    /// The control gateway, and operators' CLI commands (score, trigger,
    /// status, events, project).
    Gateway,
    /// Read-only: dashboards, monitors, integrators who only listen.
    Observer,
}

/// The subjects a role may publish and subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish on (NATS wildcards).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may reply to the requests it receives (once each, to
    /// the reply subject the request named: nats-server's `allow_responses`).
    pub allow_responses: bool,
}

impl Permissions {
    /// Whether this role may publish on `subject` (as nats-server decides
    /// it from the lists, leaving replies aside).
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| subjects::matches(p, subject))
    }

    /// Whether this role may subscribe to (receive) `subject`.
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.iter().any(|p| subjects::matches(p, subject))
    }
}

/// The JetStream API a reader of `stream` needs: its info, direct and
/// message gets, and ordered consumers (create, info, delete, next,
/// flow control).
fn read_stream(stream: &str) -> Vec<String> {
    [
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
    .into()
}

/// What the owner of `stream` needs besides reading it: creating it (the
/// first device of a group does, idempotently).
fn own_stream(stream: &str) -> Vec<String> {
    let mut allowed = read_stream(stream);
    allowed.push(format!("$JS.API.STREAM.CREATE.{stream}"));
    allowed
}

/// The JetStream reads every role has: account info and the events stream.
fn common_reads() -> Vec<String> {
    let mut allowed = vec!["$JS.API.INFO".to_string()];
    allowed.extend(read_stream(subjects::EVENTS_STREAM));
    allowed
}

/// What every role may receive: every group's heartbeats, goodbyes and
/// events, network-wide presence, and replies to its own requests.
fn common_subscriptions() -> Vec<String> {
    vec![
        subjects::ALL_HEARTBEATS.to_string(),
        subjects::ALL_LEAVES.to_string(),
        subjects::EVENTS_STREAM_SUBJECTS.to_string(),
        subjects::PRESENCE_ALL.to_string(),
        "_INBOX.>".to_string(),
    ]
}

/// The JetStream reads of the gateway and observers: account info, and
/// every stream — the events and each group's lease and project buckets —
/// read only (`*` stands for the stream's name; `$KV.`/`$O.` publishes,
/// the writes, stay refused).
fn read_everything() -> Vec<String> {
    let mut allowed = vec!["$JS.API.INFO".to_string()];
    allowed.extend(read_stream("*"));
    allowed
}

/// The permissions of `role`.
pub fn permissions(role: &Role) -> Permissions {
    match role {
        Role::Device(group) => device(group),
        Role::Gateway => {
            let mut publish = vec![
                "understudy.*.control.*".to_string(),
                "understudy.*.trigger".to_string(),
                "understudy.*.roster".to_string(),
                subjects::ALL_SETTINGS.to_string(),
                subjects::PRESENCE_ALL.to_string(),
            ];
            publish.extend(read_everything());
            Permissions {
                publish,
                subscribe: common_subscriptions(),
                allow_responses: false,
            }
        }
        Role::Observer => {
            let mut publish = vec!["understudy.*.roster".to_string()];
            publish.extend(read_everything());
            Permissions {
                publish,
                subscribe: common_subscriptions(),
                allow_responses: false,
            }
        }
    }
}

fn device(group: &GroupName) -> Permissions {
    let lease = format!("KV_{}", subjects::lease_bucket(group));
    let settings = format!("KV_{}", subjects::settings_bucket(group));
    let head = format!("KV_{}", subjects::project_bucket(group));
    let content = format!("OBJ_{}", subjects::project_bucket(group));
    let ledger = subjects::ledger_stream(group);
    let mut publish = vec![
        format!("understudy.{group}.>"),
        subjects::PRESENCE_ALL.to_string(),
        format!("$KV.{}.>", subjects::lease_bucket(group)),
        format!("$KV.{}.>", subjects::settings_bucket(group)),
        format!("$KV.{}.>", subjects::project_bucket(group)),
        format!("$O.{}.>", subjects::project_bucket(group)),
        // Pruning old revisions purges their chunks.
        format!("$JS.API.STREAM.PURGE.{content}"),
        format!("$JS.API.STREAM.CREATE.{}", subjects::EVENTS_STREAM),
        // The ledger's retention is set again when a device finds it differs.
        format!("$JS.API.STREAM.UPDATE.{ledger}"),
    ];
    publish.extend(common_reads());
    for stream in [&lease, &settings, &head, &content, &ledger] {
        publish.extend(own_stream(stream));
    }
    let mut subscribe = common_subscriptions();
    subscribe.push(format!("understudy.{group}.>"));
    Permissions {
        publish,
        subscribe,
        allow_responses: true,
    }
}

/// How a user's password appears in the configuration (`Debug` never
/// shows a literal one).
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// Read by nats-server from this environment variable when it starts
    /// (`password: $VAR`): the configuration holds no secret.
    Env(String),
    /// Written into the configuration (keep the file private, mode 0600).
    Literal(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Env(var) => f.debug_tuple("Env").field(var).finish(),
            Password::Literal(_) => f.write_str("Literal(<hidden>)"),
        }
    }
}

/// One user of the [`ACCOUNT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name a process logs in with (`--nats-user`).
    pub name: String,
    /// Its password.
    pub password: Password,
    /// What it may do.
    pub role: Role,
}

impl User {
    /// The conventional user of `role`: `device-<group>`, `gateway` or
    /// `observer`, with the password from the environment variable
    /// `UNDERSTUDY_NATS_PASSWORD_<NAME>` (upper case, `-` as `_`).
    pub fn conventional(role: Role) -> User {
        let name = match &role {
            Role::Device(group) => format!("device-{group}"),
            Role::Gateway => "gateway".to_string(),
            Role::Observer => "observer".to_string(),
        };
        let var = format!(
            "UNDERSTUDY_NATS_PASSWORD_{}",
            name.to_uppercase().replace('-', "_")
        );
        User {
            name,
            password: Password::Env(var),
            role,
        }
    }
}

/// Quotes `s` as a nats-server configuration string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A list of subjects, one a line, indented to sit inside a user's
/// permissions.
fn list(subjects: &[String]) -> String {
    let mut out = String::from("[\n");
    for s in subjects {
        let _ = writeln!(out, "              {}", quoted(s));
    }
    out.push_str("            ]");
    out
}

/// The nats-server `accounts { … }` block for `users`: one account with
/// JetStream enabled, each user with its role's permissions. Include it
/// from a server configuration (`include accounts.conf`).
pub fn accounts_config(users: &[User]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# understudy's NATS users and what each may do (`understudy nats-config`;\n\
         # docs/security.md explains the roles)."
    );
    let _ = writeln!(
        out,
        "accounts {{\n  {ACCOUNT} {{\n    jetstream: enabled\n    users: ["
    );
    for user in users {
        let p = permissions(&user.role);
        let password = match &user.password {
            Password::Env(var) => format!("${var}"),
            Password::Literal(s) => quoted(s),
        };
        let _ = writeln!(
            out,
            "      {{\n        user: {}\n        password: {password}\n        permissions: {{\n          \
             publish: {{\n            allow: {}\n          }}\n          \
             subscribe: {{\n            allow: {}\n          }}",
            quoted(&user.name),
            list(&p.publish),
            list(&p.subscribe),
        );
        if p.allow_responses {
            let _ = writeln!(out, "          allow_responses: true");
        }
        let _ = writeln!(out, "        }}\n      }}");
    }
    let _ = writeln!(out, "    ]\n  }}\n}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupName {
        name.parse().expect("group")
    }

    #[test]
    fn a_device_publishes_only_in_its_own_group() {
        let stage = permissions(&Role::Device(group("stage")));
        for own in [
            "understudy.stage.heartbeat.dev-1",
            "understudy.stage.leave.dev-1",
            "understudy.stage.events.election",
            "understudy.stage.local.dev-1.election",
            "understudy.presence.00000000000000a1",
            "$KV.understudy-lease-stage.lease",
            "$KV.understudy-settings-stage.hold",
            "$KV.understudy-settings-stage.device.dev-1",
            "$JS.API.STREAM.CREATE.KV_understudy-settings-stage",
            "understudy.stage.settings",
            "$KV.understudy-project-stage.head",
            "$O.understudy-project-stage.C.abc",
            "$JS.API.STREAM.INFO.KV_understudy-lease-stage",
            "$JS.API.CONSUMER.CREATE.KV_understudy-lease-stage.x.$KV.understudy-lease-stage.lease",
        ] {
            assert!(stage.may_publish(own), "{own}");
        }
        for other in [
            "understudy.foyer.heartbeat.dev-1",
            "understudy.foyer.trigger",
            "understudy.foyer.control.dev-1",
            "$KV.understudy-lease-foyer.lease",
            "$KV.understudy-settings-foyer.hold",
            "$KV.understudy-settings-foyer.device.dev-1",
            "understudy.foyer.settings",
            "$KV.understudy-project-foyer.head",
            "$O.understudy-project-foyer.C.abc",
            "$JS.API.STREAM.INFO.KV_understudy-lease-foyer",
            "$JS.API.STREAM.DELETE.KV_understudy-lease-stage",
            "$JS.API.STREAM.PURGE.KV_understudy-lease-stage",
            "$JS.API.STREAM.UPDATE.UNDERSTUDY_EVENTS",
        ] {
            assert!(!stage.may_publish(other), "{other}");
        }
        assert!(stage.may_subscribe("understudy.foyer.heartbeat.dev-1"));
        assert!(!stage.may_subscribe("understudy.foyer.control.dev-1"));
    }

    #[test]
    fn an_observer_changes_nothing() {
        let observer = permissions(&Role::Observer);
        for write in [
            "understudy.stage.trigger",
            "understudy.stage.settings",
            "understudy.stage.control.dev-1",
            "understudy.stage.heartbeat.dev-1",
            "understudy.stage.events.election",
            "understudy.presence.00000000000000a1",
            "$KV.understudy-lease-stage.lease",
            "$KV.understudy-project-stage.head",
            "$O.understudy-project-stage.C.abc",
            "$JS.API.STREAM.CREATE.KV_understudy-lease-stage",
            "$JS.API.STREAM.PURGE.OBJ_understudy-project-stage",
            "$JS.API.STREAM.DELETE.UNDERSTUDY_EVENTS",
        ] {
            assert!(!observer.may_publish(write), "{write}");
        }
        assert!(observer.may_publish("understudy.stage.roster"));
        assert!(observer.may_publish("$JS.API.CONSUMER.CREATE.UNDERSTUDY_EVENTS.c.f"));
        assert!(observer.may_subscribe("understudy.stage.events.election"));
        assert!(!observer.allow_responses);
    }

    #[test]
    fn the_gateway_controls_but_writes_no_bucket() {
        let gateway = permissions(&Role::Gateway);
        assert!(gateway.may_publish("understudy.stage.control.dev-1"));
        assert!(gateway.may_publish("understudy.stage.trigger"));
        assert!(gateway.may_publish("understudy.stage.settings"));
        assert!(!gateway.may_publish("$KV.understudy-settings-stage.hold"));
        assert!(!gateway.may_publish("$KV.understudy-settings-stage.device.dev-1"));
        assert!(!gateway.may_publish("understudy.stage.heartbeat.dev-1"));
        assert!(!gateway.may_publish("$KV.understudy-lease-stage.lease"));
        assert!(!gateway.may_publish("$JS.API.STREAM.CREATE.KV_understudy-lease-stage"));
    }

    #[test]
    fn the_block_names_each_user_with_its_password_source() {
        let users = [
            User::conventional(Role::Device(group("stage"))),
            User {
                name: "observer".into(),
                password: Password::Literal("p\"w".into()),
                role: Role::Observer,
            },
        ];
        let text = accounts_config(&users);
        assert!(text.contains("user: \"device-stage\""), "{text}");
        assert!(
            text.contains("password: $UNDERSTUDY_NATS_PASSWORD_DEVICE_STAGE"),
            "{text}"
        );
        assert!(text.contains("password: \"p\\\"w\""), "{text}");
        assert_eq!(text.matches("allow_responses: true").count(), 1);
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert!(
            !format!("{:?}", users[1]).contains("p\"w"),
            "Debug hides it"
        );
    }
}
