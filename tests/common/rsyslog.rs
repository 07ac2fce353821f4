//! A real syslog daemon for the audit tests: Debian's rsyslogd, run in the foreground with a
//! private configuration in a temporary directory. It listens on its own Unix datagram socket
//! (`<dir>/log.sock`, never `/dev/log`) and writes every message it receives to `<dir>/out.log`,
//! one line per message, in RFC 5424 form (`RSYSLOG_SyslogProtocol23Format`).
//!
//! The daemon's main queue is `Direct`: the input thread writes each message to the file itself
//! before it reads the next one, so nothing sits in a memory queue of the daemon. [`Rsyslog::kill`]
//! relies on that to make `SIGKILL` lose exactly what a real crash loses and nothing that is an
//! artefact of the fixture: see there.
//!
//! The daemon is killed when the fixture is dropped.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs rsyslogd.
pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// How long `start` waits for the socket and `stop` for the daemon to exit.
const STARTUP: Duration = Duration::from_secs(10);

/// One RFC 5424 line as the fixture's template writes it:
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogLine {
    pub pri: u8,
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    pub structured_data: String,
    pub msg: String,
}

impl SyslogLine {
    /// Parses one line of `out.log`; `None` if it is not in the template's form.
    pub fn parse(line: &str) -> Option<SyslogLine> {
        let rest = line.strip_prefix('<')?;
        let (pri, rest) = rest.split_once(">1 ")?;
        let mut parts = rest.splitn(7, ' ');
        let timestamp = parts.next()?.to_string();
        let hostname = parts.next()?.to_string();
        let app_name = parts.next()?.to_string();
        let procid = parts.next()?.to_string();
        let msgid = parts.next()?.to_string();
        let structured_data = parts.next()?.to_string();
        let msg = parts.next().unwrap_or("").to_string();
        Some(SyslogLine {
            pri: pri.parse().ok()?,
            timestamp,
            hostname,
            app_name,
            procid,
            msgid,
            structured_data,
            msg,
        })
    }
}

/// A running (or stopped) private rsyslogd.
pub struct Rsyslog {
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Rsyslog {
    /// Writes the configuration and starts the daemon; returns once its socket exists.
    pub fn start() -> Rsyslog {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "rsyslogd is not installed: run scripts/test.sh"
        );
        let dir = tempfile::tempdir().expect("tempdir for rsyslogd");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("mkdir rsyslog work dir");
        let d = dir.path().display();
        let conf = format!(
            r#"global(workDirectory="{d}/work" maxMessageSize="64k")
main_queue(queue.type="Direct")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{d}/log.sock" CreatePath="on" UseSpecialParser="off" RateLimit.Interval="0")
*.* action(type="omfile" file="{d}/out.log" template="RSYSLOG_SyslogProtocol23Format" flushOnTXEnd="on" asyncWriting="off")
"#
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf).expect("write rsyslog.conf");
        let mut r = Rsyslog {
            dir,
            child: None,
            starts: 0,
        };
        r.spawn();
        r
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's input socket: `syslog:<this>` for p11gate.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("log.sock")
    }

