//! Records as text: `key=value` pairs (syslog) and JSON object members (the file sink).
//!
//! Both come from one walk over a record's fields ([`walk`]), so the two sinks always carry the
//! same fields in the same order. Values that come from applications (labels) are escaped: a
//! label cannot start a new line or a new field. An object's PKCS#11 URI (`key_uri`,
//! `object_uri`) is made here, on the writer thread, from what the record and the key cache
//! hold; percent-encoded, it has no space, quote, backslash or control character to escape.

use std::fmt::Write as _;

use pkcs11_sys::*;

use super::keys::KeyInfo;
use super::record::{ObjectRef, Record};
use crate::names::{attribute_name, class_name, mechanism_name, rv_name};

/// Who wrote a record: constant for one process.
#[derive(Debug, Clone)]
pub struct Origin {
    pub host: String,
    pub pid: u32,
}

/// Something that takes a record's fields in order.
pub trait Fields {
    fn text(&mut self, key: &str, value: &str);
    fn number(&mut self, key: &str, value: u64);
}

/// Feeds `r`'s fields, with its origin and record number, to `out`.
pub fn walk(r: &Record, origin: &Origin, rec: u64, out: &mut dyn Fields) {
    let mut buf = String::new();
    out.text("event", r.event.name());
    buf.clear();
    push_rfc3339(&mut buf, r.time_us);
    out.text("time", &buf);
    out.text("host", &origin.host);
    out.number("pid", u64::from(origin.pid));
    out.number("rec", rec);
    out.text("app", &r.app);
    if let Some(f) = r.function {
        out.text("fn", f);
    }
    if let Some(rv) = r.rv {
        out.text("rv", rv_text(rv, &mut buf));
    }
    if let Some(us) = r.duration_us {
        out.number("us", us);
    }
    let token = r.slot.as_ref().and_then(|s| s.entry.token_label(s.id));
    if let Some(s) = &r.slot {
        out.number("slot", s.id);
        out.text("upstream", s.upstream);
        if let Some(label) = &token {
            out.text("token", label);
        }
    } else if let Some(u) = &r.upstream {
        out.text("upstream", u);
    }
    if let Some(s) = r.session {
        out.number("session", s);
    }
    if let Some(u) = r.user {
        out.text(
            "user",
            match u {
                CKU_SO => "CKU_SO",
                CKU_USER => "CKU_USER",
                CKU_CONTEXT_SPECIFIC => "CKU_CONTEXT_SPECIFIC",
                other => number_text(other, &mut buf),
            },
        );
    }
    if let Some(m) = r.mechanism {
        match mechanism_name(m) {
            Some(n) => out.text("mech", n),
            None => out.text("mech", hex_number(m, &mut buf)),
        }
    }
    if let Some(k) = &r.key {
        object(out, r, "key", k, token.as_deref(), &mut buf);
    }
    if let Some(o) = &r.object {
        object(out, r, "object", o, token.as_deref(), &mut buf);
    }
    if let Some(p) = r.public {
        out.number("public", p);
    }
    for (k, v) in [("in", r.bytes_in), ("out", r.bytes_out), ("parts", r.parts)] {
        if let Some(v) = v {
            out.number(k, v);
        }
    }
    if let Some(attrs) = &r.attrs {
        buf.clear();
        for (i, a) in attrs.iter().enumerate() {
            if i > 0 {
                buf.push(',');
            }
            match attribute_name(*a) {
                Some(n) => buf.push_str(n),
                None => {
                    let _ = write!(buf, "{a:#x}");
                }
            }
        }
        out.text("attrs", &buf);
    }
    if let Some(rw) = r.rw {
        out.text("rw", if rw { "true" } else { "false" });
    }
    if let Some(rule) = &r.refused {
        out.text("refused", rule);
    }
    if let Some(e) = r.ended {
        out.text("ended", e);
    }
    if let Some(c) = r.count {
        out.number("count", c);
    }
    if let Some(s) = r.sink {
        out.text("sink", s);
    }
    if let Some(s) = r.since_us {
        out.text("since", &rfc3339(s));
    }
    if let Some(d) = r.delayed {
        out.number("delayed", d);
    }
    if let Some(d) = r.denied {
        out.number("denied", d);
    }
    if let Some(p) = &r.path {
        out.text("path", p);
    }
    if let Some(m) = &r.msg {
        out.text("msg", m);
    }
}

