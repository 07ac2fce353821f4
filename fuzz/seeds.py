#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/<target>/seed-*.

The binary targets read their input as `p11gate::fuzzing` decodes it (src/fuzzing.rs,
src/fuzzing/*.rs); this script encodes readable descriptions the same way. The attribute and
mechanism tables are read from src/fuzzing.rs, so their indices stay right. Run it again after
changing the decoding, then `scripts/fuzz.sh cmin TARGET`.
"""

import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = (ROOT / "src" / "fuzzing.rs").read_text()


def table(name):
    body = re.search(r"const " + name + r": &\[\w+\] = &\[(.*?)\];", SRC, re.S).group(1)
    return [x.strip() for x in body.replace("\n", " ").split(",") if x.strip()]


ATTRIBUTES = table("ATTRIBUTES")
MECHANISMS = table("MECHANISMS")
HASHES = ["CKM_SHA_1", "CKM_SHA224", "CKM_SHA256", "CKM_SHA384", "CKM_SHA512", "CKM_MD5", "0"]
MGFS = ["CKG_MGF1_SHA1", "CKG_MGF1_SHA224", "CKG_MGF1_SHA256", "CKG_MGF1_SHA384",
        "CKG_MGF1_SHA512", "0", "6"]
MATERIAL = ["OID_P256", "OID_P384", "aes16", "aes24", "aes32", "e", "rsa_n", "rsa_d", "rsa_p",
            "rsa_q", "p256_point", "p256_value", "p384_point", "p384_value", "label"]

CKO = {"DATA": 0, "CERTIFICATE": 1, "PUBLIC_KEY": 2, "PRIVATE_KEY": 3, "SECRET_KEY": 4}
CKK = {"RSA": 0, "EC": 3, "GENERIC_SECRET": 0x10, "AES": 0x1F}


def u8(v):
    return bytes([v])


SIZES = [255, 256, 257, 511, 512, 1024, 4095, 4096, 4097, 8192, 15, 16, 17, 31, 32, 33]


def size(n):
    if n < 0xF0:
        return u8(n)
    return u8(0xF0 + SIZES.index(n))


def raw(data):
    return size(len(data)) + data


def ulong_value(v):
    assert v <= 0xBF
    return u8(v)


def buf(data=None, null_len=0):
    if data is not None:
        return u8(0) + raw(data)
    if null_len == 0:
        return u8(1)
    return u8(2) + u8(null_len)


def attr_type(name):
    return u8(ATTRIBUTES.index(name))


def attr(name, kind, value=None):
    """kind: bytes | null | ulong | bool | material"""
    t = attr_type("CKA_" + name)
    if kind == "bytes":
        return t + u8(0) + raw(value)
    if kind == "null":
        return t + u8(1) + u8(value)
    if kind == "ulong":
        return t + u8(2) + ulong_value(value)
    if kind == "bool":
        return t + u8(3) + u8(value)
    if kind == "material":
        return t + u8(4) + u8(MATERIAL.index(value))
    raise ValueError(kind)


def template(*attrs):
    assert len(attrs) < 12
    return u8(len(attrs)) + b"".join(attrs)


def mech_type(name):
    return u8(MECHANISMS.index("CKM_" + name))


def mechanism(name, param=("usual",)):
    kind = param[0]
    if kind == "raw":
        return mech_type(name) + u8(0) + raw(param[1])
    if kind == "null":
        return mech_type(name) + u8(1) + u8(param[1])
    if kind == "gcm":
        _, iv, aad, tag_index = param
        return mech_type(name) + u8(2) + buf(iv) + ulong_value(len(iv) * 8) + buf(aad) + u8(tag_index)
    if kind == "oaep":
        _, h, m, source, label = param  # source: 0 CKZ_DATA_SPECIFIED, 1 none, 2 bad
        return (mech_type(name) + u8(3) + u8(HASHES.index(h)) + u8(MGFS.index(m)) + u8(source)
                + buf(label))
    if kind == "pss":
        _, h, m, salt = param
        return mech_type(name) + u8(4) + u8(HASHES.index(h)) + u8(MGFS.index(m)) + ulong_value(salt)
    if kind == "usual":
        return mech_type(name) + u8(5)
    raise ValueError(kind)


def write(target, name, data):
    d = ROOT / "fuzz" / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + name)).write_bytes(data)


# ------------------------------------------------------------------------------------------
# config: the examples of the README, src/config.rs and the tests.

CONFIGS = {
    "doc-example": """default_app = "vault-a"

[[upstream]]
name = "hsm"
path = "/usr/lib/softhsm/libsofthsm2.so"
profiles = ["no-aes-gcm"]

[[slot]]
id = 0
upstream = "hsm"
token_label = "vault-a"
require_non_extractable = true

[[app]]
name = "vault-a"
slots = [0]

[log]
level = "info"
target = "syslog"
""",
    "two-upstreams": """[[upstream]]
name = "a"
path = "/a.so"
allow = ["CKM_AES_GCM", "0x1087", "4231", "CKM_RSA_PKCS_OAEP"]
deny = ["CKM_AES_CBC_PAD"]
[[upstream]]
name = "b"
path = "/b.so"
slow_call_warn_ms = 250
init_args = "configdir='sql:/etc/pki'"
[[slot]]
id = "0xffffffffffffffff"
upstream = "a"
upstream_slot = "2305843009213693953"
read_only = true
[[slot]]
id = 1
upstream = "b"
token_serial = "0123456789abcdef"
profiles = ["fortanix-hsm-gateway", "no-aes-cbc"]
[[app]]
name = "a"
slots = [1]
[[app]]
name = "b"
slots = [1, "0xffffffffffffffff"]
""",
    "soft-token": """[soft_token]
home = "/srv/p11gate"
slots = 3
max_pin_failures = 5

[[upstream]]
name = "lab"
soft_token = "/srv/p11gate/lab"
profiles = ["no-aes-cbc"]

[[slot]]
id = 7
upstream = "lab"
token_label = "lab"
""",
    "audit": """[audit]
enabled = true
syslog = true
syslog_socket = "/dev/log"
syslog_facility = "local3"
syslog_format = "rfc3164"
file = "/var/log/p11gate/audit.jsonl"
key_file = "/etc/p11gate/audit.key"
fsync = false
queue = 1024
on_overflow = "drop"
on_failure = "deny"

[log]
level = "trace"
target = "/tmp/p11gate.log"
""",
    "credential": """[[upstream]]
name = "a"
path = "/a.so"
[[slot]]
id = 0
upstream = "a"
token_label = "x"
credential_env = "P11GATE_FUZZ_PIN"
pin_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
""",
    "errors": """[[upstream]]
name = "a"
path = "/x.so"
paht = 1
deny = ["CKM_FOO"]
[[slot]]
id = -1
upstream = "z"
""",
}

ENVS = {
    "env-upstream": "#env\nP11GATE_UPSTREAM=/usr/lib/softhsm/libsofthsm2.so\nP11GATE_LOG_LEVEL=DEBUG\n"
                    "P11GATE_LOG=stderr\nP11GATE_APP=vault\nP11GATE_SLOW_CALL_WARN_MS=100\n",
    "env-soft": "#env\nP11GATE_HOME=/srv/tokens\nP11GATE_NUM_SLOTS=2\nP11GATE_AUDIT=off\n",
    "env-audit": "#env\nP11GATE_AUDIT=syslog:/dev/log,file:/var/log/a.jsonl\n"
                 "P11GATE_AUDIT_KEY=/etc/p11gate/audit.key\nP11GATE_NUM_SLOTS=0\n",
}

# ------------------------------------------------------------------------------------------
# template: a template, a second template (C_SetAttributeValue), then a store record.

AES_KEY = template(attr("CLASS", "ulong", CKO["SECRET_KEY"]), attr("KEY_TYPE", "ulong", CKK["AES"]),
                   attr("VALUE", "material", "aes32"), attr("TOKEN", "bool", 1),
                   attr("SENSITIVE", "bool", 1), attr("EXTRACTABLE", "bool", 0),
                   attr("LABEL", "material", "label"), attr("ID", "bytes", b"\x01\x02"))
HMAC_KEY = template(attr("CLASS", "ulong", CKO["SECRET_KEY"]),
                    attr("KEY_TYPE", "ulong", CKK["GENERIC_SECRET"]),
                    attr("VALUE", "bytes", b"k" * 32), attr("SIGN", "bool", 1),
                    attr("VERIFY", "bool", 1))
RSA_PRIVATE = template(attr("CLASS", "ulong", CKO["PRIVATE_KEY"]), attr("KEY_TYPE", "ulong", CKK["RSA"]),
                       attr("MODULUS", "material", "rsa_n"), attr("PUBLIC_EXPONENT", "material", "e"),
                       attr("PRIVATE_EXPONENT", "material", "rsa_d"),
                       attr("PRIME_1", "material", "rsa_p"), attr("PRIME_2", "material", "rsa_q"),
                       attr("SENSITIVE", "bool", 1))
RSA_PUBLIC = template(attr("CLASS", "ulong", CKO["PUBLIC_KEY"]), attr("KEY_TYPE", "ulong", CKK["RSA"]),
                      attr("MODULUS", "material", "rsa_n"), attr("PUBLIC_EXPONENT", "material", "e"),
                      attr("ENCRYPT", "bool", 1))
EC_PRIVATE = template(attr("CLASS", "ulong", CKO["PRIVATE_KEY"]), attr("KEY_TYPE", "ulong", CKK["EC"]),
                      attr("EC_PARAMS", "material", "OID_P256"),
                      attr("VALUE", "material", "p256_value"))
EC_PUBLIC = template(attr("CLASS", "ulong", CKO["PUBLIC_KEY"]), attr("KEY_TYPE", "ulong", CKK["EC"]),
                     attr("EC_PARAMS", "material", "OID_P384"),
                     attr("EC_POINT", "material", "p384_point"))
DATA = template(attr("CLASS", "ulong", CKO["DATA"]), attr("APPLICATION", "bytes", b"vault"),
                attr("VALUE", "bytes", b"some data"), attr("LABEL", "null", 0))
CERT = template(attr("CLASS", "ulong", CKO["CERTIFICATE"]), attr("VALUE", "bytes", b"\x30\x03\x02\x01\x01"),
                attr("SUBJECT", "bytes", b"cn"))
GET_VALUES = template(attr("LABEL", "null", 0), attr("VALUE", "bytes", b"\0" * 16),
                      attr("CLASS", "bytes", b"\0" * 8), attr("MODULUS", "null", 0))
NULL_WITH_LENGTH = template(attr("LABEL", "null", 16))
SET = template(attr("LABEL", "bytes", b"new label"), attr("SENSITIVE", "bool", 1),
               attr("EXTRACTABLE", "bool", 0))
SET_UNSAFE = template(attr("SENSITIVE", "bool", 0), attr("EXTRACTABLE", "bool", 1))
RECORD = (struct.pack("<I", 2) + struct.pack("<QI", 0, 8) + struct.pack("<Q", 4)
          + struct.pack("<QI", 3, 5) + b"label")

TEMPLATES = {
    "aes": AES_KEY + SET + RECORD,
    "hmac": HMAC_KEY + SET_UNSAFE,
    "rsa-private": RSA_PRIVATE + SET,
    "rsa-public": RSA_PUBLIC + template(),
    "ec-private": EC_PRIVATE + SET,
    "ec-public": EC_PUBLIC + SET_UNSAFE,
    "data": DATA + template(attr("VALUE", "bytes", b"other")),
    "certificate": CERT + SET,
    "get-values": GET_VALUES + template(),
    "null-with-length": NULL_WITH_LENGTH + template(),
    "null-array": u8(0xFF) + u8(3) + template(),
    "record": template() + template() + RECORD,
}

# ------------------------------------------------------------------------------------------
# mechanism: the mechanism, deny count (+ types), allow flag (+ 3 types), key pair, part size,
# data. Key pairs: 0 AES-128, 1 AES-256, 2 a 20-byte secret, 3 RSA, 5 P-256, 6 mismatched.

DATA_32 = bytes(range(32))


def mech_input(m, pair, what, data=DATA_32, deny=(), allow=None, part=16):
    """what: 0 encrypt+decrypt, 1 decrypt, 2 sign+verify, 3 verify, 4 wrap+unwrap, 5 unwrap"""
    out = m + u8(len(deny)) + b"".join(mech_type(d) for d in deny)
    if allow is None:
        out += u8(0)
    else:
        out += u8(1) + b"".join(mech_type(a) for a in allow)
    return out + u8(pair) + u8(what) + size(part) + data


MECHS = {
    "aes-gcm": mech_input(mechanism("AES_GCM", ("gcm", b"\x07" * 12, b"aad", 0)), 1, 0),
    "aes-gcm-usual": mech_input(mechanism("AES_GCM"), 0, 0, deny=("AES_CBC",)),
    "aes-gcm-short-tag": mech_input(mechanism("AES_GCM", ("gcm", b"\x01" * 16, b"", 1)), 0, 0),
    "aes-gcm-decrypt": mech_input(mechanism("AES_GCM"), 1, 1),
    "aes-cbc": mech_input(mechanism("AES_CBC", ("raw", b"\x09" * 16)), 1, 0),
    "aes-cbc-pad": mech_input(mechanism("AES_CBC_PAD"), 0, 0, data=b"odd length data", part=5),
    "aes-cbc-pad-decrypt": mech_input(mechanism("AES_CBC_PAD"), 0, 1),
    "aes-ecb": mech_input(mechanism("AES_ECB", ("null", 0)), 1, 0),
    "aes-kwp": mech_input(mechanism("AES_KEY_WRAP_PAD", ("null", 0)), 1, 4, data=b"k" * 20),
    "aes-kw": mech_input(mechanism("AES_KEY_WRAP", ("null", 0)), 0, 4, data=b"k" * 32),
    "aes-kw-unwrap": mech_input(mechanism("AES_KEY_WRAP", ("null", 0)), 0, 5, data=b"k" * 40),
    "hmac": mech_input(mechanism("SHA256_HMAC", ("null", 0)), 2, 2),
    "hmac-verify": mech_input(mechanism("SHA_1_HMAC", ("null", 0)), 2, 3),
    "hmac-sha512": mech_input(mechanism("SHA512_HMAC", ("null", 0)), 2, 2, allow=("SHA512_HMAC",) * 3),
    "sha384": mech_input(mechanism("SHA384", ("null", 0)), 0, 0, part=7),
    "rsa-oaep": mech_input(mechanism("RSA_PKCS_OAEP", ("oaep", "CKM_SHA256", "CKG_MGF1_SHA256", 0, b"label")), 3, 0),
    "rsa-oaep-sha1": mech_input(mechanism("RSA_PKCS_OAEP", ("oaep", "CKM_SHA_1", "CKG_MGF1_SHA1", 0, None)), 3, 0),
    "rsa-oaep-wrap": mech_input(mechanism("RSA_PKCS_OAEP"), 3, 4),
    "rsa-pkcs": mech_input(mechanism("RSA_PKCS", ("null", 0)), 3, 0),
    "rsa-pkcs-sign": mech_input(mechanism("RSA_PKCS", ("null", 0)), 3, 2),
    "rsa-pss": mech_input(mechanism("RSA_PKCS_PSS", ("pss", "CKM_SHA256", "CKG_MGF1_SHA256", 32)), 3, 2),
    "sha256-rsa-pss": mech_input(mechanism("SHA256_RSA_PKCS_PSS"), 3, 2),
    "sha384-rsa-pss-verify": mech_input(mechanism("SHA384_RSA_PKCS_PSS"), 3, 3, data=bytes(300)),
    "sha512-rsa-pkcs": mech_input(mechanism("SHA512_RSA_PKCS", ("null", 0)), 3, 2),
    "ecdsa": mech_input(mechanism("ECDSA", ("null", 0)), 5, 2),
    "ecdsa-sha256": mech_input(mechanism("ECDSA_SHA256", ("null", 0)), 5, 2),
    "ecdsa-verify": mech_input(mechanism("ECDSA_SHA384", ("null", 0)), 5, 3, data=bytes(96)),
    "param-null-with-length": mech_input(mechanism("AES_CBC", ("null", 16)), 0, 0),
    "gcm-raw-struct-size": mech_input(mechanism("AES_GCM", ("raw", b"\0" * 48)), 0, 0),
}


# ------------------------------------------------------------------------------------------
# calls: one byte picks the call (see `Run::step` in src/fuzzing/calls.rs), then its operands.
# Sessions and objects are indices into the ones this input opened and made.

def s(i=0):
    return u8(i)


def o(i):
    return u8(i)


def out_buf(kind="big"):
    return {"query": u8(0), "empty": u8(1), "big": u8(4)}[kind]


def open_session(slot=0, rw=True):
    return u8(0) + u8(slot) + u8(0 if rw else 1) + u8(0)


def login(session=0, user=0, pin=0):
    return u8(4) + s(session) + u8(user) + u8(pin)


def recipe(n, token=0, private=1, sensitive=1, extractable=0, extra=0):
    return u8(n) + u8(token) + u8(private) + u8(sensitive) + u8(extractable) + u8(extra)


def create(session, rec):
    return u8(10) + s(session) + rec


def find_init(session, tmpl):
    return u8(16) + s(session) + u8(0) + tmpl


def find(session, n):
    return u8(16) + s(session) + u8(1) + u8(n) + u8(0) + u8(0) + u8(n)


def find_final(session):
    return u8(16) + s(session) + u8(2)


def init(kind, session, mech, key):
    kinds = ["encrypt", "decrypt", "sign", "verify"]
    return u8(17) + u8(kinds.index(kind)) + s(session) + u8(0) + mech + o(key)


def in_out(kind, session, data, out="big", two_calls=0):
    kinds = ["Encrypt", "EncryptUpdate", "Decrypt", "DecryptUpdate", "Digest", "Sign"]
    return u8(19) + u8(kinds.index(kind)) + s(session) + buf(data) + out_buf(out) + u8(two_calls)


def final(kind, session, out="big"):
    kinds = ["EncryptFinal", "DecryptFinal", "DigestFinal", "SignFinal"]
    return u8(21) + u8(kinds.index(kind)) + s(session) + out_buf(out) + u8(0)


def generate_key(session, mech, key_len_index, rec):
    # key_template: a recipe, then 0 + length choice (CKA_VALUE_LEN)
    return u8(25) + s(session) + u8(0) + mech + rec + u8(0) + u8(key_len_index)


def close(session):
    return u8(1) + s(session)


VAULT_AES = (
    open_session(0)
    + login(0, 0, 0)                       # already logged in: CKR_USER_ALREADY_LOGGED_IN
    + find_init(0, template(attr("LABEL", "bytes", b"vault-key"), attr("CLASS", "ulong", 4)))
    + find(0, 4)
    + find_final(0)
    + generate_key(0, mechanism("AES_KEY_GEN", ("null", 0)), 1,
                   u8(9) + template(attr("LABEL", "bytes", b"vault-key"), attr("TOKEN", "bool", 1),
                                    attr("SENSITIVE", "bool", 1), attr("EXTRACTABLE", "bool", 0),
                                    attr("ENCRYPT", "bool", 1), attr("DECRYPT", "bool", 1)))
    + init("encrypt", 0, mechanism("AES_GCM", ("gcm", b"\x05" * 12, b"", 0)), 0)
    + in_out("Encrypt", 0, b"vault master key", out="query", two_calls=1)
    + init("decrypt", 0, mechanism("AES_GCM", ("gcm", b"\x05" * 12, b"", 0)), 0)
    + in_out("Decrypt", 0, b"\0" * 32)
    + close(0)
)

VAULT_HMAC = (
    open_session(0)
    + generate_key(0, mechanism("GENERIC_SECRET_KEY_GEN", ("null", 0)), 1,
                   u8(9) + template(attr("LABEL", "bytes", b"vault-hmac"), attr("SIGN", "bool", 1),
                                    attr("VERIFY", "bool", 1), attr("KEY_TYPE", "ulong", 0x10)))
    + init("sign", 0, mechanism("SHA256_HMAC", ("null", 0)), 0)
    + in_out("Sign", 0, b"to be signed")
    + init("verify", 0, mechanism("SHA256_HMAC", ("null", 0)), 0)
    + u8(23) + s(0) + buf(b"to be signed") + buf(b"\0" * 32)
)

VAULT_RSA = (
    open_session(0)
    + create(0, recipe(3))                 # RSA private key from the key material
    + create(0, recipe(4))                 # and its public key
    + init("encrypt", 0, mechanism("RSA_PKCS_OAEP", ("oaep", "CKM_SHA256", "CKG_MGF1_SHA256", 0, None)), 1)
    + in_out("Encrypt", 0, b"a data key", out="query", two_calls=1)
    + init("decrypt", 0, mechanism("RSA_PKCS_OAEP", ("oaep", "CKM_SHA256", "CKG_MGF1_SHA256", 0, None)), 0)
    + in_out("Decrypt", 0, b"\0" * 256)
    + init("sign", 0, mechanism("SHA256_RSA_PKCS_PSS"), 0)
    + in_out("Sign", 0, b"message", out="empty")
)

OBJECTS = (
    open_session(1)                        # the require_non_extractable slot
    + create(0, recipe(0, sensitive=0, extractable=1))
    + create(0, recipe(7))
    + u8(14) + s(0) + o(0) + GET_VALUES
    + u8(15) + s(0) + o(0) + SET
    + u8(11) + s(0) + o(0) + template(attr("LABEL", "bytes", b"copy"))
    + u8(13) + s(0) + o(1) + u8(0)
    + u8(12) + s(0) + o(0)
    + u8(12) + s(0) + o(0)                 # again: a stale handle
    + open_session(2)                      # read-only slot: read-write refused
    + open_session(2, rw=False)
    + create(1, recipe(7))
)

STALE = (
    open_session(0)
    + close(0)
    + init("encrypt", 0, mechanism("AES_CBC"), 7)
    + in_out("Encrypt", 0, b"x")
    + u8(6) + u8(3) + u8(0) + u8(0) + out_buf("query")      # slot list
    + u8(6) + u8(0) + u8(3) + out_buf("empty")              # mechanism list, empty buffer
    + u8(2) + u8(3)                                         # close all on token b
    + open_session(3)
    + login(1, 1, 2)                                        # SO with a wrong PIN
    + u8(5) + s(1)
)

DIGEST = (
    open_session(0)
    + u8(18) + s(0) + u8(0) + mechanism("SHA256", ("null", 0))
    + u8(22) + u8(0) + s(0) + buf(b"part one")
    + final("DigestFinal", 0, out="query")
    + final("DigestFinal", 0, out="empty")
    + final("DigestFinal", 0)
)

CALLS = {
    "vault-aes": VAULT_AES,
    "vault-hmac": VAULT_HMAC,
    "vault-rsa": VAULT_RSA,
    "objects": OBJECTS,
    "stale": STALE,
    "digest": DIGEST,
}


def main():
    for name, text in {**CONFIGS, **ENVS}.items():
        write("config", name, text.encode())
    for name, data in TEMPLATES.items():
        write("template", name, data)
    for name, data in MECHS.items():
        write("mechanism", name, data)
    for name, data in CALLS.items():
        write("calls", name, data)


if __name__ == "__main__":
    main()
