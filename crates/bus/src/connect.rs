//! Connecting to NATS: the one place where the servers, the credentials and
//! TLS of every process (devices, the gateway, the CLI, the lab, the bench)
//! are read and applied.
//!
//! Credentials come from flags, `UNDERSTUDY_NATS_*` variables or the settings
//! file — never from the URL: async-nats silently ignores `user:pass@` in a
//! server address, so such an address is refused with a message saying
//! where to put them instead. Secrets are never logged ([`NatsSettings`]'s
//! `Debug` hides them).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::{ConnectOptions, ServerAddr};
use tokio::sync::watch;

/// How to reach NATS and who to be there.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server addresses, comma-separated (`nats://host:4222`, `tls://…`).
    pub servers: String,
    /// A token (`authorization { token }` on the server).
    pub token: Option<String>,
    /// A user name, with [`password`](Self::password).
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// A file holding the user's password (its first line), instead of
    /// [`password`](Self::password): for containers and service managers
    /// that hand secrets over as files.
    pub password_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU…`).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT and NKey seed, as `nsc` writes them).
    pub creds_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the server's certificate; given,
    /// the system's store is not used.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS, with [`tls_key`](Self::tls_key).
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to a server without TLS (implied by `tls://` and by
    /// any TLS file).
    pub tls_required: bool,
}

impl fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("NatsSettings")
            .field("servers", &self.servers)
            .field("token", &hidden(&self.token))
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("password_file", &self.password_file)
            .field("nkey_file", &self.nkey_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

/// The NATS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// No server address.
    #[error("no NATS address given (--nats or UNDERSTUDY_NATS)")]
    NoServer,
    /// An address that does not parse.
    #[error("NATS address {address:?} is invalid: {detail}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// Why.
        detail: String,
    },
    /// Credentials written in the URL, which async-nats would ignore.
    #[error(
        "NATS address {address:?} carries credentials, which are not read from an address: \
         give them with --nats-user/--nats-password, --nats-token, --nats-nkey-file or \
         --nats-creds-file (or their UNDERSTUDY_NATS_* variables)"
    )]
    CredentialsInAddress {
        /// The address with its credentials removed.
        address: String,
    },
    /// A combination that cannot work.
    #[error("NATS settings: {0}")]
    Conflict(String),
    /// A file that cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl NatsSettings {
    /// Settings for `servers` with no credentials and no TLS.
    pub fn plain(servers: impl Into<String>) -> Self {
        Self {
            servers: servers.into(),
            ..Self::default()
        }
    }

    /// The server addresses, refusing credentials written in them.
    pub fn addresses(&self) -> Result<Vec<ServerAddr>, SettingsError> {
        let mut out = Vec::new();
        for part in self
            .servers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let addr: ServerAddr =
                part.parse()
                    .map_err(|e: std::io::Error| SettingsError::BadAddress {
                        address: part.to_owned(),
                        detail: e.to_string(),
                    })?;
            if addr.has_user_pass() || part.contains('@') {
                let shown = part
                    .split_once('@')
                    .map(|(scheme_user, host)| {
                        let scheme = scheme_user.split_once("://").map_or("", |(s, _)| s);
                        if scheme.is_empty() {
                            host.to_owned()
                        } else {
                            format!("{scheme}://{host}")
                        }
                    })
                    .unwrap_or_else(|| part.to_owned());
                return Err(SettingsError::CredentialsInAddress { address: shown });
            }
            out.push(addr);
        }
        if out.is_empty() {
            return Err(SettingsError::NoServer);
        }
        Ok(out)
    }

    /// Whether TLS is asked for (a `tls://` address, a TLS file, or the flag).
    pub fn wants_tls(&self) -> bool {
        self.tls_required
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.servers.contains("tls://")
    }

    /// `ConnectOptions` named `name` with these credentials and TLS applied.
    pub async fn options(&self, name: &str) -> Result<ConnectOptions, SettingsError> {
        let given = [
            self.token.is_some(),
            self.user.is_some() || self.password.is_some() || self.password_file.is_some(),
            self.nkey_file.is_some(),
            self.creds_file.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given > 1 {
            return Err(SettingsError::Conflict(
                "give one way to authenticate: a token, a user and password, an NKey seed file or a .creds file".into(),
            ));
        }
        let mut o = ConnectOptions::new().name(name);
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(SettingsError::Conflict(
                    "give the NATS password once: --nats-password or --nats-password-file".into(),
                ));
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => Some(read_password(path)?),
            (None, None) => None,
        };
        match (&self.user, &password) {
            (Some(u), Some(p)) => o = o.user_and_password(u.clone(), p.clone()),
            (Some(_), None) | (None, Some(_)) => {
                return Err(SettingsError::Conflict(
                    "a NATS user needs a password and a password a user (--nats-user, --nats-password)".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                what: "the NKey seed file",
                path: path.clone(),
                source,
            })?;
            o = o.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.creds_file {
            o = o
                .credentials_file(path)
                .await
                .map_err(|source| SettingsError::Read {
                    what: "the .creds file",
                    path: path.clone(),
                    source,
                })?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => o = o.add_client_certificate(c.clone(), k.clone()),
            (None, None) => {}
            _ => {
                return Err(SettingsError::Conflict(
                    "a client certificate needs its key and a key its certificate (--nats-tls-cert, --nats-tls-key)".into(),
                ));
            }
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                return Err(SettingsError::Read {
                    what: "the CA file",
                    path: ca.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            o = o.add_root_certificates(ca.clone());
        }
        if self.wants_tls() {
            o = o.require_tls(true);
        }
        Ok(o)
    }

    /// `options` for a long-running process: it starts even if NATS is not
    /// up yet, and reconnects forever.
    pub async fn service_options(&self, name: &str) -> Result<ConnectOptions, SettingsError> {
        Ok(self.reconnecting(name).await?.retry_on_initial_connect())
    }

    /// `options` that reconnect forever once connected.
    async fn reconnecting(&self, name: &str) -> Result<ConnectOptions, SettingsError> {
        Ok(self
            .options(name)
            .await?
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(1))
            .connection_timeout(Duration::from_secs(2)))
    }
}

/// The password in `path`: its first line, surrounding white space removed;
/// an empty one is an error.
fn read_password(path: &std::path::Path) -> Result<String, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        what: "the NATS password file",
        path: path.to_path_buf(),
        source,
    })?;
    let password = text.lines().next().unwrap_or("").trim();
    if password.is_empty() {
        return Err(SettingsError::Conflict(format!(
            "the NATS password file {} is empty",
            path.display()
        )));
    }
    Ok(password.to_owned())
}

