//! The soft token's store under `kill -9` and under two writing processes.
//!
//! Children are this test binary run again (the ignored test `child_process`, its role in
//! `P11GATE_STORE_ROLE`); they print what they have durably done on stdout, one line each.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p11gate::soft::store::{Snapshot, Store};

const ROLE: &str = "P11GATE_STORE_ROLE";
const DIR: &str = "P11GATE_STORE_DIR";
/// Starts each line a child means: the test harness may print on the same line before it.
const MARK: &str = "@@";

/// How many times the crash test kills its writer.
const KILLS: usize = 400;

/// A child process, killed if the test ends first (its directory is about to go).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn child(role: &str, dir: &Path) -> Killed {
    let exe = std::env::current_exe().expect("current_exe");
    Command::new(exe)
        .env(ROLE, role)
        .env(DIR, dir)
        .args([
            "--exact",
            "child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Killed)
        .expect("spawn child")
}

/// The child's side: plays `ROLE` (nothing when run as an ordinary test).
#[test]
#[ignore = "a child process of the other tests"]
fn child_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var_os(DIR).expect("P11GATE_STORE_DIR"));
    match role.as_str() {
        "crash" => crash_writer(&dir),
        writer => bulk_writer(&dir, writer, 500),
    }
}

/// Object `id`'s content in the crash test: its id, a varying length.
fn crash_record(id: u64) -> Vec<u8> {
    format!("object {id};")
        .repeat((id % 37 + 1) as usize)
        .into_bytes()
}

fn bulk_record(writer: &str, n: u64, id: u64) -> Vec<u8> {
    format!("{writer} {n} {id};")
        .repeat((n % 11 + 1) as usize)
        .into_bytes()
}

/// Writes until killed. Each line is printed only once what it says is durable:
/// `PUT id`, `DEL id` (the object is gone), `META id` (the meta blob is `meta <id>`).
fn crash_writer(dir: &Path) -> ! {
    let store = Store::open(dir).expect("open");
    println!("{MARK}READY");
    loop {
        let lock = store.lock().expect("lock");
        let id = store.next_id(&lock).expect("next_id");
        store.put_object(&lock, id, &crash_record(id)).expect("put");
        let mut lines = vec![format!("PUT {id}")];
        if id.is_multiple_of(4) {
            // Perhaps never written (a kill between next_id and put): deleting it is no error.
            store.delete_object(&lock, id - 1).expect("delete");
            lines.push(format!("DEL {}", id - 1));
        }
        if id.is_multiple_of(5) {
            store
                .set_meta(&lock, format!("meta {id}").as_bytes())
                .expect("meta");
            lines.push(format!("META {id}"));
        }
        drop(lock);
        // One write(2) per line, so a kill never leaves half a line in the pipe.
        for line in lines {
            println!("{MARK}{line}");
        }
    }
}

fn bulk_writer(dir: &Path, writer: &str, count: u64) {
    let store = Store::open(dir).expect("open");
    for n in 0..count {
        let lock = store.lock().expect("lock");
        let id = store.next_id(&lock).expect("next_id");
        store
            .put_object(&lock, id, &bulk_record(writer, n, id))
            .expect("put");
        drop(lock);
        println!("{MARK}ID {n} {id}");
    }
}

/// Reads a child's messages (what follows `MARK`) on a thread. Only whole lines count: a line
/// without its newline would have been cut by the kill (`println!`'s one write makes that
/// impossible, but it is not trusted).
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            let message = line
                .strip_suffix('\n')
                .and_then(|whole| whole.split_once(MARK))
                .map(|(_, message)| message.to_string());
            if let Some(message) = message {
                if tx.send(message).is_err() {
                    break;
                }
            }
            line.clear();
        }
    });
    rx
}

/// xorshift64: enough randomness for kill delays.
struct Rng(u64);

