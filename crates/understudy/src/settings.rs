//! Settings: flags win, then environment variables, then the TOML file, then
//! the documented defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use understudy_bus::{NatsAuthArgs, NatsSettings, Refused};
use understudy_project_sync::security::ProjectSecurity;

/// Parses a duration as people write it: `100ms`, `2s`, `1.5s`, `1m`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => {
            return Err(format!(
                "duration {s:?} needs a unit: ms, s or m (e.g. 100ms, 2s)"
            ));
        }
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("duration {s:?} must be a positive number"));
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?}: use ms, s or m"
            ));
        }
    };
    if secs > 86_400.0 {
        return Err(format!("duration {s:?} is longer than a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The `[node]` table of the TOML settings file; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNode {
    pub group: Option<String>,
    pub device_id: Option<String>,
    pub mac: Option<String>,
    pub score: Option<i64>,
    pub nats: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub client_heartbeat_interval: Option<String>,
    pub grace_period: Option<String>,
    pub preempt_delay: Option<String>,
    pub lease: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub offline: Option<bool>,
    pub replicas: Option<usize>,
    pub ledger_retention_days: Option<u64>,
    pub services: Option<String>,
    pub project_listen: Option<String>,
    pub project_advertise: Option<String>,
    pub max_project_size: Option<u64>,
    pub metrics_listen: Option<String>,
    pub nats_token: Option<String>,
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    pub nats_password_file: Option<PathBuf>,
    pub nats_nkey_file: Option<PathBuf>,
    pub nats_creds_file: Option<PathBuf>,
    pub nats_tls_ca: Option<PathBuf>,
    pub nats_tls_cert: Option<PathBuf>,
    pub nats_tls_key: Option<PathBuf>,
    pub nats_tls_required: Option<bool>,
    pub project_tls_cert: Option<PathBuf>,
    pub project_tls_key: Option<PathBuf>,
    pub project_tls_ca: Option<PathBuf>,
    pub project_tls_server_name: Option<String>,
    pub project_token: Option<String>,
    pub project_token_file: Option<PathBuf>,
}

impl FileNode {
    /// The NATS credentials and TLS files the settings file gives.
    pub fn nats_auth(&self) -> NatsAuthArgs {
        NatsAuthArgs {
            token: self.nats_token.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            password_file: self.nats_password_file.clone(),
            nkey_file: self.nats_nkey_file.clone(),
            creds_file: self.nats_creds_file.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            tls_required: self.nats_tls_required.unwrap_or(false),
        }
    }

    /// The project service's TLS and token settings the file gives.
    pub fn project_auth(&self) -> ProjectAuthArgs {
        ProjectAuthArgs {
            tls_cert: self.project_tls_cert.clone(),
            tls_key: self.project_tls_key.clone(),
            tls_ca: self.project_tls_ca.clone(),
            tls_server_name: self.project_tls_server_name.clone(),
            token: self.project_token.clone(),
            token_file: self.project_token_file.clone(),
        }
    }
}

/// The project service's TLS and group-token flags, shared by `node`, the
/// `project` commands and `bench project` (docs/project-sync.md). The token
/// is best given in a file or a variable, never on the command line where
/// other users can read it.
#[derive(Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ProjectAuthArgs {
    /// Certificate (PEM) of this device's project service, also its client
    /// certificate when it dials another device (mutual TLS).
    #[arg(
        id = "project_tls_cert",
        long = "project-tls-cert",
        env = "UNDERSTUDY_PROJECT_TLS_CERT"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(
        id = "project_tls_key",
        long = "project-tls-key",
        env = "UNDERSTUDY_PROJECT_TLS_KEY"
    )]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): trusted for the project servers' certificates
    /// and, on a server, for callers' client certificates. Turns TLS on.
    #[arg(
        id = "project_tls_ca",
        long = "project-tls-ca",
        env = "UNDERSTUDY_PROJECT_TLS_CA"
    )]
    pub tls_ca: Option<PathBuf>,
    /// The DNS name to check project servers' certificates against,
    /// instead of the host of the address the lease advertises.
    #[arg(
        id = "project_tls_server_name",
        long = "project-tls-server-name",
        env = "UNDERSTUDY_PROJECT_TLS_SERVER_NAME"
    )]
    pub tls_server_name: Option<String>,
    /// The group token (prefer UNDERSTUDY_PROJECT_TOKEN or a file).
    #[arg(
        id = "project_token",
        long = "project-token",
        env = "UNDERSTUDY_PROJECT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file holding the group token.
    #[arg(
        id = "project_token_file",
        long = "project-token-file",
        env = "UNDERSTUDY_PROJECT_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for ProjectAuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.clone().settings(), f)
    }
}

