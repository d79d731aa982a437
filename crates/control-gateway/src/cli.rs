//! `understudy gateway`: the command that runs the gateway until SIGTERM or
//! Ctrl-C.

use clap::Args;

use crate::{Config, DEFAULT_LISTEN, DEFAULT_TCP_LISTEN, GatewayError};

/// `understudy gateway` settings (flags win over environment variables).
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// NATS server(s), comma-separated.
    #[arg(long, env = "UNDERSTUDY_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// NATS credentials and TLS.
    #[command(flatten)]
    pub nats_auth: understudy_bus::NatsAuthArgs,
    /// Where the HTTP API, event streams and dashboard listen. A non-loopback
    /// address must be given here explicitly.
    #[arg(long, env = "UNDERSTUDY_GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Where the newline-delimited JSON TCP protocol listens.
    #[arg(long, env = "UNDERSTUDY_GATEWAY_TCP_LISTEN", default_value = DEFAULT_TCP_LISTEN)]
    pub tcp_listen: String,
    /// The admin token: reads and writes (`Authorization: Bearer <token>`;
    /// TCP `auth`). Without one every mutating call is refused. Prefer
    /// --api-token-file or the environment: other users can see a flag.
    #[arg(long, env = "UNDERSTUDY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// A file holding the admin token (its first line; surrounding white
    /// space ignored).
    #[arg(long, env = "UNDERSTUDY_API_TOKEN_FILE", conflicts_with = "api_token")]
    pub api_token_file: Option<std::path::PathBuf>,
    /// Read-only tokens, comma-separated: they read the status, devices,
    /// scores and events, and are refused (403) every change. Prefer
    /// --read-tokens-file or the environment: other users can see a flag.
    #[arg(
        long,
        env = "UNDERSTUDY_READ_TOKENS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub read_tokens: Vec<String>,
    /// A file of read-only tokens, one a line (blank lines and lines
    /// starting with `#` ignored).
    #[arg(
        long,
        env = "UNDERSTUDY_READ_TOKENS_FILE",
        conflicts_with = "read_tokens"
    )]
    pub read_tokens_file: Option<std::path::PathBuf>,
    /// A PEM certificate chain (the server's certificate first): the HTTP
    /// listener then speaks TLS (https://, wss://). Needs --tls-key.
    #[arg(
        long = "tls-cert",
        value_name = "PEM_FILE",
        env = "UNDERSTUDY_GATEWAY_TLS_CERT",
        requires = "http_tls_key"
    )]
    pub http_tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long = "tls-key",
        value_name = "PEM_FILE",
        env = "UNDERSTUDY_GATEWAY_TLS_KEY",
        requires = "http_tls_cert"
    )]
    pub http_tls_key: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9465
    /// (docs/telemetry.md) [default: off].
    #[arg(long, env = "UNDERSTUDY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl GatewayArgs {
    /// The gateway's settings; fails if the token file cannot be read.
    pub fn config(self) -> Result<Config, GatewayError> {
        let api_token = match &self.api_token_file {
            Some(path) => Some(read_token(path)?),
            None => self.api_token.filter(|t| !t.trim().is_empty()),
        };
        let read_tokens = match &self.read_tokens_file {
            Some(path) => read_tokens_file(path)?,
            None => self
                .read_tokens
                .iter()
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        check_distinct(api_token.as_deref(), &read_tokens)?;
        Ok(Config {
            nats: self.nats_auth.with_servers(self.nats),
            listen: self.listen,
            tcp_listen: self.tcp_listen,
            api_token,
            read_tokens,
            metrics_listen: self.metrics_listen,
            tls: match (self.http_tls_cert, self.http_tls_key) {
                (Some(cert), Some(key)) => Some(crate::TlsFiles { cert, key }),
                _ => None,
            },
        })
    }
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: GatewayArgs) -> Result<(), GatewayError> {
    crate::run(args.config()?, understudy_bus::terminate_or_interrupt()).await
}

/// The token in `path`: its first line, trimmed; an empty one is an error.
fn read_token(path: &std::path::Path) -> Result<String, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        GatewayError::Config(format!(
            "cannot read --api-token-file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(GatewayError::Config(format!(
            "--api-token-file {} holds no token",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// The tokens in `path`: one a line, trimmed; blank lines and `#` comments
/// skipped. A file with none is an error (a typo would open nothing, but it
/// would not do what was meant either).
fn read_tokens_file(path: &std::path::Path) -> Result<Vec<String>, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        GatewayError::Config(format!(
            "cannot read --read-tokens-file {}: {e}",
            path.display()
        ))
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(GatewayError::Config(format!(
            "--read-tokens-file {} holds no token",
            path.display()
        )));
    }
    Ok(tokens)
}

/// Refuses a read-only token that is also the admin token: which role it
/// gives would be a guess.
fn check_distinct(admin: Option<&str>, read: &[String]) -> Result<(), GatewayError> {
    if admin.is_some_and(|a| read.iter().any(|r| r == a)) {
        return Err(GatewayError::Config(
            "a read-only token is the same as the admin token: give them different values".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_gives_its_first_line_trimmed() {
        let dir = std::env::temp_dir().join(format!("understudy-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "  s3cret-token \nsecond line\n").expect("write");
        assert_eq!(read_token(&file).expect("read"), "s3cret-token");
        std::fs::write(&file, "\n").expect("write");
        let err = read_token(&file).expect_err("empty").to_string();
        assert!(err.contains("holds no token"), "{err}");
        let missing = read_token(&dir.join("none"))
            .expect_err("missing")
            .to_string();
        assert!(
            missing.contains("cannot read --api-token-file"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_read_tokens_file_skips_blank_lines_and_comments() {
        let dir = std::env::temp_dir().join(format!("understudy-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("read-tokens");
        std::fs::write(
            &file,
            "# lighting desk\n  desk-token \n\n#tablet\ntablet-token\n",
        )
        .expect("write");
        assert_eq!(
            read_tokens_file(&file).expect("read"),
            ["desk-token", "tablet-token"]
        );
        std::fs::write(&file, "# only a comment\n\n").expect("write");
        let err = read_tokens_file(&file).expect_err("empty").to_string();
        assert!(err.contains("holds no token"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_read_token_equal_to_the_admin_token_is_refused() {
        let read = vec!["r1".to_owned(), "same".to_owned()];
        assert!(check_distinct(Some("same"), &read).is_err());
        assert!(check_distinct(Some("admin"), &read).is_ok());
        assert!(check_distinct(None, &read).is_ok());
    }

    #[test]
    fn read_tokens_are_comma_separated_and_trimmed() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            gw: GatewayArgs,
        }
        let cli = Cli::try_parse_from(["t", "--read-tokens", "a, b,,c"]).expect("parse");
        let config = cli.gw.config().expect("config");
        assert_eq!(config.read_tokens, ["a", "b", "c"]);
    }
}
