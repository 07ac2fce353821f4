//! PKCS#11 URIs (RFC 7512): `pkcs11:token=vault;serial=4f2a?pin-source=file:/etc/pin`.
//!
//! One way to name a library, slot, token or object wherever p11gate names one: slot targets in
//! the configuration, `p11gate` arguments, audit records. The parser is strict: anything the
//! RFC's grammar does not produce is an error that says what is wrong and at which character,
//! so that a typo never silently names another token (or none).
//!
//! - Path attributes (before `?`) say *which* thing: `token`, `manufacturer`, `serial`, `model`,
//!   `library-manufacturer`, `library-description`, `library-version`, `slot-description`,
//!   `slot-manufacturer`, `slot-id`, `object`, `type`, `id`. Query attributes (after `?`) say
//!   *how* to get at it: `pin-source`, `pin-value`, `module-name`, `module-path`.
//! - Any other name made of letters, digits, `-` and `_` is, in the RFC's grammar, a
//!   vendor-specific attribute (the older `x-` prefix is one such name): it is kept, in order.
//!   A name with other characters is refused, and so is a standard name in the wrong
//!   component or in upper case. The RFC says that a URI whose path holds an attribute its
//!   consumer does not understand matches nothing, so here a URI with a vendor path attribute
//!   matches nothing, and where p11gate takes a URI from a person (configuration, command
//!   line) it is refused with the reason ([`Pkcs11Uri::check_understood`]): it is most likely a
//!   typo.
//! - Each attribute may appear once (vendor query attributes may repeat: their meaning is the
//!   vendor's). Values are percent-decoded bytes: `%XX` may stand for any byte (binary ids).
//! - [`Pkcs11Uri::canonical`] writes attributes in one fixed order, percent-encodes exactly the
//!   characters the grammar does not allow as they are, and always encodes `id` byte by byte.
//!
//! A `pin-value` is a secret: it is wiped on drop, and neither `Debug`, `Display` nor an error
//! message shows it.

use std::fmt;

use pkcs11_sys::*;
use zeroize::Zeroize;

/// The URI scheme, with its separator. Schemes are case-insensitive (RFC 3986 §3.1).
const SCHEME: &str = "pkcs11:";

/// The attributes RFC 7512 defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    Token,
    Manufacturer,
    Serial,
    Model,
    LibraryManufacturer,
    LibraryDescription,
    LibraryVersion,
    SlotDescription,
    SlotManufacturer,
    SlotId,
    Object,
    Type,
    Id,
    PinSource,
    PinValue,
    ModuleName,
    ModulePath,
}

/// How many attributes RFC 7512 defines.
const ATTRS: usize = 17;

impl Attr {
    /// Every attribute, path ones first, in the order [`Pkcs11Uri::canonical`] writes them.
    pub const ALL: [Attr; ATTRS] = [
        Attr::Token,
        Attr::Manufacturer,
        Attr::Serial,
        Attr::Model,
        Attr::LibraryManufacturer,
        Attr::LibraryDescription,
        Attr::LibraryVersion,
        Attr::SlotDescription,
        Attr::SlotManufacturer,
        Attr::SlotId,
        Attr::Object,
        Attr::Type,
        Attr::Id,
        Attr::PinSource,
        Attr::PinValue,
        Attr::ModuleName,
        Attr::ModulePath,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attr::Token => "token",
            Attr::Manufacturer => "manufacturer",
            Attr::Serial => "serial",
            Attr::Model => "model",
            Attr::LibraryManufacturer => "library-manufacturer",
            Attr::LibraryDescription => "library-description",
            Attr::LibraryVersion => "library-version",
            Attr::SlotDescription => "slot-description",
            Attr::SlotManufacturer => "slot-manufacturer",
            Attr::SlotId => "slot-id",
            Attr::Object => "object",
            Attr::Type => "type",
            Attr::Id => "id",
            Attr::PinSource => "pin-source",
            Attr::PinValue => "pin-value",
            Attr::ModuleName => "module-name",
            Attr::ModulePath => "module-path",
        }
    }

    fn from_name(name: &[u8]) -> Option<Attr> {
        Attr::ALL.into_iter().find(|a| a.name().as_bytes() == name)
    }

    /// Query attributes come after `?`; the others are path attributes.
    pub fn is_query(self) -> bool {
        matches!(
            self,
            Attr::PinSource | Attr::PinValue | Attr::ModuleName | Attr::ModulePath
        )
    }

    /// The attributes that describe an object (rather than where it is).
    pub fn is_object(self) -> bool {
        matches!(self, Attr::Object | Attr::Type | Attr::Id)
    }

    /// The longest value a CK_TOKEN_INFO / CK_SLOT_INFO / CK_INFO field can hold, for the
    /// attributes compared with one (a longer value can never match).
    pub fn field_len(self) -> Option<usize> {
        match self {
            Attr::Token
            | Attr::Manufacturer
            | Attr::LibraryManufacturer
            | Attr::LibraryDescription
            | Attr::SlotManufacturer => Some(32),
            Attr::Serial | Attr::Model => Some(16),
            Attr::SlotDescription => Some(64),
            _ => None,
        }
    }

    fn index(self) -> usize {
        Attr::ALL
            .iter()
            .position(|a| *a == self)
            .unwrap_or_default()
    }
}

/// The object types of the `type` attribute, and the classes they stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Public,
    Private,
    Cert,
    SecretKey,
    Data,
}

impl ObjectType {
    pub const ALL: [ObjectType; 5] = [
        ObjectType::Public,
        ObjectType::Private,
        ObjectType::Cert,
        ObjectType::SecretKey,
        ObjectType::Data,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ObjectType::Public => "public",
            ObjectType::Private => "private",
            ObjectType::Cert => "cert",
            ObjectType::SecretKey => "secret-key",
            ObjectType::Data => "data",
        }
    }

    pub fn class(self) -> CK_OBJECT_CLASS {
        match self {
            ObjectType::Public => CKO_PUBLIC_KEY,
            ObjectType::Private => CKO_PRIVATE_KEY,
            ObjectType::Cert => CKO_CERTIFICATE,
            ObjectType::SecretKey => CKO_SECRET_KEY,
            ObjectType::Data => CKO_DATA,
        }
    }

    /// The type of a class; `None` for the classes RFC 7512 has no name for.
    pub fn of_class(class: CK_OBJECT_CLASS) -> Option<ObjectType> {
        ObjectType::ALL.into_iter().find(|t| t.class() == class)
    }

    fn from_name(name: &[u8]) -> Option<ObjectType> {
        ObjectType::ALL
            .into_iter()
            .find(|t| t.name().as_bytes() == name)
    }
}

