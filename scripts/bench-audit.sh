#!/usr/bin/env bash
# What the audit trail costs: AES-256-GCM encryption of 32 bytes through p11gate to SoftHSMv2
# with audit off, to syslog (a real rsyslogd), to the JSON-lines file with its HMAC chain (fsync
# on), and to both, plus SoftHSMv2 directly; at 1 and 2 threads, in one process and one
# interleaved run (benches/audit.rs). Then instructions per audited call on the calling thread
# (scripts/callgrind-audit.sh).
#
# Set-up done here:
#   - builds the release cdylib and the `p11gate` program (audit keygen / verify) and the bench;
#   - makes an audit key with `p11gate audit keygen`;
#   - starts a private rsyslogd (Debian's, installed when missing) with its own configuration:
#     imuxsock on <dir>/log.sock without the special parser and without rate limiting, omfile to
#     <dir>/out.log; it runs in the foreground (-n) as a child of this script and is stopped at
#     the end. It shares the machine's CPUs with the bench: its CPU time is part of the cost and
#     the bench reports it.
#   - the token (a fresh SoftHSMv2 token) is made by the bench itself.
#
# The bench checks, after every batch, that rsyslogd's output and the audit file hold exactly
# one C_Encrypt record per operation (nothing lost, nothing duplicated, no dropped/outage
# record), and after every round that `p11gate audit verify` accepts the audit files.
#
# Environment: P11GATE_BENCH_ROUNDS (default 30), P11GATE_BENCH_BATCH_MS (default 200),
# P11GATE_BENCH_THREADS (default 1,2), P11GATE_BENCH_SKIP_COUNT=1 skips the callgrind step,
# P11GATE_COUNT_N (callgrind operations, default 2000), CARGO_TARGET_DIR as usual.
# Exit status: 0 when every target is met, 3 when one is missed, other values on errors.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_packages rsyslog:rsyslogd softhsm2:softhsm2-util valgrind:valgrind

target=${CARGO_TARGET_DIR:-target}
step "Building (release: libp11gate.so, p11gate, the audit bench)"
cargo build --release --quiet
cargo bench --bench audit --no-run --quiet
BENCH_EXE=$(cargo bench --bench audit --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*/audit-[^"]*"' | tail -1 | sed 's/^"executable":"//; s/"$//')
[ -x "$BENCH_EXE" ] || { echo "cannot find the audit bench binary" >&2; exit 1; }
export BENCH_EXE

work=$(mktemp -d /var/tmp/p11gate-bench-audit.XXXXXX)
rsyslog_pid=""
cleanup() {
    if [ -n "$rsyslog_pid" ] && kill -0 "$rsyslog_pid" 2>/dev/null; then
        kill "$rsyslog_pid" 2>/dev/null || true
        wait "$rsyslog_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step "Audit key and private rsyslogd in $work"
"$target/release/p11gate" audit keygen "$work/audit.key"
cat >"$work/rsyslog.conf" <<CONF
global(workDirectory="$work")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="$work/log.sock" CreatePath="on" UseSpecialParser="off" RateLimit.Interval="0")
*.* action(type="omfile" file="$work/out.log")
CONF
rsyslogd -n -f "$work/rsyslog.conf" -i "$work/rsyslogd.pid" &
rsyslog_pid=$!
for _ in $(seq 100); do
    [ -S "$work/log.sock" ] && break
    sleep 0.05
done
[ -S "$work/log.sock" ] || { echo "rsyslogd did not create $work/log.sock" >&2; exit 1; }
logger --socket-errors=on -u "$work/log.sock" -t p11gate-bench-probe "probe"
for _ in $(seq 100); do
    grep -q p11gate-bench-probe "$work/out.log" 2>/dev/null && break
    sleep 0.05
done
grep -q p11gate-bench-probe "$work/out.log" || { echo "rsyslogd does not write $work/out.log" >&2; exit 1; }
echo "rsyslogd $(rsyslogd -v | awk 'NR == 1 { print $2 }') running, pid $rsyslog_pid"

step "Timing: audit off / syslog / file / both, SoftHSMv2 direct; interleaved, one process"
timing_log="$work/timing.log"
P11GATE_BENCH_SYSLOG_SOCKET="$work/log.sock" \
P11GATE_BENCH_SYSLOG_OUT="$work/out.log" \
P11GATE_BENCH_RSYSLOG_PID="$rsyslog_pid" \
P11GATE_BENCH_AUDIT_KEY="$work/audit.key" \
P11GATE_BENCH_AUDIT_DIR="$work" \
P11GATE_BENCH_CLI="$target/release/p11gate" \
    "$BENCH_EXE" | tee "$timing_log"
echo "rsyslogd output: $(wc -l <"$work/out.log") lines; CPU of rsyslogd in all: $(ps -o times= -p "$rsyslog_pid" | tr -d ' ') s"

count_status=0
if [ "${P11GATE_BENCH_SKIP_COUNT:-0}" != 1 ]; then
    step "Instructions per audited call on the calling thread (callgrind)"
    P11GATE_BENCH_SYSLOG_SOCKET="$work/log.sock" P11GATE_BENCH_SYSLOG_OUT="$work/out.log" \
    P11GATE_BENCH_AUDIT_KEY="$work/audit.key" P11GATE_BENCH_CLI="$target/release/p11gate" \
        scripts/callgrind-audit.sh || count_status=$?
    if [ "$count_status" != 0 ] && [ "$count_status" != 3 ]; then
        exit "$count_status"
    fi
fi

step "Summary"
timing_ok=0
grep -q '^P11GATE_AUDIT_BENCH_TARGETS=met' "$timing_log" && timing_ok=1
echo "throughput target (>= 95% of audit off, syslog / file / both, 1 and 2 threads): $([ $timing_ok = 1 ] && echo met || echo 'NOT met')"
if [ "${P11GATE_BENCH_SKIP_COUNT:-0}" != 1 ]; then
    echo "instruction target (<= 2000 per audited call, calling thread): $([ "$count_status" = 0 ] && echo met || echo 'NOT met')"
fi
[ "$timing_ok" = 1 ] && [ "$count_status" = 0 ] || exit 3
