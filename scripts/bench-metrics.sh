#!/usr/bin/env bash
# What metrics cost in wall-clock time: p11gate with metrics on against p11gate with metrics
# off, one interleaved run of the forwarding bench (benches/forwarding.rs).
#
# Two copies of libp11gate.so are loaded in one process (two paths are two module instances),
# both forwarding to SoftHSMv2 with its slots passed through. The baseline ("direct" in the
# bench's table) has metrics off; the measured side ("p11gate") runs under a configuration with
# the same upstream and [metrics] on (a temporary directory, interval_s = 1, so the writer
# thread runs during the measurement). The difference is what metrics add per call.
# Workloads default to C_GetSessionInfo and AES-GCM encryption of 32 bytes
# (P11GATE_BENCH_WORKLOADS overrides). Wall-clock figures need a quiet machine; on a busy one,
# scripts/callgrind-metrics.sh (instruction counts) is the reliable measure.
#
# Extra arguments go to the bench.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

cargo build --release --lib --quiet
cargo bench --bench forwarding --no-run --quiet
so=${CARGO_TARGET_DIR:-target}/release/libp11gate.so
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$so" "$work/libp11gate-off.so"
cp "$so" "$work/libp11gate-on.so"
mkdir "$work/metrics"
cat >"$work/metrics.toml" <<TOML
[[upstream]]
name = "softhsm"
path = "$(softhsm_module)"

[metrics]
dir = "$work/metrics"
interval_s = 1
TOML

step "Metrics on vs off, one run"
echo "In the table: 'direct' = p11gate with metrics off, 'p11gate' = p11gate with metrics on."
unset P11GATE_METRICS P11GATE_METRICS_INTERVAL
# The file is removed when the bench exits: watch for it meanwhile, to be sure metrics were on.
( while [ ! -e "$work/seen" ]; do
      ls "$work/metrics" 2>/dev/null | grep -q '^p11gate-.*\.prom$' && touch "$work/seen"
      sleep 0.5
  done ) &
watcher=$!
trap 'kill $watcher 2>/dev/null; rm -rf "$work"' EXIT
P11GATE_BENCH_WORKLOADS=${P11GATE_BENCH_WORKLOADS:-get_session_info,aes_gcm_encrypt_32} \
P11GATE_BENCH_DIRECT="$work/libp11gate-off.so" \
P11GATE_BENCH_GATE="$work/libp11gate-on.so" \
P11GATE_BENCH_GATE_CONFIG="$work/metrics.toml" \
  cargo bench --bench forwarding -- "$@" || status=$?
[ -e "$work/seen" ] || { echo "metrics were not on in the measured side: no file in $work/metrics" >&2; exit 1; }
echo "metrics were on in the measured side (its file was seen in $work/metrics)"
# The bench's own exit status: 3 when its timing targets (p11gate vs SoftHSMv2 direct) are not
# met, which here compare metrics on with metrics off.
exit "${status:-0}"