/// A parsed PKCS#11 URI: attribute values as percent-decoded bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The standard attributes given, in canonical order (so that equal URIs compare equal).
    values: Vec<(Attr, Vec<u8>)>,
    /// Vendor attributes of the path, in the order given.
    vendor_path: Vec<(String, Vec<u8>)>,
    /// Vendor attributes of the query, in the order given.
    vendor_query: Vec<(String, Vec<u8>)>,
}

impl Drop for Pkcs11Uri {
    fn drop(&mut self) {
        for (attr, value) in &mut self.values {
            if *attr == Attr::PinValue {
                value.zeroize();
            }
        }
    }
}

/// What is wrong with a URI, and where: the 1-based character position in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid PKCS#11 URI at character {}: {}",
            self.position, self.message
        )
    }
}

impl std::error::Error for UriError {}

/// Which component an attribute stands in: they allow different characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Path,
    Query,
}

/// What may stand unencoded in a value: `pk11-pchar` / `pk11-qchar` without `pct-encoded`.
fn is_plain(b: u8, component: Component) -> bool {
    match component {
        Component::Path => PLAIN_IN_PATH[usize::from(b)],
        Component::Query => PLAIN_IN_QUERY[usize::from(b)],
    }
}

/// [`is_plain`] as tables: audit records encode a URI or two each, on the writer thread.
const PLAIN_IN_PATH: [bool; 256] = plain_table(b"&");
const PLAIN_IN_QUERY: [bool; 256] = plain_table(b"/?|");