impl ProjectAuthArgs {
    /// Fills what was not given here from `other` (a settings file). The
    /// token and the token file are one setting: either given here wins.
    pub fn or(self, other: ProjectAuthArgs) -> ProjectAuthArgs {
        let (token, token_file) = if self.token.is_some() || self.token_file.is_some() {
            (self.token, self.token_file)
        } else {
            (other.token, other.token_file)
        };
        ProjectAuthArgs {
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            tls_ca: self.tls_ca.or(other.tls_ca),
            tls_server_name: self.tls_server_name.or(other.tls_server_name),
            token,
            token_file,
        }
    }

    /// The settings, to be loaded by the side that uses them.
    pub fn settings(self) -> ProjectSecurity {
        ProjectSecurity {
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_ca: self.tls_ca,
            tls_server_name: self.tls_server_name,
            token: self.token,
            token_file: self.token_file,
        }
    }

    /// The `understudy node` flags that give a device these settings (for
    /// the lab and the bench, which start devices): the files as they are;
    /// a token given by value is written to `<dir>/project-token`
    /// (owner-only) and passed as a file, so it shows in no process list.
    pub fn node_args(&self, dir: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut path = |flag: &str, v: &Option<PathBuf>| {
            if let Some(v) = v {
                out.push(flag.to_string());
                out.push(v.display().to_string());
            }
        };
        path("--project-tls-cert", &self.tls_cert);
        path("--project-tls-key", &self.tls_key);
        path("--project-tls-ca", &self.tls_ca);
        path("--project-token-file", &self.token_file);
        if let Some(name) = &self.tls_server_name {
            out.extend(["--project-tls-server-name".to_string(), name.clone()]);
        }
        if let Some(token) = &self.token {
            let file = dir.join("project-token");
            write_private(&file, token)?;
            out.extend([
                "--project-token-file".to_string(),
                file.display().to_string(),
            ]);
        }
        Ok(out)
    }

    /// The client side, loaded (a clear error for a bad file or combination).
    pub fn client(&self) -> Result<understudy_project_sync::security::ClientSecurity> {
        Ok(self.clone().settings().client()?)
    }
}

/// Writes `text` to a file only its owner can read.
pub fn write_private(file: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))
}

/// The whole settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub node: FileNode,
}

/// Reads the TOML settings file; a typo in a key is an error that names it.
pub fn read_file(path: &Path) -> Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("settings file {} is invalid", path.display()))
}

/// Connects a long-running command to NATS with `nats`'s credentials and
/// TLS, retrying forever in the background if it is not up yet; the
/// [`Refused`] resolves if the server refuses it before it ever connected.
pub async fn connect(nats: &NatsSettings, name: &str) -> Result<(async_nats::Client, Refused)> {
    Ok(nats.connect_service(name, |o| o).await?)
}

/// Connects for a one-shot command: fails fast when NATS is not there.
pub async fn connect_once(nats: &NatsSettings, name: &str) -> Result<async_nats::Client> {
    let servers = nats.addresses()?;
    nats.options(name)
        .await?
        .connection_timeout(Duration::from_secs(3))
        .connect(servers)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", nats.servers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<File>("[node]\nscore = 5\ngrace = \"2s\"\n").unwrap_err();
        assert!(err.to_string().contains("grace"), "{err}");
        let ok: File = toml::from_str("[node]\nscore = 5\n").unwrap();
        assert_eq!(ok.node.score, Some(5));
    }
}
