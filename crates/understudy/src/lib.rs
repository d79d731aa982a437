//! The `understudy` command line as a library, so the `understudy` binary and
//! the one-service binaries (`understudy-election`, `understudy-heartbeat`,
//! `understudy-discovery`) share it. Every command talks to the group only
//! through NATS (`--nats`, env `UNDERSTUDY_NATS`).

mod bench;
mod bench_project;
mod bench_scale;
mod container;
mod ctl;
mod hold;
mod lab;
mod lab_prometheus;
mod ledger;
mod nic;
mod node;
mod project;
mod settings;
mod stored;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Keeps a project group's server running: elect by score, fail over fast.
#[derive(Debug, Parser)]
#[command(name = "understudy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where NATS is, for every command.
#[derive(Debug, Clone, Args)]
struct Bus {
    /// NATS server(s), comma-separated.
    #[arg(
        long,
        env = "UNDERSTUDY_NATS",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats: String,
    #[command(flatten)]
    auth: understudy_bus::NatsAuthArgs,
}

impl Bus {
    /// The servers with the credentials given.
    fn settings(&self) -> understudy_bus::NatsSettings {
        self.auth.clone().with_servers(self.nats.clone())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one device: discovery, heartbeat, election and project-sync in one process.
    Node(Box<node::NodeArgs>),
    /// Show a group's devices, server, term and counts.
    Status {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Print the stable JSON document instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
    },
    /// Read or set a device's score (setting one triggers an election).
    Score {
        #[command(subcommand)]
        action: ctl::ScoreCmd,
    },
    /// Elections: trigger one.
    Election {
        #[command(subcommand)]
        action: ctl::ElectionCmd,
    },
    /// The group's show hold: no preemption while the show runs.
    Hold {
        #[command(subcommand)]
        action: hold::HoldCmd,
    },
    /// List the operator settings a group keeps (they survive restarts):
    /// the show hold and every device's stored score and online/offline,
    /// with who set them and when.
    Settings {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Print the stable JSON document instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
    },
    /// The group's election ledger: every election with its cause, the
    /// candidates, the rule that decided and the timings (kept 30 days).
    Ledger {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Only entries since then: an RFC 3339 time or how long ago (30m,
        /// 2h, 1d) [default: the latest entries].
        #[arg(long)]
        since: Option<String>,
        /// How many entries at most (1–1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the entries as a JSON array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
    },
    /// Why the current server serves, in one paragraph (from the ledger).
    Why {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Print the explanation and the ledger entry as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
    },
    /// Take a device online.
    Online(ctl::DeviceArgs),
    /// Take a device offline.
    Offline(ctl::DeviceArgs),
    /// Follow a group's election events (replays the last ones first).
    Events {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// How many past events to replay before following live ones.
        #[arg(long, default_value_t = 20)]
        last: u64,
        /// Print each event as its JSON message.
        #[arg(long)]
        json: bool,
        /// Stop after this many events (default: follow forever).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        bus: Bus,
    },
    /// The group's project file: put, get, watch, status.
    Project {
        #[command(subcommand)]
        action: Box<project::ProjectCmd>,
    },
    /// Run the JSON control gateway: HTTP API, event streams, dashboard, TCP.
    Gateway(Box<understudy_control_gateway::cli::GatewayArgs>),
    /// Start a local lab: a nats-server and N devices, with elections live.
    Lab(lab::LabArgs),
    /// Print a nats-server `accounts` block with least-privilege users: one
    /// device user per group, the gateway and a read-only observer
    /// (passwords read by nats-server from `UNDERSTUDY_NATS_PASSWORD_<USER>`).
    NatsConfig {
        /// A project group to make a device user for (repeat for several).
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
    },
    /// Make the compose lab's secrets once (CA and certificate, a NATS user
    /// per role with a random password, the NATS nodes' configurations, the
    /// project token, the gateway's tokens) in a folder; a folder already
    /// made is left as it is.
    SecureInit(container::SecureInitArgs),
    /// Health check of a device or the gateway (containers): its metrics
    /// endpoint answers and it is connected to NATS; exits non-zero otherwise.
    Health(container::HealthArgs),
    /// Measure failover, hand-over and cold-start times (prints figures).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
}

/// Runs the command line given in `args` (the first item is the program name).
pub fn main_with<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Services log what they do; one-shot commands only warnings.
    let default_level = match cli.command {
        Command::Node(_) | Command::Gateway(_) | Command::Lab(_) | Command::Bench { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Colours only for a person at a terminal: log files (the lab's, the
    // tests', a service manager's) stay plain text; NO_COLOR is honoured.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let traces = {
        // The OTLP exporter's channel lives on the runtime.
        let _rt = runtime.enter();
        match understudy_telemetry::trace::init(filter, ansi, &service_name(&cli.command)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => node::run(*args).await,
            Command::Status { group, json, bus } => {
                ctl::status(&bus.settings(), &group, json).await
            }
            Command::Score { action } => ctl::score(action).await,
            Command::Election { action } => ctl::election(action).await,
            Command::Hold { action } => hold::run(action).await,
            Command::Settings { group, json, bus } => {
                stored::run(&bus.settings(), &group, json).await
            }
            Command::Ledger {
                group,
                since,
                limit,
                json,
                bus,
            } => ledger::run_ledger(&bus.settings(), &group, since.as_deref(), limit, json).await,
            Command::Why { group, json, bus } => {
                ledger::run_why(&bus.settings(), &group, json).await
            }
            Command::Online(d) => ctl::set_online(d, true).await,
            Command::Offline(d) => ctl::set_online(d, false).await,
            Command::Events {
                group,
                last,
                json,
                count,
                bus,
            } => ctl::events(&bus.settings(), &group, last, json, count).await,
            Command::Project { action } => project::run(*action).await,
            Command::Gateway(args) => understudy_control_gateway::cli::run(*args)
                .await
                .map_err(anyhow::Error::from),
            Command::Lab(args) => lab::run(args).await,
            Command::Bench { what } => bench::run(what).await,
            Command::NatsConfig { groups } => nats_config(&groups),
            Command::SecureInit(args) => container::secure_init(&args),
            Command::Health(args) => container::health(&args).await,
        }
    });
    // Do not wait on stuck background work (a DNS lookup or connect to a bus
    // that is gone) once the command is done.
    if let Some(t) = traces {
        t.shutdown();
    }
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the accounts block for `groups` (`understudy nats-config`).
fn nats_config(groups: &[String]) -> anyhow::Result<()> {
    print!("{}", nats_accounts(groups)?);
    Ok(())
}

/// The accounts block `understudy nats-config --group …` prints: a device
/// user per group, then `gateway` and `observer`, each with its password
/// from the environment of nats-server.
pub fn nats_accounts(groups: &[String]) -> anyhow::Result<String> {
    use understudy_bus::accounts::{Role, User, accounts_config};
    let mut users = Vec::new();
    for g in groups {
        let group = g.parse().map_err(|e| anyhow::anyhow!("--group {g}: {e}"))?;
        users.push(User::conventional(Role::Device(group)));
    }
    users.push(User::conventional(Role::Gateway));
    users.push(User::conventional(Role::Observer));
    Ok(accounts_config(&users))
}

/// The name spans are exported under unless `OTEL_SERVICE_NAME` is set.
fn service_name(command: &Command) -> String {
    match command {
        Command::Node(args) => match args.services_alone() {
            Some(one) => format!("understudy-{one}"),
            None => "understudy-node".into(),
        },
        Command::Gateway(_) => "understudy-gateway".into(),
        Command::Lab(_) => "understudy-lab".into(),
        Command::Bench { .. } => "understudy-bench".into(),
        _ => "understudy-cli".into(),
    }
}

/// Runs one of a device's services alone, as its own process: the same as
/// `understudy node --services <service> …` with the rest of the arguments.
pub fn service_main(service: &str) -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let rest = args.split_off(1.min(args.len()));
    let mut full: Vec<std::ffi::OsString> = args;
    full.extend(["node".into(), "--services".into(), service.into()]);
    full.extend(rest);
    main_with(full)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        // Flattened argument groups (NATS, project TLS) share no names.
        super::Cli::command().debug_assert();
    }
}
