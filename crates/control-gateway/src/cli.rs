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
    /// The API token mutating calls need (`Authorization: Bearer <token>`;
    /// TCP `auth`). Without one every mutating call is refused with 401.
    #[arg(long, env = "UNDERSTUDY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// A file holding the API token (its first line; surrounding white
    /// space ignored) — better than the flag, which other users can see.
    #[arg(long, env = "UNDERSTUDY_API_TOKEN_FILE", conflicts_with = "api_token")]
    pub api_token_file: Option<std::path::PathBuf>,
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
            None => self.api_token,
        };
        Ok(Config {
            nats: self.nats_auth.with_servers(self.nats),
            listen: self.listen,
            tcp_listen: self.tcp_listen,
            api_token,
            metrics_listen: self.metrics_listen,
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
}
