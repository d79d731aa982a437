//! A child process with its output in a log file, killed on drop.
//!
//! [`Launch`] says what to run; [`Launch::spawn`] starts it and returns a
//! [`Process`], which can be signalled, waited for, killed and started again
//! with the same arguments. Only our own children are ever signalled, by
//! their PID (or, for a child started as a process-group leader, by that
//! group, which holds the child and what it started).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, POLL};

/// A signal to send to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: a crash, no clean-up.
    Kill,
    /// SIGTERM: ask for a clean shutdown.
    Term,
    /// SIGINT: Ctrl-C.
    Int,
    /// SIGSTOP: freeze the process.
    Stop,
    /// SIGCONT: resume a frozen process.
    Cont,
}

impl Signal {
    /// The name `kill -s` takes.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// What to run: program, arguments, environment, log file.
#[derive(Debug, Clone)]
pub struct Launch {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    log: PathBuf,
    group_leader: bool,
}

impl Launch {
    /// Runs `program`, named `name` in messages, with stdout and stderr
    /// going to the file `log` (truncated at the first start, appended to on
    /// restarts) and stdin from `/dev/null`.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log: impl Into<PathBuf>,
    ) -> Launch {
        Launch {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            log: log.into(),
            group_leader: false,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Removes every variable of ours from the inherited environment
    /// (`UNDERSTUDY_*`, but the choice of nats-server, and OpenTelemetry's
    /// `OTEL_*`), so settings from the developer's shell do not leak into
    /// the child.
    pub fn scrub_understudy_env(mut self) -> Launch {
        for (key, _) in std::env::vars_os() {
            let text = key.to_string_lossy();
            if (text.starts_with("UNDERSTUDY_") && text != "UNDERSTUDY_NATS_SERVER")
                || text.starts_with("OTEL_")
            {
                self.env_remove.push(key);
            }
        }
        self
    }

    /// Starts the child as the leader of a new process group, so dropping
    /// it also kills what it started (chromedriver and its browsers).
    pub fn own_process_group(mut self) -> Launch {
        self.group_leader = true;
        self
    }

    /// The arguments.
    pub fn arguments(&self) -> &[OsString] {
        &self.args
    }

    /// Starts the process.
    pub fn spawn(self) -> Result<Process, Error> {
        let mut process = Process {
            launch: self,
            child: None,
            status: None,
        };
        process.start(true)?;
        Ok(process)
    }

    fn command(&self, log: File) -> Result<Command, Error> {
        let err = log
            .try_clone()
            .map_err(Error::io("duplicate the handle of", &self.log))?;
        let mut cmd = Command::new(&self.program);
        for key in &self.env_remove {
            cmd.env_remove(key);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        if self.group_leader {
            cmd.process_group(0);
        }
        Ok(cmd)
    }
}

/// A running (or exited) child process. Killed with SIGKILL and reaped on
/// drop; when the thread is panicking (a test failed) the tail of its log is
/// printed.
#[derive(Debug)]
pub struct Process {
    launch: Launch,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Process {
    fn start(&mut self, first: bool) -> Result<(), Error> {
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .append(!first)
            .truncate(first)
            .open(&self.launch.log)
            .map_err(Error::io("open the log", &self.launch.log))?;
        let child = self
            .launch
            .command(log)?
            .spawn()
            .map_err(|source| Error::Spawn {
                name: self.launch.name.clone(),
                program: self.launch.program.clone(),
                source,
            })?;
        self.child = Some(child);
        self.status = None;
        Ok(())
    }

    /// The name given at launch.
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// The launch it was started with.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// The process id of the current child (also after it exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.launch.log
    }

    /// The log so far (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.launch.log).unwrap_or_default()
    }

    /// The exit status, once it has exited (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// Whether it is still running (a stopped process counts).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// `Err(Error::Exited)` with the log's tail once it has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                name: self.launch.name.clone(),
                status,
                log: self.launch.log.clone(),
                tail: tail(&self.launch.log, 30),
            }),
        }
    }

    /// Sends `signal` to the child (never to anything else).
    pub fn signal(&mut self, signal: Signal) -> Result<(), Error> {
        let name = self.launch.name.clone();
        let refuse = |detail: String| Error::Signal {
            name,
            signal: signal.name(),
            detail,
        };
        if let Some(status) = self.exit_status() {
            return Err(refuse(format!("it already exited ({status})")));
        }
        let Some(pid) = self.pid() else {
            return Err(refuse("it is not running".to_string()));
        };
        send_signal(&pid.to_string(), signal).map_err(refuse)
    }

    /// SIGSTOP, then waits (at most 5 s) until every thread has stopped.
    /// kill(2) returns before that: a multi-threaded process stops only once
    /// one of its threads takes the signal, and meanwhile another may run on
    /// (on a loaded machine, long enough to answer a request sent "after").
    pub async fn pause(&mut self) -> Result<(), Error> {
        self.signal(Signal::Stop)?;
        let pid = self.pid().unwrap_or(0);
        crate::wait_until(
            &format!("every thread of {} to stop", self.launch.name),
            STOP_WITHIN,
            || async move { all_threads_stopped(pid) },
        )
        .await
    }

    /// SIGKILL (to its whole group if it leads one) and reap; a no-op when
    /// it is not running.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.launch.group_leader {
            let _ = send_signal(&format!("-{}", child.id()), Signal::Kill);
        }
        if self.status.is_none() {
            // SIGKILL works on a stopped process too.
            let _ = child.kill();
            self.status = child.wait().ok();
        }
        // Keep the child for its pid and status.
        self.child = Some(child);
    }

    /// Waits until the process exits; fails after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::TimedOut {
                    what: format!("{} to exit", self.launch.name),
                    within,
                    last: format!(
                        "its log {}:\n{}",
                        self.launch.log.display(),
                        tail(&self.launch.log, 20)
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks it to stop with SIGTERM and waits at most `within`; SIGKILL
    /// after that.
    pub async fn stop(&mut self, within: Duration) {
        if self.signal(Signal::Term).is_ok() && self.wait_exit(within).await.is_ok() {
            return;
        }
        self.kill();
    }

    /// Starts it again with the same launch (a new instance), killing it
    /// first if it still runs. The log continues in the same file.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.start(false)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "[testkit] {} log: {}\n--- last lines ---\n{}\n---",
                self.launch.name,
                self.launch.log.display(),
                tail(&self.launch.log, 30)
            );
        }
    }
}

/// `kill -s <signal> -- <target>`; `target` is a pid, or `-pgid` for a group.
/// How long a SIGSTOP may take to stop every thread of a process.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Whether every thread of `pid` is stopped (state `T` or `t` in
/// `/proc/<pid>/task/*/stat`); `Err` says which is not.
fn all_threads_stopped(pid: u32) -> Result<(), String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("cannot read the threads of {pid}: {e}"))?;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // `tid (comm) S …`: the state follows the last `)`.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        if state != "T" && state != "t" {
            return Err(format!("thread {:?} is in state {state}", task.file_name()));
        }
    }
    Ok(())
}

fn send_signal(target: &str, signal: Signal) -> Result<(), String> {
    let status = Command::new("kill")
        .args(["-s", signal.name(), "--", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `kill`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`kill -s {} -- {target}` failed: {status}",
            signal.name()
        ))
    }
}

/// The last `lines` lines of the text file at `path` (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