    /// The file every message is written to.
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("rsyslogd.{}.err", self.starts))
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "rsyslogd is already running");
        // A socket left by a killed daemon: remove it so that its reappearance means "bound".
        let _ = std::fs::remove_file(self.socket());
        self.starts += 1;
        let stderr = std::fs::File::create(self.stderr_path()).expect("rsyslogd stderr file");
        let mut child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {RSYSLOGD}: {e}"));
        let start = Instant::now();
        while !self.socket().exists() {
            if let Some(status) = child.try_wait().expect("wait rsyslogd") {
                panic!(
                    "rsyslogd exited ({status}) before creating {}:\n{}",
                    self.socket().display(),
                    self.stderr_text()
                );
            }
            if start.elapsed() > STARTUP {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rsyslogd did not create {} within {STARTUP:?}:\n{}",
                    self.socket().display(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child = Some(child);
    }

    /// Starts the daemon again after [`stop`](Self::stop) or [`kill`](Self::kill); appends to the
    /// same `out.log`.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// SIGTERM, then waits for the daemon to exit (it writes what it has read, removes its
    /// socket and exits).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("rsyslogd is not running");
        signal(child.id(), libc::SIGTERM);
        let start = Instant::now();
        loop {
            if child.try_wait().expect("wait rsyslogd").is_some() {
                return;
            }
            if start.elapsed() > STARTUP {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rsyslogd did not exit within {STARTUP:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, the way a crash ends the daemon: its socket file stays, unbound, and every
    /// datagram still queued in the socket is lost.
    ///
    /// A crash can also lose a message the daemon had read but not yet written. Nobody outside
    /// the daemon can know about such a message, so no sender can make up for it; a test that
    /// counts records would then fail for the daemon's sake, not p11gate's. This method therefore
    /// kills the daemon at a moment when it holds no such message: it stops the daemon
    /// (SIGSTOP) and checks that the input thread is blocked in `poll`, which with the `Direct`
    /// main queue means every message it read is already in `out.log`; otherwise it lets the
    /// daemon run on for a moment and tries again. It then leaves the daemon stopped for
    /// `hold`, so that datagrams pile up unread in its socket (where they are lost by the
    /// kill), and SIGKILLs it.
    pub fn kill_after_stop(&mut self, hold: Duration) {
        let mut child = self.child.take().expect("rsyslogd is not running");
        let pid = child.id();
        let start = Instant::now();
        loop {
            signal(pid, libc::SIGSTOP);
            wait_stopped(pid);
            if input_thread_idle(pid) {
                break;
            }
            signal(pid, libc::SIGCONT);
            assert!(
                start.elapsed() < STARTUP,
                "rsyslogd's input thread was never found blocked in poll"
            );
            std::thread::sleep(Duration::from_micros(300));
        }
        std::thread::sleep(hold);
        child.kill().expect("SIGKILL rsyslogd");
        child.wait().expect("wait rsyslogd");
    }

    /// [`kill_after_stop`](Self::kill_after_stop) with no hold.
    pub fn kill(&mut self) {
        self.kill_after_stop(Duration::ZERO);
    }

    /// The lines of `out.log` so far (complete lines only).
    pub fn lines(&self) -> Vec<String> {
        let text = match std::fs::read(self.out()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("read {}: {e}", self.out().display()),
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete.lines().map(str::to_string).collect()
    }

    /// Polls [`lines`](Self::lines) until `done` holds, and returns them; panics with what
    /// arrived after `timeout`.
    #[track_caller]
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.lines();
            if done(&lines) {
                return lines;
            }
            if start.elapsed() > timeout {
                let tail: Vec<&String> = lines.iter().rev().take(30).rev().collect();
                panic!(
                    "rsyslog output: {what} did not happen within {timeout:?}; {} lines, last ones:\n{}",
                    lines.len(),
                    tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one datagram to the daemon's socket, as a syslog client does.
    pub fn send(&self, message: &str) -> std::io::Result<()> {
        let s = UnixDatagram::unbound()?;
        s.send_to(message.as_bytes(), self.socket()).map(|_| ())
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this fixture spawned and has not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The threads of `pid`: (tid directory, comm).
fn threads(pid: u32) -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            (e.path(), comm.trim().to_string())
        })
        .collect()
}

/// The state letter of /proc/.../stat (after the parenthesised comm).
fn state(task: &Path) -> Option<char> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Waits until every thread of `pid` is in group stop.
fn wait_stopped(pid: u32) {
    let start = Instant::now();
    loop {
        if threads(pid)
            .iter()
            .all(|(t, _)| matches!(state(t), Some('T') | Some('t')))
        {
            return;
        }
        assert!(
            start.elapsed() < STARTUP,
            "rsyslogd {pid} did not stop after SIGSTOP"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Syscalls in which rsyslog's imuxsock input thread waits for its socket (x86_64 and aarch64
/// numbers): poll, ppoll, select, pselect6, epoll_wait, epoll_pwait.
#[cfg(target_arch = "x86_64")]
const WAITING_SYSCALLS: &[i64] = &[7, 271, 23, 270, 232, 281];
#[cfg(target_arch = "aarch64")]
const WAITING_SYSCALLS: &[i64] = &[73, 72, 22];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const WAITING_SYSCALLS: &[i64] = &[];

/// Whether the stopped daemon's input thread is blocked waiting for its socket.
fn input_thread_idle(pid: u32) -> bool {
    let input: Vec<PathBuf> = threads(pid)
        .into_iter()
        .filter(|(_, comm)| comm == "in:imuxsock")
        .map(|(t, _)| t)
        .collect();
    assert_eq!(
        input.len(),
        1,
        "rsyslogd {pid} has one thread named in:imuxsock"
    );
    let syscall = std::fs::read_to_string(input[0].join("syscall")).unwrap_or_default();
    let nr = syscall
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok());
    matches!(nr, Some(n) if WAITING_SYSCALLS.contains(&n))
}
