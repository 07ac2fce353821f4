//! The rsyslogd fixture the audit tests rely on (`tests/common/rsyslog.rs`), tested on its own
//! with plain datagrams: what is sent arrives in `out.log` on one line, intact and parsed; a
//! stopped or killed daemon refuses datagrams; a restarted one takes them again and appends.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::rsyslog::{Rsyslog, SyslogLine};

const WAIT: Duration = Duration::from_secs(10);

fn message(n: u32) -> String {
    format!(
        "<86>1 2026-11-28T23:06:01.123456Z fixture-host p11gate 4242 audit - event=call rec={n} \
         key_label=\"a b\\\"c\" fn=C_Encrypt"
    )
}

fn msgs(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| SyslogLine::parse(l))
        .filter(|l| l.app_name == "p11gate")
        .map(|l| l.msg)
        .collect()
}

fn has_rec(lines: &[String], n: u32) -> bool {
    let want = format!("event=call rec={n} key_label=\"a b\\\"c\" fn=C_Encrypt");
    msgs(lines).contains(&want)
}

#[test]
fn rsyslog_writes_each_datagram_on_one_line_and_survives_stop_kill_restart() {
    let mut r = Rsyslog::start();
    assert!(r.socket().exists());

    r.send(&message(1)).expect("send to rsyslogd");
    let lines = r.wait_for(WAIT, "message 1", |l| has_rec(l, 1));
    let ours: Vec<SyslogLine> = lines
        .iter()
        .filter_map(|l| SyslogLine::parse(l))
        .filter(|l| l.app_name == "p11gate")
        .collect();
    assert_eq!(ours.len(), 1, "{lines:#?}");
    assert_eq!(ours[0].pri, 86);
    assert_eq!(ours[0].hostname, "fixture-host");
    assert_eq!(ours[0].procid, "4242");
    assert_eq!(ours[0].msgid, "audit");
    assert_eq!(ours[0].structured_data, "-");
    assert_eq!(
        ours[0].msg,
        "event=call rec=1 key_label=\"a b\\\"c\" fn=C_Encrypt"
    );

    // SIGTERM: the daemon exits and removes its socket; nothing can be sent.
    let pid = r.pid().unwrap();
    r.stop();
    assert!(!r.is_running());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "rsyslogd {pid} still exists after stop"
    );
    assert!(
        !r.socket().exists(),
        "rsyslogd removes its socket on SIGTERM"
    );
    let err = r.send(&message(2)).expect_err("send while stopped");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    r.restart();
    for n in 3..=102 {
        r.send(&message(n)).expect("send after restart");
    }
    let lines = r.wait_for(WAIT, "messages 3..=102", |l| {
        (3..=102).all(|n| has_rec(l, n))
    });
    assert!(has_rec(&lines, 1), "out.log is appended to, not replaced");
    assert!(!has_rec(&lines, 2));

    // SIGKILL: the socket file stays, unbound, and refuses datagrams.
    let pid = r.pid().unwrap();
    r.kill();
    assert!(!r.is_running());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        r.socket().exists(),
        "a killed rsyslogd leaves its socket file"
    );
    let err = r.send(&message(103)).expect_err("send while killed");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    r.restart();
    r.send(&message(104)).expect("send after second restart");
    let lines = r.wait_for(WAIT, "message 104", |l| has_rec(l, 104));
    assert!(!has_rec(&lines, 103));
    // Each message exactly once: 1, 3..=102, 104.
    assert_eq!(msgs(&lines).len(), 1 + 100 + 1, "{lines:#?}");

    // Killed while stopped with datagrams queued: the queued ones are lost, the fixture's
    // process is gone, and a restart works.
    let pid = r.pid().unwrap();
    let socket = r.socket();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
        for n in 105..110 {
            s.send_to(message(n).as_bytes(), &socket)
                .expect("a stopped daemon's socket still queues datagrams");
        }
    });
    r.kill_after_stop(Duration::from_millis(300));
    sender.join().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    r.restart();
    r.send(&message(110)).expect("send after third restart");
    let lines = r.wait_for(WAIT, "message 110", |l| has_rec(l, 110));
    for n in 105..110 {
        assert!(
            !has_rec(&lines, n),
            "datagram {n}, queued unread, died with the daemon"
        );
    }
}

#[test]
fn dropping_the_fixture_kills_the_daemon() {
    let r = Rsyslog::start();
    let pid = r.pid().unwrap();
    let dir = r.dir().to_path_buf();
    drop(r);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists(), "the temporary directory is removed");
}

/// Under a steady stream, `kill` loses only datagrams still queued unread in the socket (at most
/// the kernel's `max_dgram_qlen`), never one the daemon had read: what reached `out.log` is
/// exactly the first W datagrams sent.
#[test]
fn kill_under_load_loses_only_the_unread_tail() {
    let qlen: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
        .expect("max_dgram_qlen")
        .trim()
        .parse()
        .unwrap();
    let mut r = Rsyslog::start();
    let socket = r.socket();
    let sender = std::thread::spawn(move || {
        let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
        s.connect(&socket).unwrap();
        let mut sent = 0u32;
        for n in 1..=200_000u32 {
            match s.send(message(n).as_bytes()) {
                Ok(_) => sent = n,
                Err(_) => break,
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(150));
    r.kill_after_stop(Duration::from_millis(50));
    let sent = sender.join().unwrap() as usize;
    assert!(sent > 100, "the sender got going ({sent} sent)");
    assert!(sent < 200_000, "the kill interrupted the stream");
    let lines = r.lines();
    let recs: Vec<usize> = msgs(&lines)
        .iter()
        .map(|m| {
            m.strip_prefix("event=call rec=")
                .and_then(|r| r.split(' ').next())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let written = recs.len();
    assert_eq!(
        recs,
        (1..=written).collect::<Vec<_>>(),
        "out.log holds a prefix of the stream, each datagram once"
    );
    assert!(
        sent - written <= qlen + 1,
        "{sent} sent, {written} written: more lost than the socket queue ({qlen}) can hold"
    );
}