const fn plain_table(extra: &[u8]) -> [bool; 256] {
    // RFC 3986 unreserved, RFC 7512 pk11-res-avail, and the component's own.
    const RES_AVAIL: &[u8] = b"-._~:[]@!$'()*+,=";
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < RES_AVAIL.len() {
        table[RES_AVAIL[i] as usize] = true;
        i += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Pkcs11Uri {
    /// Parses `text`, which must be a whole PKCS#11 URI.
    pub fn parse(text: &str) -> Result<Pkcs11Uri, UriError> {
        let err = |at: usize, message: String| UriError {
            position: text.char_indices().take_while(|(i, _)| *i < at).count() + 1,
            message,
        };
        let bytes = text.as_bytes();
        if bytes.len() < SCHEME.len()
            || !bytes[..SCHEME.len()].eq_ignore_ascii_case(SCHEME.as_bytes())
        {
            return Err(err(0, "it does not start with pkcs11:".into()));
        }
        let mut uri = Pkcs11Uri::default();
        // Where each attribute was first seen, for the message about a second one.
        let mut seen: [Option<usize>; ATTRS] = [None; ATTRS];
        let rest = SCHEME.len();
        // `?` cannot stand unencoded in the path, so the first one starts the query.
        let query_at = bytes[rest..]
            .iter()
            .position(|&b| b == b'?')
            .map(|p| rest + p);
        let path_end = query_at.unwrap_or(bytes.len());
        let parts = [
            (rest, path_end, Component::Path, b';'),
            (
                query_at.map_or(bytes.len(), |q| q + 1),
                bytes.len(),
                Component::Query,
                b'&',
            ),
        ];
        for (start, end, component, separator) in parts {
            if start >= end {
                continue;
            }
            let mut at = start;
            for piece in bytes[start..end].split(|&b| b == separator) {
                uri.add_piece(piece, at, component, &mut seen, &err)?;
                at += piece.len() + 1;
            }
        }
        if let (Some(_), Some(second)) =
            (seen[Attr::PinSource.index()], seen[Attr::PinValue.index()])
        {
            let second = second.max(seen[Attr::PinSource.index()].unwrap_or(0));
            return Err(err(
                second,
                "pin-source and pin-value cannot both be given: a URI says where the PIN is or \
                 what it is, not both"
                    .into(),
            ));
        }
        Ok(uri)
    }

    /// One `name=value` of a component, starting at byte `at` of the text.
    fn add_piece(
        &mut self,
        piece: &[u8],
        at: usize,
        component: Component,
        seen: &mut [Option<usize>; ATTRS],
        err: &dyn Fn(usize, String) -> UriError,
    ) -> Result<(), UriError> {
        let separator = if component == Component::Path {
            "';'"
        } else {
            "'&'"
        };
        if piece.is_empty() {
            return Err(err(
                at,
                format!("an empty attribute (a {separator} too many)"),
            ));
        }
        let Some(eq) = piece.iter().position(|&b| b == b'=') else {
            return Err(err(
                at,
                format!("attribute {} has no '=' and value", shown_name(piece)),
            ));
        };
        let name = &piece[..eq];
        let raw = &piece[eq + 1..];
        let value_at = at + eq + 1;
        if name.is_empty() {
            return Err(err(at, "an attribute without a name before '='".into()));
        }
        let attr = match Attr::from_name(name) {
            Some(a) => a,
            None => return self.add_vendor(name, raw, at, value_at, component, err),
        };
        match (attr.is_query(), component) {
            (true, Component::Path) => {
                return Err(err(
                    at,
                    format!("{} is a query attribute: it goes after '?'", attr.name()),
                ))
            }
            (false, Component::Query) => {
                return Err(err(
                    at,
                    format!("{} is a path attribute: it goes before '?'", attr.name()),
                ))
            }
            _ => {}
        }
        if let Some(first) = seen[attr.index()] {
            let first_pos = err(first, String::new()).position;
            return Err(err(
                at,
                format!(
                    "{} is given twice (first at character {first_pos}); RFC 7512 allows each \
                     attribute once",
                    attr.name()
                ),
            ));
        }
        seen[attr.index()] = Some(at);
        let secret = attr == Attr::PinValue;
        let value = decode(raw, value_at, component, attr.name(), secret, err)?;
        check_typed(attr, raw, at, err)?;
        // Typed values are kept in canonical form, so that equal URIs compare equal.
        let value = match attr {
            Attr::SlotId => canonical_number(&value),
            Attr::LibraryVersion => match parse_version(&value) {
                Some((major, minor)) => format!("{major}.{minor}").into_bytes(),
                None => value,
            },
            _ => value,
        };
        self.put(attr, value);
        Ok(())
    }

    fn add_vendor(
        &mut self,
        name: &[u8],
        raw: &[u8],
        at: usize,
        value_at: usize,
        component: Component,
        err: &dyn Fn(usize, String) -> UriError,
    ) -> Result<(), UriError> {
        if let Some(a) = Attr::from_name(&name.to_ascii_lowercase()) {
            return Err(err(
                at,
                format!(
                    "unknown attribute {}: attribute names are lower case ({})",
                    shown_name(name),
                    a.name()
                ),
            ));
        }
        // RFC 7512's pk11-v-attr-nm-char.
        if !name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(err(
                at,
                format!(
                    "attribute name {}: names are letters, digits, '-' and '_'",
                    shown_name(name)
                ),
            ));
        }
        // Checked to be ASCII just above.
        let name = String::from_utf8_lossy(name).into_owned();
        let list = match component {
            Component::Path => &mut self.vendor_path,
            Component::Query => &mut self.vendor_query,
        };
        if component == Component::Path && list.iter().any(|(n, _)| *n == name) {
            return Err(err(
                at,
                format!("{name} is given twice; a path attribute may appear once"),
            ));
        }
        let value = decode(raw, value_at, component, &name, false, err)?;
        list.push((name, value));
        Ok(())
    }

    /// The decoded value of `attr`, if the URI has it.
    pub fn get(&self, attr: Attr) -> Option<&[u8]> {
        self.values
            .iter()
            .find(|(a, _)| *a == attr)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets `attr` to `value` (bytes, encoded when formatted). For `slot-id`,
    /// `library-version` and `type` the value must be in their syntax; use the typed setters.
    pub fn set(&mut self, attr: Attr, value: &[u8]) -> &mut Self {
        self.put(attr, value.to_vec());
        self
    }

    /// Stores a value in its canonical place, replacing one `attr` had.
    fn put(&mut self, attr: Attr, value: Vec<u8>) {
        match self
            .values
            .binary_search_by_key(&attr.index(), |(a, _)| a.index())
        {
            Ok(at) => {
                self.values[at].1.zeroize();
                self.values[at].1 = value;
            }
            Err(at) => self.values.insert(at, (attr, value)),
        }
    }

    /// A URI with `attr` set to `value`.
    pub fn with(attr: Attr, value: &[u8]) -> Pkcs11Uri {
        let mut uri = Pkcs11Uri::default();
        uri.set(attr, value);
        uri
    }

    pub fn set_type(&mut self, t: ObjectType) -> &mut Self {
        self.set(Attr::Type, t.name().as_bytes())
    }

    pub fn set_slot_id(&mut self, id: CK_SLOT_ID) -> &mut Self {
        self.set(Attr::SlotId, id.to_string().as_bytes())
    }

    /// The `slot-id`, if given (checked to be a number when parsed).
    pub fn slot_id(&self) -> Option<CK_SLOT_ID> {
        std::str::from_utf8(self.get(Attr::SlotId)?)
            .ok()?
            .parse()
            .ok()
    }

    /// The `type`, if given (checked to be one of RFC 7512's when parsed).
    pub fn object_type(&self) -> Option<ObjectType> {
        ObjectType::from_name(self.get(Attr::Type)?)
    }

    /// The `library-version` as (major, minor); a missing minor is 0.
    pub fn library_version(&self) -> Option<(u8, u8)> {
        parse_version(self.get(Attr::LibraryVersion)?)
    }

    /// The vendor attributes of the path, in the order given.
    pub fn vendor_path(&self) -> &[(String, Vec<u8>)] {
        &self.vendor_path
    }

    /// The vendor attributes of the query, in the order given.
    pub fn vendor_query(&self) -> &[(String, Vec<u8>)] {
        &self.vendor_query
    }

    /// Refuses a URI whose path has an attribute p11gate does not know: by RFC 7512 it can
    /// match nothing, and whoever wrote it most likely mistyped a standard name.
    pub fn check_understood(&self) -> Result<(), String> {
        let Some((name, _)) = self.vendor_path.first() else {
            return Ok(());
        };
        let hint =
            closest_path_name(name).map_or_else(String::new, |n| format!(" (did you mean {n}?)"));
        Err(format!(
            "path attribute {name} is not one p11gate knows{hint}: RFC 7512 reads it as a \
             vendor attribute, and a URI with a path attribute its reader does not understand \
             matches nothing"
        ))
    }

    /// The attributes the URI has (standard ones only), in canonical order.
    pub fn attrs(&self) -> impl Iterator<Item = Attr> + '_ {
        self.values.iter().map(|(a, _)| *a)
    }

    /// The URI with every attribute, `pin-value` included, in canonical form. Never log it:
    /// `Display` hides the PIN.
    pub fn canonical(&self) -> String {
        self.format(true, true)
    }

    /// The path component only (`pkcs11:token=...;serial=...`): what names the thing, without
    /// how to log in to it.
    pub fn path_only(&self) -> String {
        self.format(false, false)
    }

    fn format(&self, query: bool, show_pin: bool) -> String {
        let mut out = String::from(SCHEME);
        let mut first = true;
        let mut start = |out: &mut String, separator: char| {
            if !first {
                out.push(separator);
            }
            first = false;
        };
        for attr in Attr::ALL.into_iter().filter(|a| !a.is_query()) {
            if let Some(v) = self.get(attr) {
                start(&mut out, ';');
                push_attr(&mut out, attr, v);
            }
        }
        for (name, v) in &self.vendor_path {
            start(&mut out, ';');
            out.push_str(name);
            out.push('=');
            push_encoded(&mut out, v, Component::Path);
        }
        let has_query = self.attrs().any(Attr::is_query) || !self.vendor_query.is_empty();
        if !query || !has_query {
            return out;
        }
        out.push('?');
        let mut first = true;
        let mut start = |out: &mut String| {
            if !first {
                out.push('&');
            }
            first = false;
        };
        for attr in Attr::ALL.into_iter().filter(|a| a.is_query()) {
            if let Some(v) = self.get(attr) {
                start(&mut out);
                out.push_str(attr.name());
                out.push('=');
                if attr == Attr::PinValue && !show_pin {
                    out.push_str("<hidden>");
                } else {
                    push_encoded(&mut out, v, Component::Query);
                }
            }
        }
        for (name, v) in &self.vendor_query {
            start(&mut out);
            out.push_str(name);
            out.push('=');
            push_encoded(&mut out, v, Component::Query);
        }
        out
    }

    // -- Matching (RFC 7512 §3.3: every attribute the URI gives must match) -------------------

    /// Whether the URI could match anything at all: not when its path has an attribute p11gate
    /// does not understand (a vendor one).
    fn matchable(&self) -> bool {
        self.vendor_path.is_empty()
    }

    /// Whether the library (CK_INFO) matches the URI's `library-*` attributes.
    pub fn matches_library(&self, info: &CK_INFO) -> bool {
        self.matchable()
            && self.field_matches(Attr::LibraryManufacturer, &info.manufacturerID)
            && self.field_matches(Attr::LibraryDescription, &info.libraryDescription)
            && self.library_version().is_none_or(|(major, minor)| {
                info.libraryVersion.major == major && info.libraryVersion.minor == minor
            })
    }

    /// Whether slot `id` (CK_SLOT_INFO) matches the URI's `slot-*` attributes.
    pub fn matches_slot(&self, id: CK_SLOT_ID, info: &CK_SLOT_INFO) -> bool {
        self.matchable()
            && self.slot_id().is_none_or(|want| want == id)
            && self.field_matches(Attr::SlotDescription, &info.slotDescription)
            && self.field_matches(Attr::SlotManufacturer, &info.manufacturerID)
    }

    /// Whether a token (CK_TOKEN_INFO) matches the URI's token attributes (`token`,
    /// `manufacturer`, `serial`, `model`).
    pub fn matches_token(&self, info: &CK_TOKEN_INFO) -> bool {
        self.matchable()
            && self.field_matches(Attr::Token, &info.label)
            && self.field_matches(Attr::Manufacturer, &info.manufacturerID)
            && self.field_matches(Attr::Serial, &info.serialNumber)
            && self.field_matches(Attr::Model, &info.model)
    }

    /// Whether an object matches the URI's `object`, `id` and `type`. An attribute of the
    /// object that is not known (`None`) matches no URI attribute.
    pub fn matches_object(
        &self,
        class: Option<CK_OBJECT_CLASS>,
        label: Option<&[u8]>,
        id: Option<&[u8]>,
    ) -> bool {
        let given =
            |attr: Attr, have: Option<&[u8]>| self.get(attr).is_none_or(|want| have == Some(want));
        self.matchable()
            && given(Attr::Object, label)
            && given(Attr::Id, id)
            && self.object_type().is_none_or(|t| class == Some(t.class()))
    }

    /// Whether a blank-padded field matches `attr` (or the URI does not give `attr`). Padding
    /// (spaces, and the NULs some modules pad with) means nothing: `token=a%20` is `token=a`.
    fn field_matches(&self, attr: Attr, field: &[u8]) -> bool {
        self.get(attr)
            .is_none_or(|want| trim_end(want, b" ") == trim_end(field, b" \0"))
    }

    /// A URI naming a token by what its CK_TOKEN_INFO says (label, manufacturer, serial and
    /// model, without their padding).
    pub fn of_token(info: &CK_TOKEN_INFO) -> Pkcs11Uri {
        let mut uri = Pkcs11Uri::default();
        uri.set(Attr::Token, trim_end(&info.label, b" \0"))
            .set(Attr::Manufacturer, trim_end(&info.manufacturerID, b" \0"))
            .set(Attr::Serial, trim_end(&info.serialNumber, b" \0"))
            .set(Attr::Model, trim_end(&info.model, b" \0"));
        uri
    }
}

/// Shows `pin-value` hidden, and the rest in canonical form.
impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(true, false))
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({:?})", self.format(true, false))
    }
}

