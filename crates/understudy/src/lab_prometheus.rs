//! The lab's Prometheus: scrapes every device and the gateway each second
//! and evaluates the alert rules users get in `deploy/prometheus/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use understudy_testkit::{Launch, Process, port_or_free};

/// The alert rules shipped in `deploy/prometheus/alerts.yml`.
pub(crate) const ALERTS: &str = include_str!("../../../deploy/prometheus/alerts.yml");

/// Where the lab prefers Prometheus to listen (its usual port).
const PREFERRED_PORT: u16 = 9090;

/// The Prometheus configuration of the lab: the devices' and the gateway's
/// `/metrics`, every second, with the alert rules in `alerts.yml` beside it.
pub(crate) fn config(devices: &[SocketAddr], gateway: Option<SocketAddr>) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "# Written by `understudy lab`.\n\
         global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - alerts.yml\n\
         scrape_configs:\n  - job_name: understudy-devices\n    static_configs:\n      - targets: [{}]\n",
        list(devices)
    );
    if let Some(g) = gateway {
        out.push_str(&format!(
            "  - job_name: understudy-gateway\n    static_configs:\n      - targets: [{}]\n",
            list(&[g])
        ));
    }
    out
}

/// The Prometheus binary: `given`, else `prometheus` on `PATH`, else
/// Debian's `/usr/bin/prometheus`; `None` when there is none.
pub(crate) fn binary(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/bin/prometheus");
        debian.is_file().then_some(debian)
    })
}

/// A Prometheus process of the lab; stopped on drop.
pub(crate) struct LabPrometheus {
    _proc: Process,
    addr: SocketAddr,
    log: PathBuf,
}

impl LabPrometheus {
    /// Writes its configuration and rules under `dir/prometheus/` and starts
    /// `bin` on 127.0.0.1:9090 (another free port if that one is taken).
    pub(crate) fn start(
        bin: &Path,
        dir: &Path,
        devices: &[SocketAddr],
        gateway: Option<SocketAddr>,
    ) -> Result<LabPrometheus> {
        let home = dir.join("prometheus");
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        let cfg = home.join("prometheus.yml");
        std::fs::write(&cfg, config(devices, gateway))
            .with_context(|| format!("cannot write {}", cfg.display()))?;
        std::fs::write(home.join("alerts.yml"), ALERTS).context("cannot write alerts.yml")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port_or_free(PREFERRED_PORT)?));
        let log = dir.join("prometheus.log");
        let proc = Launch::new("prometheus", bin, &log)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                home.join("data").display()
            ))
            .arg("--storage.tsdb.retention.time=1d")
            .arg(format!("--web.listen-address={addr}"))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(LabPrometheus {
            _proc: proc,
            addr,
            log,
        })
    }

    /// Where it answers (UI and HTTP API).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log file.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_scrapes_every_device_and_the_gateway_each_second() {
        let devices: Vec<SocketAddr> = vec![
            "127.0.0.1:9464".parse().expect("address"),
            "127.0.0.1:9465".parse().expect("address"),
        ];
        let cfg = config(&devices, Some("127.0.0.1:9460".parse().expect("address")));
        assert!(cfg.contains("scrape_interval: 1s"));
        assert!(cfg.contains("rule_files:\n  - alerts.yml"));
        assert!(cfg.contains("targets: ['127.0.0.1:9464', '127.0.0.1:9465']"));
        assert!(cfg.contains("job_name: understudy-gateway"));
        assert!(!config(&devices, None).contains("gateway"));
    }
}
