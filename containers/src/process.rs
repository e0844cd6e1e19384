//! A child process that a test can kill -9, terminate, pause and restart.
//!
//! The child runs in its own process group and every signal goes to the
//! group, so helpers it spawns (a shell's children, for instance) share its
//! fate. Its stdout and stderr are appended to one log file, which survives
//! restarts.

use crate::FixtureError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Interval between two checks of whether the child exited, in ms.
const EXIT_POLL_INTERVAL_MS: u64 = 10;

/// What the fixture writes into the log before every start (followed by
/// the program and its arguments): what belongs to the current incarnation
/// comes after the last one.
pub const START_BANNER: &str = "--- soilstream-containers: starting";

/// Bytes of log included in error messages.
pub(crate) const LOG_TAIL_BYTES: u64 = 4_096;

/// What to run, with which arguments and environment, logging where.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    current_dir: Option<PathBuf>,
    log_path: PathBuf,
}

impl ChildSpec {
    /// Runs `program` (a path, or a name looked up on `PATH`), appending its
    /// stdout and stderr to `log_path`.
    pub fn new(program: impl Into<PathBuf>, log_path: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            current_dir: None,
            log_path: log_path.into(),
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (the rest is inherited).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

/// How [`ChildProcess::terminate`] ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination {
    /// The exit status.
    pub status: ExitStatus,
    /// Whether SIGKILL was needed because SIGTERM was not honoured in time.
    pub forced: bool,
    /// Time from SIGTERM to exit, in ms.
    pub elapsed_ms: u64,
}

/// A running (or exited) child process.
#[derive(Debug)]
pub struct ChildProcess {
    spec: ChildSpec,
    child: Child,
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts the process described by `spec`.
    pub fn spawn(spec: ChildSpec) -> Result<Self, FixtureError> {
        let child = start(&spec)?;
        Ok(Self {
            spec,
            child,
            exit: None,
        })
    }