impl std::str::FromStr for Pkcs11Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        Pkcs11Uri::parse(s)
    }
}

/// Appends `name=value` of a standard path attribute in canonical form.
fn push_attr(out: &mut String, attr: Attr, value: &[u8]) {
    out.push_str(attr.name());
    out.push('=');
    match attr {
        // Binary: every byte encoded, so that an id reads the same whatever its bytes are.
        Attr::Id => push_all_encoded(out, value),
        Attr::LibraryVersion => match parse_version(value) {
            Some((major, minor)) => {
                use fmt::Write as _;
                let _ = write!(out, "{major}.{minor}");
            }
            None => push_encoded(out, value, Component::Path),
        },
        _ => push_encoded(out, value, Component::Path),
    }
}

/// Appends `bytes` percent-encoded where the component requires it (uppercase hex, as RFC 3986
/// §2.1 recommends).
fn push_encoded(out: &mut String, bytes: &[u8], component: Component) {
    let mut rest = bytes;
    loop {
        let plain = rest
            .iter()
            .position(|&b| !is_plain(b, component))
            .unwrap_or(rest.len());
        // Plain bytes are ASCII: always UTF-8.
        out.push_str(std::str::from_utf8(&rest[..plain]).unwrap_or_default());
        match rest.get(plain) {
            Some(&b) => push_escape(out, b),
            None => return,
        }
        rest = &rest[plain + 1..];
    }
}

