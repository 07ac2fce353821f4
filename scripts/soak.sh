#!/usr/bin/env bash
# The soak (benches/soak.rs): 32 threads of a Vault-like mix (lookups, AES-GCM and
# CBC-PAD+HMAC seal wrap, RSA-OAEP unwraps, random, session open/close) through the release
# libp11gate.so for $P11GATE_SOAK_SECONDS (default 600) per backend: first p11gate -> SoftHSMv2,
# then p11gate's built-in soft token; audit on, to a chained JSON-lines file per backend.
# Targets, per backend: zero errors; open descriptors equal at start (after warm-up) and end;
# resident memory growth under 1% (or under 256 KiB); `p11gate audit verify` OK and one record
# per audited call.
#
# Set-up, in a fresh directory under /var/tmp (removed at the end, audit files included):
#   - installs softhsm2 when softhsm2-util is missing;
#   - builds the release cdylib, the `p11gate` program and the soak bench;
#   - SoftHSMv2: its own softhsm2.conf (file object store) and a token `soak` (softhsm2-util);
#   - p11gate: P11GATE_HOME with a token `soak` made by `p11gate token init`; no configuration
#     file (P11GATE_CONFIG names a missing one);
#   - an audit key (`p11gate audit keygen`).
# The soak makes its keys (AES-256, HMAC secret, RSA-2048) on each token and destroys them.
#
# Environment: P11GATE_SOAK_SECONDS (default 600, warm-up included), P11GATE_SOAK_THREADS
# (default 32), P11GATE_SOAK_REPORT_SECONDS (default 30), P11GATE_SOAK_BACKENDS (default
# "softhsm soft"), CARGO_TARGET_DIR as usual.
# Exit status: 0 when every target is met on every backend, 3 when one is missed, other values
# on errors.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_packages softhsm2:softhsm2-util

target=${CARGO_TARGET_DIR:-target}
step "Building (release: libp11gate.so, p11gate, the soak bench)"
cargo build --release --quiet
cargo bench --bench soak --no-run --quiet
SOAK_EXE=$(cargo bench --bench soak --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*/soak-[^"]*"' | tail -1 | sed 's/^"executable":"//; s/"$//')
[ -x "$SOAK_EXE" ] || { echo "cannot find the soak bench binary" >&2; exit 1; }

work=$(mktemp -d /var/tmp/p11gate-soak.XXXXXX)
trap 'rm -rf "$work"' EXIT
so_pin=soak-so-pin-4093
user_pin=soak-user-pin-7720
p11gate="$(cd "$target/release" && pwd)/p11gate"

export P11GATE_SOAK_SECONDS=${P11GATE_SOAK_SECONDS:-600}
export P11GATE_SOAK_MODULE P11GATE_SOAK_P11GATE=$p11gate P11GATE_SOAK_PIN=$user_pin
P11GATE_SOAK_MODULE="$(cd "$target/release" && pwd)/libp11gate.so"
export P11GATE_SOAK_TOKEN=soak
export SOFTHSM2_CONF="$work/softhsm2.conf" P11GATE_CONFIG="$work/none.toml"
export P11GATE_LOG="$work/p11gate.log" P11GATE_LOG_LEVEL=warn
export P11GATE_AUDIT_KEY="$work/audit.key"
unset P11GATE_UPSTREAM P11GATE_APP P11GATE_HOME P11GATE_NUM_SLOTS P11GATE_AUDIT

step "Tokens and audit key in $work"
mkdir -p "$work/softhsm" "$work/home"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$work/softhsm" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label soak --so-pin "$so_pin" --pin "$user_pin" >/dev/null
echo "SoftHSMv2 $(softhsm2-util --version): token soak"
printf '%s\n%s\n' "$so_pin" "$user_pin" | P11GATE_HOME="$work/home" "$p11gate" token init --label soak
"$p11gate" audit keygen "$P11GATE_AUDIT_KEY" >/dev/null
echo "audit key: $P11GATE_AUDIT_KEY"

status=0
for backend in ${P11GATE_SOAK_BACKENDS:-softhsm soft}; do
    step "Soak: $backend, $P11GATE_SOAK_SECONDS s"
    log="$work/$backend.log"
    rc=0
    if [ "$backend" = soft ]; then
        P11GATE_HOME="$work/home" P11GATE_AUDIT="file:$work/audit-$backend.jsonl" \
            "$SOAK_EXE" "$backend" | tee "$log" || rc=$?
    else
        P11GATE_AUDIT="file:$work/audit-$backend.jsonl" "$SOAK_EXE" "$backend" | tee "$log" || rc=$?
    fi
    # Keep the audit files from filling the disk: each is verified and counted by the soak.
    rm -f "$work/audit-$backend.jsonl"
    case "$rc" in
        0) ;;
        3) [ "$status" != 0 ] || status=3 ;;
        *) echo "the $backend soak could not run (exit $rc)" >&2; status=$rc ;;
    esac
    if grep -q 'WARN\|ERROR' "$P11GATE_LOG" 2>/dev/null; then
        echo "-- p11gate's log ($backend):"
        tail -20 "$P11GATE_LOG"
    fi
done

step "Summary ($P11GATE_SOAK_SECONDS s per backend, ${P11GATE_SOAK_THREADS:-32} threads)"
field() { grep -o " $2=[^ ]*" <<<"$1" | cut -d= -f2; }
printf '%-8s %9s %8s %8s %8s %8s %8s %8s %7s %15s %9s %6s %10s %7s\n' backend 'ops/s' find gcm \
    cbc_hmac rsa_oaep random session errors 'RSS KiB s->e' 'RSS %' fds 'audit' verdict
for backend in ${P11GATE_SOAK_BACKENDS:-softhsm soft}; do
    line=$(grep '^SOAK-RESULT' "$work/$backend.log" 2>/dev/null || true)
    if [ -z "$line" ]; then
        printf '%-8s (no result)\n' "$backend"
        continue
    fi
    printf '%-8s %9s %8s %8s %8s %8s %8s %8s %7s %15s %9s %6s %10s %7s\n' "$backend" \
        "$(field "$line" ops_per_s)" "$(field "$line" find_ops_per_s)" \
        "$(field "$line" gcm_ops_per_s)" "$(field "$line" cbc_hmac_ops_per_s)" \
        "$(field "$line" rsa_oaep_ops_per_s)" "$(field "$line" random_ops_per_s)" \
        "$(field "$line" session_ops_per_s)" "$(field "$line" errors)" \
        "$(field "$line" rss_start_kib)->$(field "$line" rss_end_kib)" \
        "$(field "$line" rss_growth_pct)" "$(field "$line" fds_start)->$(field "$line" fds_end)" \
        "$(field "$line" audit)" "$(field "$line" verdict)"
done
[ "$status" = 0 ] && echo "all targets met" || echo "a target was missed (exit $status)"
exit "$status"
