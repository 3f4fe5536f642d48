//! Child processes that cannot outlive the process that started them.
//!
//! Three layers make sure nothing is left behind:
//! - [`ManagedChild`] stops its process on drop (SIGTERM to its process group, SIGKILL after a
//!   grace period), so a failing or panicking test cleans up while unwinding;
//! - every child gets `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when this process
//!   dies without unwinding (SIGKILL, abort);
//! - every child leads its own process group, so a Ctrl-C in the terminal reaches only us and we
//!   stop the children in order, and a stop signal also reaches any grandchildren.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Test
//! runners and tokio end threads all the time, so all children are forked from one spawner thread
//! that lives as long as the process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a child gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE_PERIOD: Duration = Duration::from_secs(10);

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Sends spawn requests to the one long-lived spawner thread.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("e2e-harness-spawner".into())
            .spawn(move || {
                // Lives until the process ends: the sender is held in a static.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the e2e-harness spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `command` from the spawner thread, in its own process group, with SIGKILL as its
/// parent-death signal.
fn spawn_guarded(mut command: Command) -> std::io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (setpgid, prctl, getppid, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("the e2e-harness spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the e2e-harness spawner thread did not answer"))?
}

/// A running component: its process and the log file its stdout and stderr go to.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl ManagedChild {
    /// Starts `program args...` with stdout and stderr appended to `log`, stdin closed.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(name, command, log, None)
    }

    /// Starts a prepared `command` (its args, env and working folder are kept) with stdin closed,
    /// stderr appended to `log` and stdout appended to `stdout` (or to `log` when `None`).
    pub fn spawn_command(
        name: &str,
        mut command: Command,
        log: &Path,
        stdout: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let open = |path: &Path| {
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {} of {name}", path.display()))
        };
        let err = open(log)?;
        let out = match stdout {
            Some(path) => open(path)?,
            None => err.try_clone().context("duplicating a log file handle")?,
        };
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = command.get_program().to_string_lossy().into_owned();
        let child =
            spawn_guarded(command).with_context(|| format!("starting {name} ({program})"))?;
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The component's name, as given to [`ManagedChild::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file of the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the child has exited (it is then reaped).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the child's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stops the child: SIGTERM to its process group, SIGKILL after `grace`. Idempotent.
    /// Returns how it ended, or `None` if it had already been stopped.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            kill_group(self.pid, libc::SIGKILL); // leftovers of the group, if any
            return Some(status);
        }
        kill_group(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                kill_group(self.pid, libc::SIGKILL);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        kill_group(self.pid, libc::SIGKILL);
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stop(STOP_GRACE_PERIOD);
    }
}

fn kill_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; a negative pid addresses the group.
    // ESRCH (group already gone) is the expected outcome after a clean exit.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// The last `lines` lines of a log file (at most its last 64 KiB), or a note why it is unreadable.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(log {} unreadable: {err})", path.display()),
    }
}

/// Whether a process with this pid exists and is not a zombie.
///
/// A zombie counts as gone: an orphan is re-parented to init, which may be slow to reap it (or,
/// in a container, may not reap at all), but it no longer runs.
pub fn is_running(pid: u32) -> bool {
    match proc_stat(pid) {
        Some(stat) => stat.state != 'Z' && stat.state != 'X',
        None => false,
    }
}

/// Pids of the live (non-zombie) children of `parent`, read from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|s| s.parent == parent && s.state != 'Z' && s.state != 'X')
        })
        .collect();
    pids.sort_unstable();
    pids
}

struct ProcStat {
    state: char,
    parent: u32,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// Parses `pid (comm) state ppid ...`; comm may itself contain spaces and parentheses, so the
/// fields are read after the *last* `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some(ProcStat { state, parent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parsing_survives_odd_command_names() {
        let stat = parse_proc_stat("4242 (kube (api) server) S 17 4242 4242 0 -1").unwrap();
        assert_eq!((stat.state, stat.parent), ('S', 17));
        assert!(parse_proc_stat("4242 (truncated").is_none());
        assert!(parse_proc_stat("").is_none());
    }

    #[test]
    fn a_stopped_child_is_gone_and_its_log_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut child = ManagedChild::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), "echo started; exec sleep 600".into()],
            &log,
        )
        .unwrap();
        let pid = child.pid();
        assert!(is_running(pid));
        assert!(children_of(std::process::id()).contains(&pid));
        wait_for_log_line(&child, "started");
        let status = child
            .stop(Duration::from_secs(5))
            .expect("first stop reports the exit");
        assert!(!status.success(), "sleep was ended by a signal: {status:?}");
        assert!(!is_running(pid));
        assert!(
            child.stop(Duration::from_secs(5)).is_none(),
            "stop is idempotent"
        );
        assert_eq!(log_tail(&log, 5), "started", "the log outlives the child");
    }

    fn wait_for_log_line(child: &ManagedChild, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log_tail(child.log_path(), 1).contains(line) {
            assert!(
                Instant::now() < deadline,
                "{} never logged {line:?}",
                child.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = ManagedChild::spawn(
            "stubborn",
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "trap '' TERM; echo ready; while :; do sleep 1; done".into(),
            ],
            &dir.path().join("stubborn.log"),
        )
        .unwrap();
        let pid = child.pid();
        // Let the shell install its trap before signalling it.
        wait_for_log_line(&child, "ready");
        let status = child.stop(Duration::from_millis(300)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!is_running(pid));
    }

    #[test]
    fn log_tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        assert!(log_tail(&dir.path().join("missing"), 3).contains("unreadable"));
    }
}