/// Appends every byte as `%XX`.
pub fn push_all_encoded(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        push_escape(out, b);
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Appends the URI of an object to `out`, for audit records: the token's label, then the
/// object's label, type and id, each only when known. Writes nothing for an object of which
/// neither label nor id is known (a URI would then name a token or a class, not the object).
pub fn push_object_uri(
    out: &mut String,
    token: Option<&str>,
    label: Option<&str>,
    id: Option<&[u8]>,
    class: Option<CK_OBJECT_CLASS>,
) {
    if label.is_none() && id.is_none() {
        return;
    }
    out.push_str(SCHEME);
    let mut first = true;
    let mut field = |out: &mut String, attr: Attr| {
        if !first {
            out.push(';');
        }
        first = false;
        out.push_str(attr.name());
        out.push('=');
    };
    if let Some(t) = token {
        field(out, Attr::Token);
        push_encoded(out, t.as_bytes(), Component::Path);
    }
    if let Some(l) = label {
        field(out, Attr::Object);
        push_encoded(out, l.as_bytes(), Component::Path);
    }
    if let Some(t) = class.and_then(ObjectType::of_class) {
        field(out, Attr::Type);
        out.push_str(t.name());
    }
    if let Some(id) = id {
        field(out, Attr::Id);
        push_all_encoded(out, id);
    }
}

/// Percent-decodes a value, checking that every other character may stand as it is.
fn decode(
    raw: &[u8],
    at: usize,
    component: Component,
    name: &str,
    secret: bool,
    err: &dyn Fn(usize, String) -> UriError,
) -> Result<Vec<u8>, UriError> {
    // Decoding never grows: no reallocation leaves a copy of a PIN behind.
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(raw.len()));
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let escape = raw.get(i + 1..i + 3);
            match escape.map(|e| (hex_value(e[0]), hex_value(e[1]))) {
                Some((Some(hi), Some(lo))) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ if secret => {
                    return Err(err(
                        at + i,
                        format!(
                            "in {name}: '%' must be followed by two hex digits (the value is not \
                             shown: it is a PIN)"
                        ),
                    ))
                }
                _ => {
                    let shown = String::from_utf8_lossy(&raw[i..raw.len().min(i + 3)]);
                    return Err(err(
                        at + i,
                        format!(
                            "in {name}: {shown:?} is not a percent-escape: '%' must be followed \
                             by two hex digits (write a '%' itself as %25)"
                        ),
                    ));
                }
            }
        }
        if !is_plain(b, component) {
            return Err(err(at + i, unencoded_message(raw, i, name, secret)));
        }
        out.push(b);
        i += 1;
    }
    Ok(std::mem::take(&mut *out))
}

/// The message for a character that must be percent-encoded at `raw[i]`.
fn unencoded_message(raw: &[u8], i: usize, name: &str, secret: bool) -> String {
    if secret {
        return format!(
            "in {name}: a character must be percent-encoded (the value is not shown: it is a PIN)"
        );
    }
    let b = raw[i];
    if b.is_ascii() {
        let why = match b {
            b'/' => " ('/' may stand unencoded in the query only)",
            b'&' => " ('&' separates query attributes)",
            b'#' => " (a PKCS#11 URI has no fragment)",
            _ => "",
        };
        let mut escaped = String::new();
        push_escape(&mut escaped, b);
        return format!(
            "in {name}: {:?} must be percent-encoded as {escaped}{why}",
            b as char
        );
    }
    // A non-ASCII character: show it and its UTF-8 encoding.
    let rest = String::from_utf8_lossy(&raw[i..]);
    let c = rest.chars().next().unwrap_or('\u{fffd}');
    let mut escaped = String::new();
    let mut utf8 = [0u8; 4];
    push_all_encoded(&mut escaped, c.encode_utf8(&mut utf8).as_bytes());
    format!("in {name}: {c:?} must be percent-encoded (as UTF-8: {escaped})")
}