fn object(
    out: &mut dyn Fields,
    r: &Record,
    prefix: &str,
    o: &ObjectRef,
    token: Option<&str>,
    buf: &mut String,
) {
    // Handle 0 (CK_INVALID_HANDLE) stands for "no object yet": what a search looks for.
    if o.handle != CK_INVALID_HANDLE {
        out.number(prefix, o.handle);
    }
    let cached;
    let info: Option<&KeyInfo> = match &o.info {
        Some(i) => Some(i),
        None => {
            cached = r
                .keys
                .and_then(|(cache, backend)| cache.get(backend, o.handle));
            cached.as_deref()
        }
    };
    let Some(info) = info else { return };
    let (label, id, class, uri) = if prefix == "key" {
        ("key_label", "key_id", "key_class", "key_uri")
    } else {
        ("object_label", "object_id", "object_class", "object_uri")
    };
    if let Some(l) = &info.label {
        out.text(label, l);
    }
    if let Some(bytes) = &info.id {
        buf.clear();
        push_hex(buf, bytes);
        out.text(id, buf);
    }
    if let Some(c) = info.class {
        match class_name(c) {
            Some(n) => out.text(class, n),
            None => out.text(class, hex_number(c, buf)),
        }
    }
    buf.clear();
    crate::uri::push_object_uri(
        buf,
        token,
        info.label.as_deref(),
        info.id.as_deref(),
        info.class,
    );
    if !buf.is_empty() {
        out.text(uri, buf);
    }
}

fn rv_text(rv: CK_RV, buf: &mut String) -> &str {
    match rv_name(rv) {
        "CKR_VENDOR_DEFINED" | "CKR_UNKNOWN" => hex_number(rv, buf),
        name => name,
    }
}

fn hex_number(v: u64, buf: &mut String) -> &str {
    buf.clear();
    let _ = write!(buf, "{v:#x}");
    buf
}

fn number_text(v: u64, buf: &mut String) -> &str {
    buf.clear();
    let _ = write!(buf, "{v}");
    buf
}

/// `key=value` pairs separated by spaces, for syslog, appended to what the string holds
/// already (a syslog header).
#[derive(Debug, Default)]
pub struct KeyValue {
    pub text: String,
    fields: usize,
}

impl KeyValue {
    /// Pairs appended after `prefix`.
    pub fn after(prefix: String) -> KeyValue {
        KeyValue {
            text: prefix,
            fields: 0,
        }
    }
}

impl Fields for KeyValue {
    fn text(&mut self, key: &str, value: &str) {
        self.start(key);
        // Plain ASCII without separators goes in as it is (checked bytewise: the usual case);
        // anything else is quoted, with control characters (C0 and C1) escaped.
        let plain = !value.is_empty()
            && value
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b) && !matches!(b, b'"' | b'=' | b'\\'));
        if plain {
            self.text.push_str(value);
            return;
        }
        self.text.push('"');
        // Runs that need no escape go in whole (a URI is one run).
        let mut run = 0;
        for (at, c) in value.char_indices() {
            // `None`: a control character, escaped byte by byte.
            let escape = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                c if c.is_control() => None,
                _ => continue,
            };
            self.text.push_str(&value[run..at]);
            run = at + c.len_utf8();
            match escape {
                Some(e) => self.text.push_str(e),
                None => {
                    let mut bytes = [0u8; 4];
                    for b in c.encode_utf8(&mut bytes).bytes() {
                        self.text.push_str("\\x");
                        push_hex(&mut self.text, &[b]);
                    }
                }
            }
        }
        self.text.push_str(&value[run..]);
        self.text.push('"');
    }

    fn number(&mut self, key: &str, value: u64) {
        self.start(key);
        push_u64(&mut self.text, value);
    }
}

impl KeyValue {
    fn start(&mut self, key: &str) {
        if self.fields > 0 {
            self.text.push(' ');
        }
        self.fields += 1;
        self.text.push_str(key);
        self.text.push('=');
    }
}

/// JSON object members (`"key":value,...`), without the braces.
#[derive(Debug, Default)]
pub struct JsonMembers(pub String);

impl Fields for JsonMembers {
    fn text(&mut self, key: &str, value: &str) {
        self.start(key);
        json_string(&mut self.0, value);
    }