/// Why NATS refused this process, read from a connection event; `None`
/// for any other event (a server that is down is not a refusal: it is
/// waited for).
pub fn refusal(event: &async_nats::Event) -> Option<&'static str> {
    use async_nats::{ClientError, Event, ServerError};
    match event {
        Event::ServerError(ServerError::AuthorizationViolation) => Some(AUTHORIZATION),
        Event::ClientError(ClientError::Other(kind)) => match kind.as_str() {
            "authorization violation" => Some(AUTHORIZATION),
            "failed signing nonce" => Some(
                "authentication failed: the NKey seed or .creds file could not answer the server",
            ),
            "TLS error" => Some(
                "TLS error: the server's certificate is not trusted by the CA given, the client certificate was refused, or the server does not speak TLS",
            ),
            _ => None,
        },
        _ => None,
    }
}

const AUTHORIZATION: &str =
    "authorization violation: the server refused these credentials (or asked for some)";

/// Resolves when NATS refused this process before it ever connected
/// (wrong or missing credentials, untrusted TLS): a fault no retry mends.
#[derive(Debug, Clone)]
pub struct Refused(watch::Receiver<Option<&'static str>>);

impl Refused {
    /// Waits for a refusal and says why; waits forever once connected.
    pub async fn wait(&mut self) -> &'static str {
        loop {
            if let Some(why) = *self.0.borrow_and_update() {
                return why;
            }
            if self.0.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl NatsSettings {
    /// Connects a long-running process (see [`service_options`](Self::service_options)),
    /// with `more` applied to the options, counting its connection in the
    /// metrics.
    ///
    /// One attempt first: a server that refuses this process (credentials,
    /// an untrusted certificate) is an error at once, naming the cause. A
    /// server that is not there yet is waited for: the client starts anyway
    /// and keeps trying, and [`Refused`] resolves if, once it answers, it
    /// refuses the credentials.
    pub async fn connect_service(
        &self,
        name: &str,
        more: impl Fn(ConnectOptions) -> ConnectOptions,
    ) -> Result<(async_nats::Client, Refused), ConnectFailed> {
        let servers = self.addresses()?;
        let (tx, rx) = watch::channel(None);
        let connected = Arc::new(AtomicBool::new(false));
        let once = more(self.reconnecting(name).await?)
            .event_callback(watch_events(tx.clone(), Arc::clone(&connected)));
        match once.connect(servers.clone()).await {
            Ok(client) => return Ok((client, Refused(rx))),
            Err(e) => {
                if let Some(why) = refused_at_connect(&e) {
                    return Err(ConnectFailed::Refused {
                        servers: self.servers.clone(),
                        why,
                    });
                }
                tracing::debug!(servers = %self.servers, "NATS not reachable yet ({e}); starting anyway");
            }
        }
        let client = more(self.service_options(name).await?)
            .event_callback(watch_events(tx, connected))
            .connect(servers)
            .await
            .map_err(|e| ConnectFailed::Connect {
                servers: self.servers.clone(),
                detail: e.to_string(),
            })?;
        Ok((client, Refused(rx)))
    }
}

/// The event callback of a service's client: metrics, and a refusal before
/// the first connection.
fn watch_events(
    tx: watch::Sender<Option<&'static str>>,
    connected: Arc<AtomicBool>,
) -> impl Fn(async_nats::Event) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |event| {
        let (tx, connected) = (tx.clone(), Arc::clone(&connected));
        Box::pin(async move {
            understudy_telemetry::metrics().nats_event(&event);
            if matches!(event, async_nats::Event::Connected) {
                connected.store(true, Ordering::Relaxed);
            } else if !connected.load(Ordering::Relaxed)
                && let Some(why) = refusal(&event)
            {
                tx.send_replace(Some(why));
            }
        })
    }
}

/// Why a first connection attempt was refused, if it was a refusal rather
/// than a server not (yet) there. A TLS handshake failure comes back as an
/// I/O error; its message tells it apart.
fn refused_at_connect(e: &async_nats::ConnectError) -> Option<String> {
    use async_nats::ConnectErrorKind as K;
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    match e.kind() {
        K::AuthorizationViolation => Some(AUTHORIZATION.to_owned()),
        K::Authentication => Some(format!("authentication failed ({chain})")),
        K::Tls => Some(format!("TLS error ({chain})")),
        K::Io => {
            let lower = chain.to_lowercase();
            ["certificate", "handshake", "tls"]
                .iter()
                .any(|w| lower.contains(w))
                .then(|| format!("TLS error ({chain})"))
        }
        _ => None,
    }
}

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailed {
    /// The settings cannot be used.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The server refused this process.
    #[error("NATS at {servers} refused this process: {why}")]
    Refused {
        /// The servers.
        servers: String,
        /// Why (`authorization violation`, `TLS error`…).
        why: String,
    },
    /// The client refused to start.
    #[error("cannot connect to NATS at {servers}: {detail}")]
    Connect {
        /// The servers.
        servers: String,
        /// Why.
        detail: String,
    },
}

/// The NATS credential and TLS flags every command shares (each command
/// has its own `--nats`: the servers). Secrets are best given by variable
/// or file, not on the command line where other users can read them.
#[derive(Clone, Default, PartialEq, Eq, clap::Args)]
pub struct NatsAuthArgs {
    /// NATS token.
    #[arg(
        long = "nats-token",
        env = "UNDERSTUDY_NATS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// NATS user (with a password).
    #[arg(long = "nats-user", env = "UNDERSTUDY_NATS_USER", global = true)]
    pub user: Option<String>,
    /// NATS password.
    #[arg(
        long = "nats-password",
        env = "UNDERSTUDY_NATS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<String>,
    /// A file holding the NATS password (its first line).
    #[arg(
        long = "nats-password-file",
        env = "UNDERSTUDY_NATS_PASSWORD_FILE",
        global = true
    )]
    pub password_file: Option<PathBuf>,
    /// A file holding an NKey seed.
    #[arg(
        long = "nats-nkey-file",
        env = "UNDERSTUDY_NATS_NKEY_FILE",
        global = true
    )]
    pub nkey_file: Option<PathBuf>,
    /// A NATS `.creds` file.
    #[arg(
        long = "nats-creds-file",
        env = "UNDERSTUDY_NATS_CREDS_FILE",
        global = true
    )]
    pub creds_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the NATS servers.
    #[arg(long = "nats-tls-ca", env = "UNDERSTUDY_NATS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with NATS.
    #[arg(
        long = "nats-tls-cert",
        env = "UNDERSTUDY_NATS_TLS_CERT",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long = "nats-tls-key", env = "UNDERSTUDY_NATS_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Refuse NATS servers without TLS (implied by tls:// and the TLS files).
    #[arg(
        long = "nats-tls-required",
        env = "UNDERSTUDY_NATS_TLS_REQUIRED",
        global = true
    )]
    pub tls_required: bool,
}