    /// Starts the same process again (same arguments, environment and log
    /// file) after it exited. Fails if it is still running.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        if self.is_running() {
            return Err(FixtureError::State(format!(
                "{} (pid {}) is still running; stop it before restarting",
                self.spec.program.display(),
                self.pid()
            )));
        }
        self.child = start(&self.spec)?;
        self.exit = None;
        Ok(())
    }

    /// The process id (of the current incarnation).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What this process runs.
    pub fn spec(&self) -> &ChildSpec {
        &self.spec
    }

    /// The log file holding stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.spec.log_path
    }

    /// The last `max_bytes` of the log (lossy UTF-8).
    pub fn log_tail(&self, max_bytes: u64) -> String {
        read_tail(&self.spec.log_path, max_bytes)
    }

    /// The exit status if the process has exited (reaps it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Whether the process is still running (a paused process is running).
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits up to `timeout_ms` for the process to exit; `None` if it is
    /// still running then.
    pub fn wait(&mut self, timeout_ms: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(EXIT_POLL_INTERVAL_MS));
        }
    }

    /// Kills the process group with SIGKILL and reaps the process. A no-op
    /// returning the status if it already exited.
    pub fn kill9(&mut self) -> Result<ExitStatus, FixtureError> {
        if let Some(status) = self.exit_status() {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL)?;
        let status = self
            .child
            .wait()
            .map_err(|e| FixtureError::io("reaping a killed process", e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM (and SIGCONT, so a paused process can act on it), waits
    /// up to `timeout_ms` for the process to exit, then kills it with SIGKILL.
    pub fn terminate(&mut self, timeout_ms: u64) -> Result<Termination, FixtureError> {
        let started = Instant::now();
        if let Some(status) = self.exit_status() {
            return Ok(Termination {
                status,
                forced: false,
                elapsed_ms: 0,
            });
        }
        self.signal(Signal::SIGTERM)?;
        self.signal(Signal::SIGCONT)?;
        if let Some(status) = self.wait(timeout_ms) {
            return Ok(Termination {
                status,
                forced: false,
                elapsed_ms: elapsed_ms(started),
            });
        }
        tracing::warn!(
            program = %self.spec.program.display(),
            pid = self.pid(),
            timeout_ms,
            "SIGTERM not honoured in time; sending SIGKILL"
        );
        let status = self.kill9()?;
        Ok(Termination {
            status,
            forced: true,
            elapsed_ms: elapsed_ms(started),
        })
    }

    /// Freezes the process group (SIGSTOP): sockets stay open, nothing is
    /// answered.
    pub fn pause(&mut self) -> Result<(), FixtureError> {
        self.signal_running(Signal::SIGSTOP)
    }

    /// Resumes a paused process group (SIGCONT).
    pub fn resume(&mut self) -> Result<(), FixtureError> {
        self.signal_running(Signal::SIGCONT)
    }

    fn signal_running(&mut self, signal: Signal) -> Result<(), FixtureError> {
        if let Some(status) = self.exit_status() {
            return Err(FixtureError::State(format!(
                "cannot send {} to {}: it exited ({status})",
                signal.as_str(),
                self.spec.program.display()
            )));
        }
        self.signal(signal)
    }

    fn signal(&self, signal: Signal) -> Result<(), FixtureError> {
        let pid = i32::try_from(self.child.id()).map_err(|_| FixtureError::Signal {
            signal: signal.as_str(),
            pid: -1,
            reason: format!("pid {} does not fit i32", self.child.id()),
        })?;
        // The child leads its own process group (pgid = pid).
        killpg(Pid::from_raw(pid), signal).map_err(|errno| FixtureError::Signal {
            signal: signal.as_str(),
            pid,
            reason: errno.to_string(),
        })
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.is_running()
            && let Err(error) = self.kill9()
        {
            tracing::warn!(%error, "could not kill a child process on drop");
        }
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn start(spec: &ChildSpec) -> Result<Child, FixtureError> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|e| FixtureError::io(format!("opening log {}", spec.log_path.display()), e))?;
    let banner = format!("{START_BANNER} {} {:?}\n", spec.program.display(), spec.args);
    log.write_all(banner.as_bytes())
        .map_err(|e| FixtureError::io("writing the log banner", e))?;
    let stderr: File = log
        .try_clone()
        .map_err(|e| FixtureError::io("duplicating the log file handle", e))?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .process_group(0);
    for key in &spec.env_remove {
        command.env_remove(key);
    }
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    if let Some(dir) = &spec.current_dir {
        command.current_dir(dir);
    }
    let child = command
        .spawn()
        .map_err(|e| FixtureError::io(format!("starting {}", spec.program.display()), e))?;
    tracing::debug!(program = %spec.program.display(), pid = child.id(), "started child process");
    Ok(child)
}

/// The last `max_bytes` of a file, lossy UTF-8; empty if it cannot be read.
pub(crate) fn read_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return String::new();
    };
    if file.seek(SeekFrom::Start(len.saturating_sub(max_bytes))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.take(max_bytes).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(dir: &Path, script: &str) -> ChildSpec {
        ChildSpec::new("/bin/sh", dir.join("child.log")).args(["-c", script])
    }

    #[test]
    fn kill9_stops_a_running_process_and_logs_are_captured() {
        let dir = tempfile::tempdir().unwrap();
        let mut child =
            ChildProcess::spawn(shell(dir.path(), "echo hello-$((40+2)); exec sleep 30")).unwrap();
        // The banner holds the arguments; only the child's output says `hello-42`.
        crate::wait_until("log line", 5_000, || child.log_tail(1_000).contains("hello-42")).unwrap();
        assert!(child.is_running());
        let status = child.kill9().unwrap();
        assert!(!status.success());
        assert!(!child.is_running());
        assert!(child.pause().is_err(), "signals to an exited process are errors");
    }

    #[test]
    fn terminate_is_graceful_when_honoured_and_forced_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let mut polite = ChildProcess::spawn(shell(dir.path(), "exec sleep 30")).unwrap();
        let t = polite.terminate(5_000).unwrap();
        assert!(!t.forced);
        let mut stubborn = ChildProcess::spawn(shell(
            dir.path(),
            "trap '' TERM; echo armed-$((40+2)); while true; do sleep 0.05; done",
        ))
        .unwrap();
        crate::wait_until("trap armed", 5_000, || {
            stubborn.log_tail(1_000).contains("armed-42")
        })
        .unwrap();
        let t = stubborn.terminate(300).unwrap();
        assert!(t.forced);
        assert!(t.elapsed_ms >= 300);
        assert!(!stubborn.is_running());
    }

    #[test]
    fn wait_reports_exit_and_restart_reruns_with_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = ChildProcess::spawn(shell(dir.path(), "echo run; exit 3")).unwrap();
        let status = child.wait(5_000).expect("exits");
        assert_eq!(status.code(), Some(3));
        child.restart().unwrap();
        assert_eq!(child.wait(5_000).and_then(|s| s.code()), Some(3));
        assert_eq!(child.log_tail(10_000).matches("run\n").count(), 2);
    }

    #[test]
    fn pause_freezes_and_resume_continues() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("ticks");
        let script = format!("while true; do echo x >> {}; sleep 0.02; done", counter.display());
        let mut child = ChildProcess::spawn(shell(dir.path(), &script)).unwrap();
        let ticks = || std::fs::read_to_string(&counter).map(|s| s.len()).unwrap_or(0);
        crate::wait_until("first ticks", 5_000, || ticks() > 0).unwrap();
        child.pause().unwrap();
        // Let a tick that was already running finish, then check nothing moves.
        std::thread::sleep(Duration::from_millis(100));
        let frozen = ticks();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(ticks(), frozen, "a paused process must not make progress");
        child.resume().unwrap();
        crate::wait_until("ticks after resume", 5_000, || ticks() > frozen).unwrap();
        child.kill9().unwrap();
    }

    #[test]
    fn missing_programs_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let error =
            ChildProcess::spawn(ChildSpec::new("/nonexistent/binary", dir.path().join("l"))).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/binary"), "{error}");
    }
}
