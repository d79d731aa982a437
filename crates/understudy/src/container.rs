//! What the containers of `docker-compose.yml` need from the binary itself
//! (their images hold nothing else, no shell): `understudy secure-init`,
//! the one-shot service that makes the lab's CA, certificates, NATS users
//! and gateway tokens in the secrets volume, and `understudy health`, the
//! health check of a device or gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use understudy_bus::accounts::Role;
use understudy_protocol::GroupName;
use understudy_testkit::SecureBus;
use understudy_testkit::secure::write_private;

/// Written last by `secure-init`: its presence means every file is there.
const COMPLETE: &str = ".complete";

/// `understudy secure-init` settings.
#[derive(Debug, Args)]
pub struct SecureInitArgs {
    /// The folder to fill (the compose lab's secrets volume).
    #[arg(long, default_value = "/secrets")]
    dir: PathBuf,
    /// A project group to make a device user for (repeat for several).
    #[arg(long = "group", required = true)]
    groups: Vec<String>,
    /// A name or IP address to put in the certificate, besides localhost,
    /// 127.0.0.1 and the NATS nodes' names (repeat: the devices' project
    /// addresses, the NATS nodes' addresses).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// A NATS node of the cluster, by the name the others reach it by
    /// (repeat): `<name>.conf` is written for each.
    #[arg(long = "nats-node")]
    nats_nodes: Vec<String>,
    /// The NATS cluster's name.
    #[arg(long, default_value = "understudy")]
    cluster_name: String,
}

/// Makes the lab's secrets once: on a folder already filled it says so and
/// changes nothing (a restarted lab keeps its passwords and certificates).
pub fn secure_init(a: &SecureInitArgs) -> Result<()> {
    let complete = a.dir.join(COMPLETE);
    if complete.exists() {
        println!(
            "secrets already made in {} (remove the volume to make new ones)",
            a.dir.display()
        );
        return Ok(());
    }
    let mut groups = Vec::new();
    for g in &a.groups {
        let group: GroupName = g.parse().map_err(|e| anyhow!("--group {g}: {e}"))?;
        groups.push(group);
    }
    for node in &a.nats_nodes {
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if node.is_empty() || node.starts_with('.') || !node.chars().all(name_char) {
            bail!("--nats-node {node:?}: a host name (letters, digits, '-' and '.')");
        }
    }
    let mut names: Vec<String> = a.nats_nodes.clone();
    names.extend(a.sans.iter().cloned());
    private_dir(&a.dir)?;
    let names_ref: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
    let bus = SecureBus::create_for(&a.dir, &names_ref, false, &names)?;
    let mut roles: Vec<Role> = groups.iter().cloned().map(Role::Device).collect();
    roles.extend([Role::Gateway, Role::Observer]);
    for role in &roles {
        let (user, password) = bus
            .credentials(role)
            .ok_or_else(|| anyhow!("no user for {role:?}"))?;
        write_private(
            &a.dir.join(format!("nats-password-{user}")),
            &format!("{password}\n"),
        )?;
    }
    bus.project_token_file()?;
    write_private(&a.dir.join("api-token"), &format!("{}\n", secret()))?;
    write_private(
        &a.dir.join("read-tokens"),
        &format!("# read-only token of the lab's dashboard\n{}\n", secret()),
    )?;
    for node in &a.nats_nodes {
        let text = nats_node_config(&a.dir, node, &a.nats_nodes, &a.cluster_name, &bus);
        write_private(&a.dir.join(format!("{node}.conf")), &text)?;
    }
    write_private(&complete, "")?;
    println!(
        "secrets made in {}: CA and certificate, NATS users {}, project token, gateway tokens, {} NATS node configuration(s)",
        a.dir.display(),
        roles
            .iter()
            .filter_map(|r| bus.credentials(r).map(|(u, _)| u.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        a.nats_nodes.len()
    );
    Ok(())
}

/// Creates `dir` (owner-only when this process makes it).
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// 32 random hex digits.
fn secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The configuration of NATS node `node` of `nodes`: its name, client port
/// 4222 (TLS and the accounts), monitor port 8222, JetStream in `/data`,
/// and the cluster on port 6222 with mutual TLS between the nodes (only a
/// holder of a certificate of the lab's CA joins). The nodes do not
/// advertise their cluster addresses to clients: a client keeps the
/// addresses it was given (the host reaches the nodes through published
/// ports).
fn nats_node_config(
    dir: &Path,
    node: &str,
    nodes: &[String],
    cluster: &str,
    bus: &SecureBus,
) -> String {
    let routes: Vec<String> = nodes
        .iter()
        .filter(|n| n.as_str() != node)
        .map(|n| format!("    \"nats-route://{n}:6222\""))
        .collect();
    let file = |name: &str| dir.join(name).display().to_string();
    format!(
        "# NATS node {node} of the understudy compose lab (made by `understudy secure-init`).\n\
         server_name: \"{node}\"\n\
         listen: \"0.0.0.0:4222\"\n\
         http: 8222\n\
         jetstream {{\n  store_dir: \"/data\"\n}}\n\
         cluster {{\n  name: \"{cluster}\"\n  listen: \"0.0.0.0:6222\"\n  no_advertise: true\n  routes: [\n{}\n  ]\n  \
         tls {{\n    cert_file: \"{}\"\n    key_file: \"{}\"\n    ca_file: \"{}\"\n    verify: true\n    timeout: 2\n  }}\n}}\n\
         {}",
        routes.join("\n"),
        file("server.pem"),
        file("server.key"),
        file("ca.pem"),
        bus.server_config()
    )
}

/// `understudy health` settings.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The metrics endpoint of the process to check (an unspecified
    /// address such as 0.0.0.0 means this host's loopback).
    #[arg(long, env = "UNDERSTUDY_METRICS_LISTEN")]
    metrics: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = crate::settings::parse_duration)]
    timeout: Duration,
}