    fn number(&mut self, key: &str, value: u64) {
        self.start(key);
        push_u64(&mut self.0, value);
    }
}

impl JsonMembers {
    fn start(&mut self, key: &str) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        json_string(&mut self.0, key);
        self.0.push(':');
    }
}

/// Appends `s` as a JSON string.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    // Runs that need no escape go in whole; only ASCII bytes are ever escaped.
    let mut run = 0;
    for (at, b) in s.bytes().enumerate() {
        // `None`: another control character, as `\u00XX`.
        let escape = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..0x20 | 0x7f => None,
            _ => continue,
        };
        out.push_str(&s[run..at]);
        run = at + 1;
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// RFC 3339 in UTC with microseconds: `2026-11-28T23:06:01.123456Z`.
pub fn rfc3339(micros: u64) -> String {
    let mut out = String::with_capacity(27);
    push_rfc3339(&mut out, micros);
    out
}

/// Appends [`rfc3339`]'s text (records are formatted often: no `format!` machinery).
pub fn push_rfc3339(out: &mut String, micros: u64) {
    let secs = micros / 1_000_000;
    // Records come in bursts within one second: the date and time up to the second are
    // remembered per thread.
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            push_seconds(&mut cached.1, secs);
            cached.0 = secs;
        }
        out.push_str(&cached.1);
    });
    out.push('.');
    push_digits(out, micros % 1_000_000, 6);
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time.
fn push_seconds(out: &mut String, secs: u64) {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    push_digits(out, y.max(0) as u64, 4);
    out.push('-');
    push_digits(out, u64::from(m), 2);
    out.push('-');
    push_digits(out, u64::from(d), 2);
    out.push('T');
    push_digits(out, rest / 3600, 2);
    out.push(':');
    push_digits(out, rest / 60 % 60, 2);
    out.push(':');
    push_digits(out, rest % 60, 2);
}

