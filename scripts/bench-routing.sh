#!/usr/bin/env bash
# What slot mapping and policy add over p11gate's plain forwarding, measured in one run.
#
# Two copies of libp11gate.so are loaded in one process: two paths are two independent module
# instances. The baseline ("direct" in the bench's table) is the plain core, with SoftHSMv2 as
# its one upstream and slot ids passed through. The measured side ("p11gate") runs under a
# configuration with a mapped virtual slot on the same token, an app, mechanism rules (a profile
# and a deny list that the workloads do not use) and require_non_extractable. Both sides do the
# same work on the same keys, so the difference is the routing and policy cost. The issue's
# target: at most 50 ns added per call.
#
# Extra arguments go to the bench (for example --gate-first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

cargo build --release --lib --quiet
cargo bench --bench forwarding --no-run --quiet
so=target/release/libp11gate.so
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$so" "$work/libp11gate-plain.so"
cp "$so" "$work/libp11gate-mapped.so"
cat >"$work/mapped.toml" <<TOML
default_app = "bench"

[[upstream]]
name = "softhsm"
path = "$(softhsm_module)"
profiles = ["no-aes-cbc"]
deny = ["CKM_DES3_CBC", "CKM_DES3_ECB", "CKM_SHA_1_HMAC"]

[[slot]]
id = 0
upstream = "softhsm"
token_label = "p11gate-bench"
require_non_extractable = true

[[app]]
name = "bench"
slots = [0]

[log]
level = "warn"
TOML

step "Routing + policy (mapped slot, rules) vs plain forwarding, one run"
echo "In the table: 'direct' = plain p11gate (passthrough), 'p11gate' = p11gate with slot mapping and policy."
P11GATE_BENCH_DIRECT="$work/libp11gate-plain.so" \
P11GATE_BENCH_GATE="$work/libp11gate-mapped.so" \
P11GATE_BENCH_GATE_CONFIG="$work/mapped.toml" \
  cargo bench --bench forwarding -- "$@"