/// Succeeds when the process serving `--metrics` answers its scrape and
/// holds a NATS connection (`understudy_nats_connected 1`). Says the
/// device's status colour too (B2) when the process reports one, healthy or
/// not: a device cut off from the bus runs on (unhealthy) and shows red.
pub async fn health(a: &HealthArgs) -> Result<()> {
    let addr = health_target(&a.metrics).await?;
    let body = tokio::time::timeout(a.timeout, scrape(addr))
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from http://{addr}/metrics within {:?}",
                a.timeout
            )
        })??;
    let colour = status_colour(&body)
        .map(|c| format!("; status {c}"))
        .unwrap_or_default();
    match nats_connected(&body) {
        Some(true) => {
            println!("healthy: http://{addr}/metrics answers, connected to NATS{colour}");
            Ok(())
        }
        Some(false) => bail!("not connected to NATS (understudy_nats_connected 0){colour}"),
        None => bail!("http://{addr}/metrics has no understudy_nats_connected"),
    }
}

/// The device's status colour in a scrape (`understudy_status_colour`:
/// 0 grey, 1 blue, 2 red), if the process reports one.
fn status_colour(body: &str) -> Option<&'static str> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix("understudy_status_colour")?;
        let value = rest.rsplit_once(' ')?.1.trim().parse::<f64>().ok()?;
        Some(match value as i64 {
            0 => "grey",
            1 => "blue",
            2 => "red",
            _ => "unknown",
        })
    })
}

/// Where to scrape: `listen` resolved, an unspecified IP replaced by the
/// loopback address of its family.
async fn health_target(listen: &str) -> Result<SocketAddr> {
    let mut addr = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("--metrics {listen:?} is not an address"))?
        .next()
        .ok_or_else(|| anyhow!("--metrics {listen:?} resolves to nothing"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// The body of `GET /metrics` at `addr` (HTTP/1.0, so the server closes
/// the connection after it); an error for any status but 200.
async fn scrape(addr: SocketAddr) -> Result<String> {
    const MAX: u64 = 4 << 20;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.take(MAX).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("http://{addr}/metrics sent no HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("http://{addr}/metrics answered {status:?}");
    }
    Ok(body.to_string())
}

/// The value of `understudy_nats_connected` in a scrape: `Some(true)` for 1.
fn nats_connected(body: &str) -> Option<bool> {
    body.lines().find_map(|line| {
        let value = line.strip_prefix("understudy_nats_connected ")?;
        Some(value.trim().parse::<f64>().ok()? == 1.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nats_gauge_is_read_from_a_scrape() {
        let body = "# HELP understudy_nats_connected 1 while …\n\
                    # TYPE understudy_nats_connected gauge\n\
                    understudy_nats_connected 1\nunderstudy_nats_reconnects_total 0\n";
        assert_eq!(nats_connected(body), Some(true));
        assert_eq!(nats_connected("understudy_nats_connected 0\n"), Some(false));
        assert_eq!(nats_connected("understudy_term{group=\"lab\"} 3\n"), None);
    }

    #[test]
    fn the_status_colour_is_read_from_a_scrape() {
        let line =
            |v: u8| format!("understudy_status_colour{{group=\"lab\",device=\"dev-5\"}} {v}\n");
        assert_eq!(status_colour(&line(1)), Some("blue"));
        assert_eq!(status_colour(&line(2)), Some("red"));
        assert_eq!(status_colour(&line(0)), Some("grey"));
        assert_eq!(status_colour("understudy_nats_connected 1\n"), None);
        assert_eq!(
            status_colour("# HELP understudy_status_colour This device's…\n"),
            None
        );
    }

    #[tokio::test]
    async fn an_unspecified_address_is_checked_on_loopback() {
        let addr = health_target("0.0.0.0:9464").await.expect("address");
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 9464)));
        assert!(health_target("not an address").await.is_err());
    }

    #[test]
    fn secure_init_makes_every_secret_once() {
        let dir = understudy_testkit::TempDir::new("secure-init").expect("temp dir");
        let secrets = dir.path().join("secrets");
        let args = SecureInitArgs {
            dir: secrets.clone(),
            groups: vec!["lab".into()],
            sans: vec!["10.1.2.3".into(), "device-1".into()],
            nats_nodes: vec!["nats-1".into(), "nats-2".into()],
            cluster_name: "understudy".into(),
        };
        secure_init(&args).expect("made");
        for f in [
            "ca.pem",
            "server.pem",
            "server.key",
            "nats-password-device-lab",
            "nats-password-gateway",
            "nats-password-observer",
            "project-token",
            "api-token",
            "read-tokens",
            "nats-1.conf",
            "nats-2.conf",
        ] {
            let meta = std::fs::metadata(secrets.join(f)).expect(f);
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{f} is private");
        }
        let conf = std::fs::read_to_string(secrets.join("nats-1.conf")).expect("conf");
        assert!(conf.contains("server_name: \"nats-1\""), "{conf}");
        assert!(conf.contains("nats-route://nats-2:6222"), "{conf}");
        assert!(!conf.contains("nats-route://nats-1:6222"), "{conf}");
        assert!(conf.contains("user: \"device-lab\""), "{conf}");
        let pw = std::fs::read_to_string(secrets.join("nats-password-gateway")).expect("pw");
        secure_init(&args).expect("again");
        let again = std::fs::read_to_string(secrets.join("nats-password-gateway")).expect("pw");
        assert_eq!(pw, again, "a second run changes nothing");
    }
}
