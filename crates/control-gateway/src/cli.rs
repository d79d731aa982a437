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
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9465
    /// (docs/telemetry.md) [default: off].
    #[arg(long, env = "UNDERSTUDY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl GatewayArgs {
    /// The gateway's settings.
    pub fn config(self) -> Config {
        Config {
            nats: self.nats_auth.with_servers(self.nats),
            listen: self.listen,
            tcp_listen: self.tcp_listen,
            api_token: self.api_token,
            metrics_listen: self.metrics_listen,
        }
    }
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: GatewayArgs) -> Result<(), GatewayError> {
    crate::run(args.config(), understudy_bus::terminate_or_interrupt()).await
}
