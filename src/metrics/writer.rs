//! One process's metrics file: its name, its atomic replacement, and the thread that rewrites it
//! every `interval_s` seconds.
//!
//! The file is `<dir>/p11gate-<app>-<pid>.prom`, one per process, and every series carries the
//! `pid` label. node_exporter's textfile collector reads every `*.prom` file of its directory
//! and refuses a scrape in which two files hold the same series, so two Vault servers of one
//! app on one host, or a forked child, must neither share a file nor repeat each other's
//! series; a per-process file also needs no locking between processes. The pid label costs
//! new series after each restart, which Prometheus handles like any restarted target.
//!
//! A write goes to `.p11gate-<app>-<pid>.prom.tmp` in the same directory (the collector ignores
//! names not ending in `.prom`) and is renamed over the file: a reader sees the old or the new
//! content, never part of one. There is no fsync: after a crash the next write replaces the
//! file anyway. The mode is 0644 whatever the umask, since node_exporter runs as another user
//! (the counts are not secret: app, slot and function names).
//!
//! The file is removed when the process exits. A process that died without exiting (killed,
//! crashed) leaves its file behind: the next process of the same app to start metrics removes
//! the files of its app whose pid is no longer in /proc.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::counters::Counters;
use super::{clock, text};

/// One process's metrics for one app: its counters and its file.
#[derive(Debug)]
pub struct Registry {
    /// Its place in `super::REGISTRIES`.
    pub(super) index: usize,
    pub(super) pid: u32,
    pub(super) app: String,
    pub(super) dir: PathBuf,
    pub(super) interval_s: AtomicU64,
    pub(super) counters: Counters,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The last write failed (so the next failure is not logged again).
    failing: AtomicBool,
}

/// A file-name-safe form of an app name (the label keeps the name as it is).
pub fn file_app(app: &str) -> String {
    let safe: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    }
}

/// The file name of `app`'s metrics in process `pid`.
pub fn file_name(app: &str, pid: u32) -> String {
    format!("p11gate-{}-{pid}.prom", file_app(app))
}

impl Registry {
    pub(super) fn new(index: usize, pid: u32, app: &str, dir: &Path) -> Registry {
        Registry {
            index,
            pid,
            app: app.to_string(),
            dir: dir.to_path_buf(),
            interval_s: AtomicU64::new(10),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    /// The file this registry writes.
    pub fn path(&self) -> PathBuf {
        self.dir.join(file_name(&self.app, self.pid))
    }

    /// Writes the file now; a failure is logged once until a write succeeds again.
    pub(super) fn write(&self) {
        clock::recalibrate();
        let content = text::render(&self.app, self.pid, &self.counters.totals());
        match replace(
            &self.dir,
            &file_name(&self.app, self.pid),
            content.as_bytes(),
        ) {
            Ok(()) => {
                if self.failing.swap(false, Relaxed) {
                    log::info!("metrics: {} written again", self.path().display());
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Relaxed) {
                    log::warn!(
                        "metrics: cannot write {}: {e} (will retry every {} s)",
                        self.path().display(),
                        self.interval_s.load(Relaxed)
                    );
                }
            }
        }
    }

    /// Starts the thread that rewrites the file every interval.
    pub(super) fn spawn(&'static self) -> Result<(), String> {
        self.stop.store(false, Release);
        let handle = std::thread::Builder::new()
            .name("p11gate-metrics".into())
            .spawn(move || self.run())
            .map_err(|e| format!("cannot start the metrics writer thread: {e}"))?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    fn run(&self) {
        loop {
            let interval = Duration::from_secs(self.interval_s.load(Relaxed).max(1));
            let deadline = Instant::now() + interval;
            loop {
                if self.stop.load(Acquire) {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::park_timeout(deadline - now);
            }
            self.write();
        }
    }

    /// Stops the writer thread, if there is one, and waits for it.
    pub(super) fn stop_thread(&self) {
        self.stop.store(true, Release);
        let handle = self.thread.lock().take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }

    /// Removes this process's file (at exit, or when the process becomes another app).
    pub(super) fn remove_file(&self) {
        let _ = fs::remove_file(self.path());
    }

    /// Removes the files (and temporary files) of this app left by processes that are gone.
    pub(super) fn remove_dead_files(&self) {
        // Without /proc every pid would look dead.
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("p11gate-{}-", file_app(&self.app));
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let bare = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".tmp"))
                .unwrap_or(name);
            let Some(pid) = bare
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".prom"))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let gone = pid != self.pid.to_string() && !Path::new("/proc").join(pid).exists();
            if gone && fs::remove_file(entry.path()).is_ok() {
                log::info!(
                    "metrics: removed {} (process {pid} is gone)",
                    entry.path().display()
                );
            }
        }
    }
}

/// Replaces `dir/name` with `content` through a temporary file and a rename.
pub fn replace(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.set_permissions(Permissions::from_mode(0o644))?;
        f.write_all(content)?;
        drop(f);
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_and_per_process() {
        assert_eq!(file_name("vault-a", 42), "p11gate-vault-a-42.prom");
        assert_eq!(file_name("a/b \"c\"", 7), "p11gate-a_b__c_-7.prom");
        assert_eq!(file_name("", 7), "p11gate-_-7.prom");
        assert_eq!(file_name("..", 7), "p11gate-_..-7.prom");
    }

    #[test]
    fn replace_leaves_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        replace(dir.path(), "x.prom", b"one\n").unwrap();
        replace(dir.path(), "x.prom", b"two\n").unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["x.prom".to_string()]);
        let path = dir.path().join("x.prom");
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(replace(&dir.path().join("missing"), "x.prom", b"").is_err());
    }

    #[test]
    fn dead_processes_files_of_the_same_app_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        // pid 0 never has a /proc entry; pid 1 always has one.
        for name in [
            "p11gate-app-0.prom",
            ".p11gate-app-0.prom.tmp",
            "p11gate-app-1.prom",
            "p11gate-other-0.prom",
            "p11gate-app-x-0.prom",
            "node.prom",
        ] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        fs::write(dir.path().join(file_name("app", me)), "").unwrap();
        Registry::new(0, me, "app", dir.path()).remove_dead_files();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = vec![
            "node.prom".to_string(),
            "p11gate-app-1.prom".into(),
            "p11gate-app-x-0.prom".into(),
            "p11gate-other-0.prom".into(),
            file_name("app", me),
        ];
        want.sort();
        assert_eq!(names, want);
    }
}
