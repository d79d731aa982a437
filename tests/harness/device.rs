//! Real `understudy node` processes: one device each, with its log captured.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{POLL, TempDir, send_signal, tail, understudy_bin};

/// How a device is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOpts {
    /// The project group (`--group`).
    pub group: String,
    /// The device id (`--device-id`).
    pub device_id: String,
    /// The MAC, `aa:bb:cc:dd:ee:ff` (`--mac`), the election tie-breaker.
    pub mac: String,
    /// The score, 0–255 (`--score`).
    pub score: u8,
    /// More arguments, appended after the standard ones.
    pub extra_args: Vec<String>,
}

impl DeviceOpts {
    /// Options with no extra arguments.
    pub fn new(group: &str, device_id: &str, mac: &str, score: u8) -> DeviceOpts {
        DeviceOpts {
            group: group.to_string(),
            device_id: device_id.to_string(),
            mac: mac.to_string(),
            score,
            extra_args: Vec::new(),
        }
    }
}

/// One `understudy node` process (a device). Its stdout and stderr go to a log
/// file in its own temp dir. Killed (SIGKILL) on drop; when the test fails the
/// log is kept and its path and tail printed.
#[derive(Debug)]
pub struct Device {
    opts: DeviceOpts,
    args: Vec<String>,
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: PathBuf,
    _dir: TempDir,
}

impl Device {
    /// Starts `understudy node --group G --device-id D --mac M --score N
    /// --nats url1,url2 --heartbeat-interval 100ms --grace-period 2s
    /// --data-dir <its temp dir>/data <extra_args>`. Does not wait for it to be up (watch it with an
    /// [`super::Observer`]). Panics if it cannot be spawned.
    pub fn spawn<S: AsRef<str>>(urls: &[S], opts: DeviceOpts) -> Device {
        let nats: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let mut args: Vec<String> = [
            "node",
            "--group",
            &opts.group,
            "--device-id",
            &opts.device_id,
            "--mac",
            &opts.mac,
            "--score",
            &opts.score.to_string(),
            "--nats",
            &nats.join(","),
            "--heartbeat-interval",
            "100ms",
            "--grace-period",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let dir = TempDir::new(&format!("device-{}", opts.device_id));
        let data_dir = dir.path().join("data");
        args.extend(["--data-dir".to_string(), data_dir.display().to_string()]);
        args.extend(opts.extra_args.iter().cloned());
        let log = dir.path().join(format!("{}.log", opts.device_id));
        let mut device = Device {
            opts,
            args,
            child: None,
            status: None,
            log,
            _dir: dir,
        };
        device.start_process();
        device
    }

    fn start_process(&mut self) {
        let bin = understudy_bin();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup {}: {e}", self.log.display()));
        let mut cmd = Command::new(&bin);
        // Settings from the developer's shell must not leak into the test.
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("UNDERSTUDY_") && key_str != "UNDERSTUDY_NATS_SERVER" {
                cmd.env_remove(&key);
            }
        }
        let child = cmd
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {}: {e}", bin.display(), self.args.join(" ")));
        self.child = Some(child);
        self.status = None;
    }

    /// The options it was started with.
    pub fn opts(&self) -> &DeviceOpts {
        &self.opts
    }

    /// Its device id.
    pub fn id(&self) -> &str {
        &self.opts.device_id
    }

    /// The full argument list given to `understudy`.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The process id of the current process (also after it exited).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The device's `--data-dir` (its project copy, outbox and conflicts live
    /// in `<data dir>/project`); kept across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// The log file (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (a stopped process counts).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// The exit status, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.poll_exit()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    fn signal(&mut self, signal: &str) {
        if self.poll_exit().is_some() {
            panic!(
                "cannot send SIG{signal} to device {}: it already exited ({:?})",
                self.opts.device_id, self.status
            );
        }
        if let Err(e) = send_signal(self.pid(), signal) {
            panic!("device {}: {e:#}", self.opts.device_id);
        }
    }

    /// SIGKILL (crash: no goodbye, no lease release) and reap.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut()
            && self.status.is_none()
        {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.status = Some(status);
            }
        }
    }

    /// SIGSTOP: freeze the process (it neither beats nor notices time pass).
    pub fn sigstop(&mut self) {
        self.signal("STOP");
    }

    /// SIGCONT: resume a frozen process.
    pub fn sigcont(&mut self) {
        self.signal("CONT");
    }

    /// SIGTERM: ask for a clean shutdown (use [`Device::wait_exit`] after).
    pub fn sigterm(&mut self) {
        self.signal("TERM");
    }

    /// Waits until the process exits; fails after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.poll_exit() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "device {} did not exit within {within:?}; its log {}:\n{}",
                    self.opts.device_id,
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the device again with the same arguments (a new instance),
    /// killing it first if it still runs. The log continues in the same file.
    pub fn restart(&mut self) {
        self.kill9();
        self.start_process();
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && self.status.is_none()
        {
            // SIGKILL works on a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "[harness] device {} log: {}\n--- last lines ---\n{}\n---",
                self.opts.device_id,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
    }
}