impl Rng {
    fn from_time() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn snapshot(dir: &Path, after: &str) -> Snapshot {
    let store = Store::open(dir).unwrap_or_else(|e| panic!("open after {after}: {e}"));
    store
        .snapshot()
        .unwrap_or_else(|e| panic!("snapshot after {after}: {e}"))
}

#[test]
fn killed_writer_leaves_a_loadable_store_with_every_acknowledged_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("token");
    let seed = Rng::from_time().0;
    let mut rng = Rng(seed);
    let mut put = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    let mut meta = None;
    let started = Instant::now();
    let (mut during_startup, mut writing) = (0, 0);
    let mut reader: Option<Store> = None;
    let mut concurrent_reads = 0;
    for kill in 0..KILLS {
        let mut writer = child("crash", &dir);
        let rx = lines(&mut writer.0);
        let delay = Duration::from_micros(rng.next() % 20_001);
        if kill % 10 == 0 {
            // Sometimes from the start: the kill may land in Store::open (on the first round,
            // while it creates the store).
            during_startup += 1;
        } else {
            let ready = rx.recv_timeout(Duration::from_secs(20));
            assert_eq!(ready.as_deref(), Ok("READY"), "seed {seed}");
            writing += 1;
        }
        match &reader {
            // Every other round, read while the writer writes: each snapshot is whole.
            Some(reader) if kill % 2 == 1 => {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    let snap = reader
                        .snapshot()
                        .unwrap_or_else(|e| panic!("snapshot while writing (seed {seed}): {e}"));
                    for (id, record) in &snap.objects {
                        assert_eq!(*record, crash_record(*id), "object {id} while writing");
                    }
                    concurrent_reads += 1;
                }
            }
            _ => std::thread::sleep(delay),
        }
        writer.0.kill().unwrap();
        writer.0.wait().unwrap();
        for line in rx.iter() {
            let mut words = line.split(' ');
            let (what, id) = (
                words.next(),
                words.next().and_then(|w| w.parse::<u64>().ok()),
            );
            match (what, id) {
                (Some("PUT"), Some(id)) => assert!(put.insert(id), "id {id} given twice"),
                (Some("DEL"), Some(id)) => {
                    deleted.insert(id);
                }
                (Some("META"), Some(id)) => meta = Some(id),
                _ => {} // READY
            }
        }

        let after = format!("kill {kill} (seed {seed})");
        let snap = snapshot(&dir, &after);
        if reader.is_none() {
            // Opened after the first round, which may have been killed creating the store.
            reader = Some(Store::open(&dir).unwrap());
        }
        let present: BTreeMap<u64, &Vec<u8>> = snap.objects.iter().map(|(i, r)| (*i, r)).collect();
        for (id, record) in &present {
            assert_eq!(**record, crash_record(*id), "object {id} after {after}");
            assert!(
                !deleted.contains(id),
                "deleted object {id} is back after {after}"
            );
        }
        // Objects 3, 7, 11, ... may be deleted by a writer killed before it said so.
        for id in put.difference(&deleted).filter(|id| *id % 4 != 3) {
            assert!(
                present.contains_key(id),
                "acknowledged object {id} lost after {after}"
            );
        }
        if let Some(acked) = meta {
            let text = String::from_utf8(snap.meta.clone().expect("meta")).unwrap();
            let now: u64 = text.strip_prefix("meta ").unwrap().parse().unwrap();
            assert!(
                now >= acked,
                "meta {now} older than acknowledged {acked} after {after}"
            );
        }
    }
    let took = started.elapsed();
    let snap = snapshot(&dir, "the last kill");
    eprintln!(
        "{KILLS} kills ({writing} while writing, {during_startup} from start-up) in {took:?}, \
         {concurrent_reads} snapshots taken while the writer ran: \
         {} puts acknowledged, {} deletes, {} objects in the store (highest id {}), seed {seed}",
        put.len(),
        deleted.len(),
        snap.objects.len(),
        snap.objects.last().map_or(0, |o| o.0)
    );
    assert!(!put.is_empty(), "no put was ever acknowledged");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".tmp-")),
        "temp files left after a snapshot: {names:?}"
    );
}

#[test]
fn two_processes_writing_at_once_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("token");
    let started = Instant::now();
    let mut writers: Vec<(&str, Killed)> = ["writer-a", "writer-b"]
        .into_iter()
        .map(|w| (w, child(w, &dir)))
        .collect();
    let outputs: Vec<(&str, mpsc::Receiver<String>)> = writers
        .iter_mut()
        .map(|(w, c)| (*w, lines(&mut c.0)))
        .collect();
    for (w, c) in &mut writers {
        assert!(c.0.wait().unwrap().success(), "{w} failed");
    }
    let mut expected = BTreeMap::new();
    let mut order = Vec::new();
    for (w, rx) in outputs {
        let mut n_seen = 0;
        for line in rx.iter() {
            let Some(rest) = line.strip_prefix("ID ") else {
                continue;
            };
            let (n, id) = rest.split_once(' ').unwrap();
            let (n, id): (u64, u64) = (n.parse().unwrap(), id.parse().unwrap());
            assert!(
                expected.insert(id, bulk_record(w, n, id)).is_none(),
                "id {id} given twice"
            );
            order.push((id, w));
            n_seen += 1;
        }
        assert_eq!(n_seen, 500, "{w}");
    }
    let snap = snapshot(&dir, "both writers");
    assert_eq!(snap.objects.len(), 1000);
    let got: BTreeMap<u64, Vec<u8>> = snap.objects.into_iter().collect();
    assert_eq!(got, expected);
    // How interleaved the two were (for the report; flock gives no fairness guarantee).
    order.sort_unstable();
    let switches = order.windows(2).filter(|p| p[0].1 != p[1].1).count();
    eprintln!(
        "two writers, 1,000 puts in {:?}, {switches} hand-overs between them",
        started.elapsed()
    );
}