impl fmt::Debug for NatsAuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.clone().with_servers(""), f)
    }
}

impl NatsAuthArgs {
    /// The settings for `servers` with these credentials.
    pub fn with_servers(self, servers: impl Into<String>) -> NatsSettings {
        NatsSettings {
            servers: servers.into(),
            token: self.token,
            user: self.user,
            password: self.password,
            password_file: self.password_file,
            nkey_file: self.nkey_file,
            creds_file: self.creds_file,
            tls_ca: self.tls_ca,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_required: self.tls_required,
        }
    }

    /// The `UNDERSTUDY_NATS_*` variables that hand these credentials and
    /// TLS settings to another understudy process (the lab's devices and
    /// gateway on a NATS of the user's), so that no secret goes on a
    /// command line.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let pairs = [
            ("UNDERSTUDY_NATS_TOKEN", self.token.clone()),
            ("UNDERSTUDY_NATS_USER", self.user.clone()),
            ("UNDERSTUDY_NATS_PASSWORD", self.password.clone()),
            ("UNDERSTUDY_NATS_PASSWORD_FILE", path(&self.password_file)),
            ("UNDERSTUDY_NATS_NKEY_FILE", path(&self.nkey_file)),
            ("UNDERSTUDY_NATS_CREDS_FILE", path(&self.creds_file)),
            ("UNDERSTUDY_NATS_TLS_CA", path(&self.tls_ca)),
            ("UNDERSTUDY_NATS_TLS_CERT", path(&self.tls_cert)),
            ("UNDERSTUDY_NATS_TLS_KEY", path(&self.tls_key)),
            (
                "UNDERSTUDY_NATS_TLS_REQUIRED",
                self.tls_required.then(|| "true".to_string()),
            ),
        ];
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect()
    }

    /// Fills what was not given here from `other` (a settings file).
    pub fn or(self, other: NatsAuthArgs) -> NatsAuthArgs {
        NatsAuthArgs {
            token: self.token.or(other.token),
            user: self.user.or(other.user),
            password: self.password.or(other.password),
            password_file: self.password_file.or(other.password_file),
            nkey_file: self.nkey_file.or(other.nkey_file),
            creds_file: self.creds_file.or(other.creds_file),
            tls_ca: self.tls_ca.or(other.tls_ca),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            tls_required: self.tls_required || other.tls_required,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_split_and_checked() {
        let s = NatsSettings::plain("nats://127.0.0.1:4222, tls://10.0.0.2:4222");
        assert_eq!(s.addresses().expect("valid").len(), 2);
        assert!(s.wants_tls());
        assert!(matches!(
            NatsSettings::plain(" , ").addresses(),
            Err(SettingsError::NoServer)
        ));
    }

    #[test]
    fn credentials_in_an_address_are_refused_without_echoing_them() {
        for url in [
            "nats://admin:s3cret@127.0.0.1:4222",
            "tls://token-abc@127.0.0.1:4222",
        ] {
            let err = NatsSettings::plain(url).addresses().expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, SettingsError::CredentialsInAddress { .. }));
            assert!(
                !text.contains("s3cret") && !text.contains("token-abc"),
                "{text}"
            );
            assert!(
                text.contains("127.0.0.1:4222") && text.contains("--nats-user"),
                "{text}"
            );
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = NatsSettings {
            token: Some("tok-123".into()),
            password: Some("pw-456".into()),
            user: Some("device".into()),
            ..NatsSettings::plain("nats://127.0.0.1:4222")
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("pw-456"),
            "{shown}"
        );
        assert!(shown.contains("device"));
    }

    #[tokio::test]
    async fn a_password_file_gives_the_password_once() {
        let dir = std::env::temp_dir().join(format!("understudy-pwfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").expect("write");
        let base = NatsSettings {
            user: Some("device-stage".into()),
            password_file: Some(file.clone()),
            ..NatsSettings::plain("nats://127.0.0.1:4222")
        };
        assert!(base.options("t").await.is_ok());
        assert_eq!(read_password(&file).expect("read"), "s3cret");
        let both = NatsSettings {
            password: Some("p".into()),
            ..base.clone()
        };
        assert!(matches!(
            both.options("t").await,
            Err(SettingsError::Conflict(_))
        ));
        std::fs::write(&file, "  \n").expect("write");
        let err = base.options("t").await.expect_err("empty file");
        assert!(err.to_string().contains("is empty"), "{err}");
        let gone = NatsSettings {
            password_file: Some(dir.join("missing")),
            ..base
        };
        assert!(matches!(
            gone.options("t").await,
            Err(SettingsError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn half_given_or_doubled_credentials_are_refused() {
        let base = NatsSettings::plain("nats://127.0.0.1:4222");
        let user_only = NatsSettings {
            user: Some("u".into()),
            ..base.clone()
        };
        assert!(matches!(
            user_only.options("t").await,
            Err(SettingsError::Conflict(_))
        ));
        let two = NatsSettings {
            token: Some("t".into()),
            user: Some("u".into()),
            password: Some("p".into()),
            ..base.clone()
        };
        assert!(matches!(
            two.options("t").await,
            Err(SettingsError::Conflict(_))
        ));
        let cert_only = NatsSettings {
            tls_cert: Some("c.pem".into()),
            ..base.clone()
        };
        assert!(matches!(
            cert_only.options("t").await,
            Err(SettingsError::Conflict(_))
        ));
        let missing = NatsSettings {
            nkey_file: Some("/nonexistent/seed.nk".into()),
            ..base
        };
        assert!(matches!(
            missing.options("t").await,
            Err(SettingsError::Read { .. })
        ));
    }
}