/// Appends `v` with at least `width` digits (zero-padded).
fn push_digits(out: &mut String, mut v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while v > 0 || digits.len() - i < width {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    for &b in &digits[i..] {
        out.push(b as char);
    }
}

/// Appends a decimal number.
pub fn push_u64(out: &mut String, v: u64) {
    push_digits(out, v, 1);
}

/// Appends bytes as lowercase hex.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// The traditional syslog timestamp (`Nov 28 23:06:01`, UTC).
pub fn rfc3164_time(micros: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = micros / 1_000_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (_, m, d) = civil_from_days(days as i64);
    format!(
        "{} {d:2} {:02}:{:02}:{:02}",
        MONTHS[(m - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Event;
    use std::sync::Arc;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-28T23:06:01.123456Z
        assert_eq!(
            rfc3339(1_795_907_161_123_456),
            "2026-11-28T23:06:01.123456Z"
        );
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3164_time(1_795_907_161_123_456), "Nov 28 23:06:01");
        assert_eq!(rfc3164_time(1_767_225_600_000_000), "Jan  1 00:00:00");
    }

    fn sample() -> Record {
        Record {
            event: Event::Call,
            time_us: 1_795_907_161_123_456,
            app: "vault-1".into(),
            function: Some("C_Encrypt"),
            rv: Some(CKR_OK),
            duration_us: Some(41),
            session: Some(262_145),
            mechanism: Some(CKM_AES_GCM),
            key: Some(ObjectRef {
                handle: 2,
                info: Some(Arc::new(KeyInfo {
                    label: Some("my \"key\"\n fn=C_Login".into()),
                    id: Some(vec![0x31, 0x32].into_boxed_slice()),
                    class: Some(CKO_SECRET_KEY),
                })),
            }),
            bytes_in: Some(32),
            bytes_out: Some(48),
            parts: Some(1),
            ..Record::default()
        }
    }

    fn origin() -> Origin {
        Origin {
            host: "vault1".into(),
            pid: 4242,
        }
    }

    #[test]
    fn key_value_text_escapes_what_applications_choose() {
        let mut kv = KeyValue::default();
        walk(&sample(), &origin(), 17, &mut kv);
        assert_eq!(
            kv.text,
            "event=call time=2026-11-28T23:06:01.123456Z host=vault1 pid=4242 rec=17 \
             app=vault-1 fn=C_Encrypt rv=CKR_OK us=41 session=262145 mech=CKM_AES_GCM key=2 \
             key_label=\"my \\\"key\\\"\\x0a fn=C_Login\" key_id=3132 \
             key_class=CKO_SECRET_KEY \
             key_uri=\"pkcs11:object=my%20%22key%22%0A%20fn=C_Login;type=secret-key;id=%31%32\" \
             in=32 out=48 parts=1"
        );
    }

    #[test]
    fn json_members_parse_back() {
        let mut j = JsonMembers::default();
        walk(&sample(), &origin(), 17, &mut j);
        let v: serde_json::Value = serde_json::from_str(&format!("{{{}}}", j.0)).unwrap();
        assert_eq!(v["key_label"], "my \"key\"\n fn=C_Login");
        assert_eq!(
            v["key_uri"],
            "pkcs11:object=my%20%22key%22%0A%20fn=C_Login;type=secret-key;id=%31%32"
        );
        assert_eq!(v["rec"], 17);
        assert_eq!(v["out"], 48);
        assert_eq!(v["rv"], "CKR_OK");
        assert!(j.0.starts_with("\"event\":\"call\",\"time\":"));
    }

    #[test]
    fn object_uris_name_the_token_and_only_known_objects() {
        use crate::audit::record::SlotRef;
        use crate::router::slots::SlotEntry;
        let entry: &'static SlotEntry = Box::leak(Box::new(SlotEntry::new(
            1,
            0,
            Some(crate::config::TokenTarget::Label("vault a".into())),
            crate::policy::SlotPolicy::default(),
            None,
        )));
        let known = |label: Option<&str>, id: Option<&[u8]>, class| ObjectRef {
            handle: 9,
            info: Some(Arc::new(KeyInfo {
                label: label.map(Into::into),
                id: id.map(|i| i.to_vec().into_boxed_slice()),
                class,
            })),
        };
        let r = Record {
            function: Some("C_WrapKey"),
            slot: Some(SlotRef {
                id: 1,
                upstream: "hsm",
                entry,
            }),
            key: Some(known(Some("kek"), None, Some(CKO_SECRET_KEY))),
            object: Some(known(None, Some(&[0xff, 0x00]), None)),
            ..Record::default()
        };
        let mut kv = KeyValue::default();
        walk(&r, &origin(), 1, &mut kv);
        assert!(
            kv.text.ends_with(
                "fn=C_WrapKey slot=1 upstream=hsm token=\"vault a\" key=9 key_label=kek \
                 key_class=CKO_SECRET_KEY key_uri=\"pkcs11:token=vault%20a;object=kek;type=secret-key\" \
                 object=9 object_id=ff00 object_uri=\"pkcs11:token=vault%20a;id=%FF%00\""
            ),
            "{}",
            kv.text
        );
        // Only a class known: that names a kind of object, not the object: no URI.
        let r = Record {
            object: Some(known(None, None, Some(CKO_DATA))),
            ..Record::default()
        };
        let mut j = JsonMembers::default();
        walk(&r, &origin(), 1, &mut j);
        assert!(
            j.0.ends_with("\"object\":9,\"object_class\":\"CKO_DATA\""),
            "{}",
            j.0
        );
    }

    #[test]
    fn escapes_cover_quotes_backslashes_and_controls() {
        let value = "a\"b\\c\nd\re\tf\u{1}g\u{7f}h\u{e9}\u{85}i";
        let mut json = String::new();
        json_string(&mut json, value);
        assert_eq!(
            json,
            "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u007fh\u{e9}\u{85}i\""
        );
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), value);
        let mut kv = KeyValue::default();
        kv.text("k", value);
        assert_eq!(
            kv.text,
            "k=\"a\\\"b\\\\c\\x0ad\\x0de\\x09f\\x01g\\x7fh\u{e9}\\xc2\\x85i\""
        );
    }

    #[test]
    fn unnamed_values_are_hex() {
        let r = Record {
            rv: Some(0x8000_0001),
            mechanism: Some(0x8000_1234),
            ..Record::default()
        };
        let mut kv = KeyValue::default();
        walk(&r, &origin(), 1, &mut kv);
        assert!(
            kv.text.ends_with("app=\"\" rv=0x80000001 mech=0x80001234"),
            "{}",
            kv.text
        );
    }
}
