#!/usr/bin/env bash
# The forwarding benchmark: what p11gate costs in front of SoftHSMv2.
#
# 1. Builds the release cdylib and the bench.
# 2. Runs `cargo bench --bench forwarding`: six workloads (C_GetSessionInfo, AES-GCM encrypt,
#    HMAC-SHA256 sign, C_GenerateRandom, find by label, RSA-2048 OAEP decrypt) at 1 and 2 threads,
#    directly and through p11gate, interleaved round by round in one process; prints a table,
#    one JSON line per workload and whether the timing targets (<= 50 ns added per call, >= 97%
#    of direct throughput) hold. About 1.5 minutes; P11GATE_BENCH_ROUNDS / P11GATE_BENCH_BATCH_MS
#    lengthen it (see benches/forwarding.rs).
# 3. Runs scripts/callgrind-per-call.sh: instructions (callgrind) and system calls (strace) that
#    p11gate adds per forwarded call; targets <= 40 instructions, no system call.
#
# On a Debian machine (as root) it installs valgrind and strace when they are missing.
# Arguments go to the bench binary (e.g. `--processes`: one child process per side).
# Environment: P11GATE_BENCH_SKIP_COUNT=1 skips step 3. Exit status: 0 when every target is met,
# 3 when a target is missed, other values on errors.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

missing=()
for prog in valgrind strace softhsm2-util; do
    command -v "$prog" >/dev/null 2>&1 || missing+=("$prog")
done
if [ "${#missing[@]}" -gt 0 ]; then
    pkgs=$(printf '%s\n' "${missing[@]}" | sed 's/^softhsm2-util$/softhsm2/' | sort -u | tr '\n' ' ')
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "Installing $pkgs"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs
    else
        echo "missing programs: ${missing[*]}; install the Debian packages: $pkgs" >&2
        exit 1
    fi
fi

step "Building (release)"
cargo build --release --lib
cargo bench --bench forwarding --no-run

step "Timing: direct vs through p11gate, interleaved"
timing_log=$(mktemp)
trap 'rm -f "$timing_log"' EXIT
cargo bench --bench forwarding -- "$@" | tee "$timing_log"

count_status=0
if [ "${P11GATE_BENCH_SKIP_COUNT:-0}" != 1 ]; then
    step "Instructions and system calls per forwarded call"
    scripts/callgrind-per-call.sh || count_status=$?
    if [ "$count_status" != 0 ] && [ "$count_status" != 3 ]; then
        exit "$count_status"
    fi
fi

step "Summary"
if grep -q '^P11GATE_BENCH_TIMING_TARGETS=met' "$timing_log"; then
    echo "timing targets: met"
    timing_ok=1
else
    echo "timing targets: NOT met (see the table above)"
    timing_ok=0
fi
if [ "${P11GATE_BENCH_SKIP_COUNT:-0}" != 1 ]; then
    [ "$count_status" = 0 ] && echo "instruction / system call targets: met" ||
        echo "instruction / system call targets: NOT met (see above)"
fi
[ "$timing_ok" = 1 ] && [ "$count_status" = 0 ] || exit 3