/// Checks the attributes whose values have a syntax of their own (on the text as written:
/// RFC 7512 gives them plain digits and names, not escapes).
fn check_typed(
    attr: Attr,
    raw: &[u8],
    at: usize,
    err: &dyn Fn(usize, String) -> UriError,
) -> Result<(), UriError> {
    let shown = String::from_utf8_lossy(raw);
    match attr {
        Attr::SlotId => {
            let digits = !raw.is_empty() && raw.iter().all(u8::is_ascii_digit);
            if !digits {
                return Err(err(
                    at,
                    format!("slot-id={shown}: a slot id is a decimal number"),
                ));
            }
            if shown.parse::<CK_SLOT_ID>().is_err() {
                return Err(err(
                    at,
                    format!("slot-id={shown}: larger than a CK_SLOT_ID can be"),
                ));
            }
        }
        Attr::LibraryVersion if parse_version(raw).is_none() => {
            return Err(err(
                at,
                format!(
                    "library-version={shown}: a version is MAJOR or MAJOR.MINOR, decimal, each 0 \
                     to 255"
                ),
            ));
        }
        Attr::Type if ObjectType::from_name(raw).is_none() => {
            let known: Vec<&str> = ObjectType::ALL.iter().map(|t| t.name()).collect();
            return Err(err(
                at,
                format!(
                    "type={shown}: RFC 7512 object types are {}",
                    known.join(", ")
                ),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// A decimal number without leading zeros (checked to be one).
fn canonical_number(digits: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(digits);
    text.parse::<u64>()
        .map_or_else(|_| digits.to_vec(), |n| n.to_string().into_bytes())
}

/// `MAJOR` or `MAJOR.MINOR`, decimal, each fitting a CK_BYTE.
fn parse_version(raw: &[u8]) -> Option<(u8, u8)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (major, minor) = match text.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    };
    let number = |s: &str| -> Option<u8> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    Some((number(major)?, minor.map_or(Some(0), number)?))
}

/// An attribute name as shown in a message (it may hold anything).
fn shown_name(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

/// The standard path attribute within two edits of `name`, if there is one.
fn closest_path_name(name: &str) -> Option<&'static str> {
    Attr::ALL
        .iter()
        .filter(|a| !a.is_query())
        .map(|a| {
            (
                edit_distance(name.as_bytes(), a.name().as_bytes()),
                a.name(),
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance (names are short: one row of the table is enough).
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// `bytes` without the trailing bytes in `pad`.
fn trim_end<'a>(bytes: &'a [u8], pad: &[u8]) -> &'a [u8] {
    let end = bytes
        .iter()
        .rposition(|b| !pad.contains(b))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Pkcs11Uri {
        Pkcs11Uri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error(s: &str) -> String {
        Pkcs11Uri::parse(s).unwrap_err().to_string()
    }

    fn padded<const N: usize>(s: &str) -> [u8; N] {
        let mut f = [b' '; N];
        f[..s.len()].copy_from_slice(s.as_bytes());
        f
    }

    fn token_info(label: &str, manufacturer: &str, serial: &str, model: &str) -> CK_TOKEN_INFO {
        CK_TOKEN_INFO {
            label: padded(label),
            manufacturerID: padded(manufacturer),
            serialNumber: padded(serial),
            model: padded(model),
            ..CK_TOKEN_INFO::default()
        }
    }

    #[test]
    fn the_rfc_examples_parse() {
        // The examples of RFC 7512 §3.
        let all = [
            "pkcs11:",
            "pkcs11:object=my-pubkey;type=public",
            "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%E4%DF%24%3E%DF%73%52%F8%2C%EA%04%CA%83?pin-source=file:/etc/token_pin",
            "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
            "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
            "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
            "pkcs11:slot-description=Sun%20Metaslot",
            "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
            "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
            "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
            "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
            "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
        ];
        for text in &all[..all.len() - 1] {
            parse(text);
        }
        let u = parse(all[3]);
        assert_eq!(
            u.get(Attr::Token),
            Some(&b"The Software PKCS#11 Softtoken"[..])
        );
        assert_eq!(u.get(Attr::Manufacturer), Some(&b"Snake Oil, Inc."[..]));
        assert_eq!(u.object_type(), Some(ObjectType::Cert));
        assert_eq!(u.get(Attr::Id).unwrap()[..4], [0x69, 0x95, 0x3e, 0x5c]);
        assert_eq!(u.get(Attr::PinSource), Some(&b"file:/etc/token_pin"[..]));
        assert_eq!(parse(all[8]).library_version(), Some((1, 23)));
        assert_eq!(parse(all[9]).library_version(), Some((3, 0)));
        assert_eq!(
            parse(all[9]).get(Attr::Token),
            Some(&b"My token% created by Joe"[..])
        );
        assert_eq!(
            parse(all[9]).get(Attr::Id),
            Some(&[1, 2, 3, 0xba, 0xdd, 0xca, 0xfe, 4, 5, 6][..])
        );
        assert_eq!(
            parse(all[10]).get(Attr::Token),
            Some(&b"A name with a substring %;"[..])
        );
        assert_eq!(
            parse(all[11]).get(Attr::Token),
            Some("Name with a small A with acute: á".as_bytes())
        );
        // Names RFC 7512 does not define are vendor attributes: kept, in order.
        let v = parse(all[12]);
        assert_eq!(
            v.vendor_path(),
            &[("vendor-aaa".into(), b"value-a".to_vec())]
        );
        assert_eq!(
            v.vendor_query(),
            &[("vendor-bbb".into(), b"value-b".to_vec())]
        );
        assert_eq!(v.canonical(), all[12]);
        let x = parse("pkcs11:x-old-style=1");
        assert_eq!(x.vendor_path(), &[("x-old-style".into(), b"1".to_vec())]);
    }

    #[test]
    fn canonical_form_round_trips() {
        let cases = [
            ("pkcs11:", "pkcs11:"),
            ("PKCS11:token=a", "pkcs11:token=a"),
            ("pkcs11:serial=1;token=vault", "pkcs11:token=vault;serial=1"),
            (
                "pkcs11:id=%ab%CD%01;type=secret-key;object=k",
                "pkcs11:object=k;type=secret-key;id=%AB%CD%01",
            ),
            // An id written plainly is still shown byte by byte.
            ("pkcs11:id=12", "pkcs11:id=%31%32"),
            // Characters that need no escape lose it; the others keep one, in upper case.
            (
                "pkcs11:token=%61%3a%26%3d%20%3b%2f%3f%25",
                "pkcs11:token=a:&=%20%3B%2F%3F%25",
            ),
            (
                "pkcs11:library-version=7?module-path=/usr/lib/x.so&x-a=1&x-a=2",
                "pkcs11:library-version=7.0?module-path=/usr/lib/x.so&x-a=1&x-a=2",
            ),
            ("pkcs11:token=;object=", "pkcs11:token=;object="),
            ("pkcs11:?", "pkcs11:"),
            (
                "pkcs11:x-v=1;token=t?pin-source=|/bin/pin?x",
                "pkcs11:token=t;x-v=1?pin-source=|/bin/pin?x",
            ),
            ("pkcs11:slot-id=00042", "pkcs11:slot-id=42"),
        ];
        for (input, want) in cases {
            let u = parse(input);
            assert_eq!(u.canonical(), want, "{input}");
            assert_eq!(parse(want), u, "{want} parses back to the same");
            assert_eq!(parse(want).canonical(), want);
        }
        // Every byte value survives a round trip, in every kind of value.
        let all: Vec<u8> = (0..=255).collect();
        for attr in [
            Attr::Token,
            Attr::Object,
            Attr::Id,
            Attr::PinValue,
            Attr::ModulePath,
        ] {
            let u = Pkcs11Uri::with(attr, &all);
            assert_eq!(parse(&u.canonical()).get(attr), Some(&all[..]), "{attr:?}");
        }
    }

    #[test]
    fn values_may_hold_escaped_delimiters_and_nul() {
        let u =
            parse("pkcs11:token=a%3Bb%2Fc;object=%00;id=%00%ff?pin-source=a/b?c&module-name=x%26y");
        assert_eq!(u.get(Attr::Token), Some(&b"a;b/c"[..]));
        assert_eq!(u.get(Attr::Object), Some(&b"\0"[..]));
        assert_eq!(u.get(Attr::Id), Some(&[0, 0xff][..]));
        assert_eq!(u.get(Attr::PinSource), Some(&b"a/b?c"[..]));
        assert_eq!(u.get(Attr::ModuleName), Some(&b"x&y"[..]));
        // '&' is plain in the path; '=' is plain anywhere after the first one.
        let u = parse("pkcs11:token=a&b=c");
        assert_eq!(u.get(Attr::Token), Some(&b"a&b=c"[..]));
        assert_eq!(u.get(Attr::Serial), None);
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            (
                "pkcs1:token=a",
                "character 1: it does not start with pkcs11:",
            ),
            (
                " pkcs11:token=a",
                "character 1: it does not start with pkcs11:",
            ),
            (
                "pkcs11:token=a;",
                "character 16: an empty attribute (a ';' too many)",
            ),
            (
                "pkcs11:;token=a",
                "character 8: an empty attribute (a ';' too many)",
            ),
            (
                "pkcs11:?pin-source=a&",
                "character 22: an empty attribute (a '&' too many)",
            ),
            (
                "pkcs11:token",
                "character 8: attribute \"token\" has no '=' and value",
            ),
            (
                "pkcs11:=a",
                "character 8: an attribute without a name before '='",
            ),
            (
                "pkcs11:token=a;token=b",
                "character 16: token is given twice (first at character 8); RFC 7512 allows \
                 each attribute once",
            ),
            (
                "pkcs11:Token=a",
                "character 8: unknown attribute \"Token\": attribute names are lower case (token)",
            ),
            (
                "pkcs11:?Pin-Value=1",
                "character 9: unknown attribute \"Pin-Value\": attribute names are lower case \
                 (pin-value)",
            ),
            (
                "pkcs11:pin-source=x",
                "character 8: pin-source is a query attribute: it goes after '?'",
            ),
            (
                "pkcs11:?token=x",
                "character 9: token is a path attribute: it goes before '?'",
            ),
            (
                "pkcs11:token=a b",
                "character 15: in token: ' ' must be percent-encoded as %20",
            ),
            (
                "pkcs11:token=a/b",
                "character 15: in token: '/' must be percent-encoded as %2F ('/' may stand \
                 unencoded in the query only)",
            ),
            (
                "pkcs11:token=a#b",
                "character 15: in token: '#' must be percent-encoded as %23 (a PKCS#11 URI has \
                 no fragment)",
            ),
            (
                "pkcs11:token=vault-á",
                "character 20: in token: 'á' must be percent-encoded (as UTF-8: %C3%A1)",
            ),
            (
                "pkcs11:id=%1",
                "character 11: in id: \"%1\" is not a percent-escape: '%' must be followed by \
                 two hex digits (write a '%' itself as %25)",
            ),
            (
                "pkcs11:id=%G1",
                "character 11: in id: \"%G1\" is not a percent-escape: '%' must be followed by \
                 two hex digits (write a '%' itself as %25)",
            ),
            (
                "pkcs11:object=100%",
                "character 18: in object: \"%\" is not a percent-escape: '%' must be followed \
                 by two hex digits (write a '%' itself as %25)",
            ),
            (
                "pkcs11:type=key",
                "character 8: type=key: RFC 7512 object types are public, private, cert, \
                 secret-key, data",
            ),
            (
                "pkcs11:slot-id=",
                "character 8: slot-id=: a slot id is a decimal number",
            ),
            (
                "pkcs11:slot-id=0x1",
                "character 8: slot-id=0x1: a slot id is a decimal number",
            ),
            (
                "pkcs11:slot-id=%31",
                "character 8: slot-id=%31: a slot id is a decimal number",
            ),
            (
                "pkcs11:slot-id=18446744073709551616",
                "character 8: slot-id=18446744073709551616: larger than a CK_SLOT_ID can be",
            ),
            (
                "pkcs11:library-version=1.256",
                "character 8: library-version=1.256: a version is MAJOR or MAJOR.MINOR, \
                 decimal, each 0 to 255",
            ),
            (
                "pkcs11:library-version=1.",
                "character 8: library-version=1.: a version is MAJOR or MAJOR.MINOR, decimal, \
                 each 0 to 255",
            ),
            (
                "pkcs11:x.a=1",
                "character 8: attribute name \"x.a\": names are letters, digits, '-' and '_'",
            ),
            (
                "pkcs11:?a b=1",
                "character 9: attribute name \"a b\": names are letters, digits, '-' and '_'",
            ),
            (
                "pkcs11:x-a=1;x-a=2",
                "character 14: x-a is given twice; a path attribute may appear once",
            ),
            (
                "pkcs11:?pin-source=a&pin-value=b",
                "character 22: pin-source and pin-value cannot both be given: a URI says where \
                 the PIN is or what it is, not both",
            ),
            (
                "pkcs11:?module-name=a&module-name=b",
                "character 23: module-name is given twice (first at character 9); RFC 7512 \
                 allows each attribute once",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                error(input),
                format!("invalid PKCS#11 URI at {want}"),
                "{input}"
            );
        }
    }

    #[test]
    fn a_pin_value_is_never_shown() {
        let pin = "s3cr3t-p1n";
        let u = parse(&format!("pkcs11:token=t?pin-value={pin}"));
        assert_eq!(u.get(Attr::PinValue), Some(pin.as_bytes()));
        assert_eq!(u.canonical(), format!("pkcs11:token=t?pin-value={pin}"));
        assert_eq!(u.to_string(), "pkcs11:token=t?pin-value=<hidden>");
        assert_eq!(
            format!("{u:?}"),
            "Pkcs11Uri(\"pkcs11:token=t?pin-value=<hidden>\")"
        );
        assert_eq!(u.path_only(), "pkcs11:token=t");
        for bad in [
            format!("pkcs11:?pin-value={pin}%G"),
            format!("pkcs11:?pin-value={pin} x"),
            format!("pkcs11:?pin-value={pin}&pin-value={pin}"),
            format!("pkcs11:?pin-value={pin}&pin-source={pin}"),
        ] {
            let e = error(&bad);
            assert!(!e.contains("s3cr"), "{e}");
        }
        assert_eq!(
            error("pkcs11:?pin-value=a%zz"),
            "invalid PKCS#11 URI at character 20: in pin-value: '%' must be followed by two hex \
             digits (the value is not shown: it is a PIN)"
        );
        assert_eq!(
            error("pkcs11:?pin-value=a&b"),
            "invalid PKCS#11 URI at character 21: attribute \"b\" has no '=' and value"
        );
    }

    #[test]
    fn tokens_match_on_every_given_attribute() {
        let info = token_info("vault", "SoftHSM project", "4f2a9c", "SoftHSM v2");
        for (uri, matches) in [
            ("pkcs11:", true),
            ("pkcs11:token=vault", true),
            ("pkcs11:token=vault%20%20", true),
            ("pkcs11:token=vault;serial=4f2a9c", true),
            ("pkcs11:token=vault;serial=4f2a9d", false),
            ("pkcs11:token=Vault", false),
            ("pkcs11:token=vaul", false),
            ("pkcs11:token=", false),
            (
                "pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2",
                true,
            ),
            ("pkcs11:model=SoftHSM", false),
            // Object, slot and library attributes are not the token's business.
            ("pkcs11:token=vault;object=k;slot-id=9", true),
            // A path attribute p11gate does not understand: nothing matches.
            ("pkcs11:token=vault;x-vendor=1", false),
            // A query attribute p11gate does not understand does not matter.
            ("pkcs11:token=vault?x-vendor=1", true),
        ] {
            assert_eq!(parse(uri).matches_token(&info), matches, "{uri}");
        }
        // An empty value matches a blank field; NUL padding is padding.
        let blank = token_info("", "m", "", "");
        assert!(parse("pkcs11:token=;serial=").matches_token(&blank));
        let mut nul = token_info("", "m", "1", "");
        nul.label = [0; 32];
        nul.label[..2].copy_from_slice(b"ab");
        assert!(parse("pkcs11:token=ab").matches_token(&nul));
        assert!(!parse("pkcs11:token=ab%00").matches_token(&nul));
        // What a token's info says, as a URI, matches it.
        let of = Pkcs11Uri::of_token(&info);
        assert_eq!(
            of.canonical(),
            "pkcs11:token=vault;manufacturer=SoftHSM%20project;serial=4f2a9c;model=SoftHSM%20v2"
        );
        assert!(of.matches_token(&info));
    }

    #[test]
    fn slots_libraries_and_objects_match() {
        let slot = CK_SLOT_INFO {
            slotDescription: padded("SoftHSM slot ID 0x1"),
            manufacturerID: padded("SoftHSM project"),
            ..CK_SLOT_INFO::default()
        };
        assert!(
            parse("pkcs11:slot-id=7;slot-manufacturer=SoftHSM%20project").matches_slot(7, &slot)
        );
        assert!(!parse("pkcs11:slot-id=7").matches_slot(8, &slot));
        assert!(parse("pkcs11:slot-description=SoftHSM%20slot%20ID%200x1").matches_slot(0, &slot));
        assert!(!parse("pkcs11:slot-description=SoftHSM").matches_slot(0, &slot));

        let lib = CK_INFO {
            manufacturerID: padded("SoftHSM"),
            libraryDescription: padded("Implementation of PKCS11"),
            libraryVersion: CK_VERSION { major: 2, minor: 6 },
            ..CK_INFO::default()
        };
        assert!(
            parse("pkcs11:library-manufacturer=SoftHSM;library-version=2.6").matches_library(&lib)
        );
        assert!(!parse("pkcs11:library-version=2").matches_library(&lib));
        assert!(
            parse("pkcs11:library-description=Implementation%20of%20PKCS11").matches_library(&lib)
        );

        let u = parse("pkcs11:object=vault-key;type=secret-key;id=%01%02");
        assert!(u.matches_object(Some(CKO_SECRET_KEY), Some(b"vault-key"), Some(&[1, 2])));
        assert!(!u.matches_object(Some(CKO_PRIVATE_KEY), Some(b"vault-key"), Some(&[1, 2])));
        assert!(!u.matches_object(Some(CKO_SECRET_KEY), Some(b"vault-key"), Some(&[1])));
        assert!(!u.matches_object(None, Some(b"vault-key"), Some(&[1, 2])));
        // Object labels are not padded: a trailing space is part of the label.
        assert!(!u.matches_object(Some(CKO_SECRET_KEY), Some(b"vault-key "), Some(&[1, 2])));
        assert!(parse("pkcs11:object=").matches_object(None, Some(b""), None));
        assert!(parse("pkcs11:token=x").matches_object(None, None, None));
        for t in ObjectType::ALL {
            assert_eq!(ObjectType::of_class(t.class()), Some(t));
        }
        assert_eq!(ObjectType::of_class(CKO_DOMAIN_PARAMETERS), None);
    }

    #[test]
    fn unknown_path_attributes_match_nothing_and_are_refused_where_people_write_uris() {
        let info = token_info("vault", "m", "1", "x");
        let typo = parse("pkcs11:tokn=vault");
        assert!(!typo.matches_token(&info));
        assert!(!typo.matches_object(None, None, None));
        assert_eq!(
            typo.check_understood().unwrap_err(),
            "path attribute tokn is not one p11gate knows (did you mean token?): RFC 7512 reads \
             it as a vendor attribute, and a URI with a path attribute its reader does not \
             understand matches nothing"
        );
        assert_eq!(
            parse("pkcs11:slot-identifier=1")
                .check_understood()
                .unwrap_err(),
            "path attribute slot-identifier is not one p11gate knows: RFC 7512 reads it as a \
             vendor attribute, and a URI with a path attribute its reader does not understand \
             matches nothing"
        );
        let query = parse("pkcs11:token=vault?vendor-thing=1");
        assert_eq!(query.check_understood(), Ok(()));
        assert!(query.matches_token(&info));
    }

    #[test]
    fn object_uris_for_audit_records_parse_back() {
        let mut out = String::new();
        push_object_uri(
            &mut out,
            Some("vault a"),
            Some("key;\"x\"\n fn=C_Login"),
            Some(&[0x01, 0x02]),
            Some(CKO_SECRET_KEY),
        );
        assert_eq!(
            out,
            "pkcs11:token=vault%20a;object=key%3B%22x%22%0A%20fn=C_Login;type=secret-key;id=%01%02"
        );
        // Nothing a kv or JSON reader treats specially: no space, quote, backslash or control.
        assert!(out
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        let u = parse(&out);
        assert!(u.matches_object(
            Some(CKO_SECRET_KEY),
            Some(b"key;\"x\"\n fn=C_Login"),
            Some(&[1, 2])
        ));
        out.clear();
        push_object_uri(
            &mut out,
            None,
            None,
            Some(b"12"),
            Some(CKO_DOMAIN_PARAMETERS),
        );
        assert_eq!(out, "pkcs11:id=%31%32");
        out.clear();
        push_object_uri(&mut out, Some("t"), None, None, Some(CKO_SECRET_KEY));
        assert_eq!(out, "", "no label and no id: no URI");
    }
}
