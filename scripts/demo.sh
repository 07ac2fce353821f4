#!/usr/bin/env bash
# p11gate demo: build, make a token, drive p11gate with pkcs11-tool the way Vault's seal would,
# and print the `seal "pkcs11"` stanza to paste into Vault's configuration.
#
# Runs on a fresh Debian machine: installs what it needs (opensc) when missing. The token is
# p11gate's built-in soft token (no HSM, no SoftHSMv2); DEMO_UPSTREAM=softhsm puts a SoftHSMv2
# token behind p11gate instead.
# Everything it creates lives under $DEMO_DIR (default: target/demo); run it again to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
source scripts/lib.sh

need_packages opensc:pkcs11-tool
[ "${DEMO_UPSTREAM:-soft}" = softhsm ] && need_packages softhsm2:softhsm2-util

step "Building libp11gate.so (release)"
cargo build --release --quiet
module="$here/target/release/libp11gate.so"

demo_dir="${DEMO_DIR:-$here/target/demo}"
rm -rf "$demo_dir"
mkdir -p "$demo_dir/tokens"
so_pin=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
user_pin=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$user_pin" >"$demo_dir/pin"
chmod 600 "$demo_dir/pin"

if [ "${DEMO_UPSTREAM:-soft}" = softhsm ]; then
  export SOFTHSM2_CONF="$demo_dir/softhsm2.conf"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$demo_dir/tokens" >"$SOFTHSM2_CONF"
  softhsm_lib=$(softhsm_module)
  step "Making a token 'vault' (SoftHSMv2 in $demo_dir) behind p11gate"
  softhsm2-util --init-token --free --label vault --so-pin "$so_pin" --pin "$user_pin" >/dev/null
  export P11GATE_UPSTREAM="$softhsm_lib"
  backend_env="#   P11GATE_UPSTREAM=$softhsm_lib
#   SOFTHSM2_CONF=$SOFTHSM2_CONF"
else
  step "Making a token 'vault': p11gate's built-in soft token in $demo_dir/tokens"
  export P11GATE_HOME="$demo_dir/tokens"
  unset P11GATE_UPSTREAM
  printf '%s\n%s\n' "$so_pin" "$user_pin" | "$here/target/release/p11gate" token init --label vault
  backend_env="#   P11GATE_HOME=$P11GATE_HOME"
fi

export P11GATE_CONFIG="$demo_dir/p11gate.toml"   # absent: the environment says everything
export P11GATE_LOG="$demo_dir/p11gate.log"
export P11GATE_LOG_LEVEL=info
# The audit trail: a JSON-lines file with its HMAC chain (and syslog, if a daemon listens).
"$here/target/release/p11gate" audit keygen "$demo_dir/audit.key" >/dev/null
audit_sinks="file:$demo_dir/audit.jsonl"
if [ -S /dev/log ] && command -v logger >/dev/null && logger --socket-errors=on -t p11gate-demo "p11gate demo starting" 2>/dev/null; then
  audit_sinks="syslog,$audit_sinks"
fi
export P11GATE_AUDIT="$audit_sinks" P11GATE_AUDIT_KEY="$demo_dir/audit.key"
tool() { pkcs11-tool --module "$module" "$@"; }

step "pkcs11-tool --show-info (p11gate answers C_GetInfo itself)"
tool --show-info

step "Slots and the token, as the upstream reports them"
tool --list-slots

step "The mechanisms Vault chooses among"
tool --list-mechanisms | grep -E 'AES-CBC-PAD|AES-CBC,|AES-GCM|RSA-PKCS-OAEP|SHA256-HMAC' || true

step "Generating Vault's keys (non-extractable): AES-256 'vault-key', HMAC 'vault-hmac', RSA-2048 'vault-rsa'"
key_id=$(printf '%d' "0x$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')")
key_id_hex=$(printf '%s' "$key_id" | od -An -tx1 | tr -d ' \n')   # Vault stores the id as decimal digits
hmac_id_hex=$(printf 'hmac-%s' "$key_id" | od -An -tx1 | tr -d ' \n')
tool --login --pin "$user_pin" --keygen --key-type AES:32 --label vault-key --id "$key_id_hex" --sensitive >/dev/null
tool --login --pin "$user_pin" --keygen --key-type GENERIC:32 --label vault-hmac --id "$hmac_id_hex" --usage-sign --sensitive >/dev/null
tool --login --pin "$user_pin" --keypairgen --key-type rsa:2048 --label vault-rsa >/dev/null
tool --login --pin "$user_pin" --list-objects --type secrkey

step "Seal wrap round trip: AES-CBC-PAD encrypt + HMAC-SHA256, then verify and decrypt"
head -c 32 /dev/urandom >"$demo_dir/data-key"
iv=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
tool --login --pin "$user_pin" --encrypt -m AES-CBC-PAD --iv "$iv" --id "$key_id_hex" \
  -i "$demo_dir/data-key" -o "$demo_dir/sealed" 2>/dev/null
tool --login --pin "$user_pin" --sign -m SHA256-HMAC --id "$hmac_id_hex" \
  -i "$demo_dir/sealed" -o "$demo_dir/sealed.mac" 2>/dev/null
tool --login --pin "$user_pin" --verify -m SHA256-HMAC --id "$hmac_id_hex" \
  -i "$demo_dir/sealed" --signature-file "$demo_dir/sealed.mac" 2>/dev/null | grep -v "^Using"
tool --login --pin "$user_pin" --decrypt -m AES-CBC-PAD --iv "$iv" --id "$key_id_hex" \
  -i "$demo_dir/sealed" -o "$demo_dir/unsealed" 2>/dev/null
cmp -s "$demo_dir/data-key" "$demo_dir/unsealed" && echo "data key recovered: $(stat -c %s "$demo_dir/sealed") bytes sealed, 32 unsealed, identical"

step "Entropy augmentation: C_GenerateRandom"
tool --generate-random 64 2>/dev/null | od -An -tx1 | head -2

step "What p11gate logged ($P11GATE_LOG)"
cat "$P11GATE_LOG"
if grep -qF "$user_pin" "$P11GATE_LOG" "$demo_dir"/*.log 2>/dev/null; then
  echo "FAIL: the PIN appears in the log" >&2
  exit 1
fi
echo "(the PIN appears nowhere in it)"

step "The audit trail ($demo_dir/audit.jsonl): the seal wrap's records"
grep -E '"fn":"C_(Encrypt|Sign|Verify|Decrypt)"' "$demo_dir/audit.jsonl" | cut -c1-400
step "p11gate audit verify: the HMAC chain is intact"
"$here/target/release/p11gate" audit verify "$demo_dir/audit.jsonl" --key "$demo_dir/audit.key"
step "p11gate audit summary"
"$here/target/release/p11gate" audit summary "$demo_dir/audit.jsonl"
if grep -qF "$user_pin" "$demo_dir/audit.jsonl"; then
  echo "FAIL: the PIN appears in the audit trail" >&2
  exit 1
fi
echo "(the PIN appears nowhere in the audit trail)"

step "Paste this into Vault's configuration (Vault Enterprise, seal \"pkcs11\")"
cat <<STANZA
seal "pkcs11" {
  lib            = "$module"
  token_label    = "vault"
  pin            = "file://$demo_dir/pin"
  key_label      = "vault-key"
  hmac_key_label = "vault-hmac"
  mechanism      = "0x1085"   # CKM_AES_CBC_PAD with HMAC; or "0x1087" (AES-GCM), "0x0009" (RSA-OAEP)
}
# And in Vault's service environment (systemd Environment=), so p11gate finds the token:
$backend_env
STANZA
