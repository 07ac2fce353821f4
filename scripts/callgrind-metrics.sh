#!/usr/bin/env bash
# Instructions metrics add per call, counted with callgrind: metrics off and on (and, with
# BASE_LIB, a library built without metrics), on two workloads through p11gate to SoftHSMv2:
#   - C_GetSessionInfo: benches/forwarding.rs `--count gate N` (one call per operation);
#   - AES-256-GCM encryption of 32 bytes: benches/audit.rs `--count off N`
#     (C_EncryptInit + C_Encrypt, two calls per operation; audit off).
# Each runs under `valgrind --tool=callgrind --toggle-collect=<the bench's loop function>` with
# N and 2N operations: (Ir(2N) - Ir(N)) / N is one operation, setup and warm-up cancel out. Only
# the loop function is collected, on the calling thread: the metrics writer thread never runs
# it (its cost is per write, every interval_s, not per call).
#
# The instruction ratio off/on is what throughput would be if every instruction cost the same;
# the two rdtsc per call cost more than their two instructions (about 13 ns each on the test
# machine, see src/metrics/clock.rs), so the script also prints that estimate.
#
# Environment: P11GATE_COUNT_N (default 4000); BASE_LIB (optional: a libp11gate.so without
# metrics, e.g. built from the commit before, counted as "base"); FORWARDING_EXE / AUDIT_EXE
# (default: built here); CARGO_TARGET_DIR as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${P11GATE_COUNT_N:-4000}
N2=$((2 * N))
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }

bench_exe() {
    cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null |
        grep -o "\"executable\":\"[^\"]*/$1-[^\"]*\"" | tail -1 | sed 's/^"executable":"//; s/"$//'
}
if [ -z "${FORWARDING_EXE:-}" ] || [ -z "${AUDIT_EXE:-}" ]; then
    # The benches load the libp11gate.so beside them: build it first, or it would be stale.
    cargo build --release --lib --quiet
    FORWARDING_EXE=${FORWARDING_EXE:-$(bench_exe forwarding)}
    AUDIT_EXE=${AUDIT_EXE:-$(bench_exe audit)}
fi
for exe in "$FORWARDING_EXE" "$AUDIT_EXE"; do
    [ -x "$exe" ] || { echo "cannot find the bench binary $exe" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-target}
LIB=${P11GATE_BENCH_GATE:-$target/release/libp11gate.so}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/metrics"
export P11GATE_LOG=stderr P11GATE_LOG_LEVEL=warn P11GATE_CONFIG=/nonexistent/p11gate.toml
unset P11GATE_METRICS P11GATE_METRICS_INTERVAL

variants=(off on)
[ -n "${BASE_LIB:-}" ] && variants=(base off on)

# count VARIANT WORKLOAD OPS: the callgrind total of the loop.
count() {
    local variant=$1 workload=$2 ops=$3 out="$work/cg.$1.$2.$3"
    local -a env=(env P11GATE_BENCH_GATE="$LIB")
    case "$variant" in
        base) env=(env P11GATE_BENCH_GATE="$BASE_LIB") ;;
        on) env+=(P11GATE_METRICS="$work/metrics" P11GATE_METRICS_INTERVAL=3600) ;;
    esac
    local -a cmd
    case "$workload" in
        session_info) cmd=(--toggle-collect=p11gate_bench_count_loop "$FORWARDING_EXE" --count gate "$ops") ;;
        aes_gcm_32) cmd=(--toggle-collect=p11gate_bench_audit_loop "$AUDIT_EXE" --count off "$ops") ;;
    esac
    if ! "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" \
        >"$out.stdout" 2>"$out.stderr"; then
        echo "callgrind $variant $workload $ops failed:" >&2
        tail -20 "$out.stderr" >&2
        exit 1
    fi
    awk '/^totals:/ { print $2; exit }' "$out"
}

per_op() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }'; }

# own VARIANT WORKLOAD: instructions per operation in metrics' own code: functions of
# src/metrics (also where inlined into the exported functions) and the thread-local lookups
# (__tls_get_addr). The rest of the difference between "on" and "off" is elsewhere, e.g. glibc
# taking its multi-threaded paths in malloc and system calls once the writer thread exists (a
# process with one thread only, as these benches are with metrics off, skips their locking).
own() {
    if ! command -v callgrind_annotate >/dev/null 2>&1; then echo "-"; return; fi
    local a b
    a=$(own_total "$work/cg.$1.$2.$N")
    b=$(own_total "$work/cg.$1.$2.$N2")
    per_op "$a" "$b"
}
own_total() {
    callgrind_annotate --auto=no --inclusive=no --threshold=100 "$1" 2>/dev/null |
        sed -nE 's/^ *([0-9,]+) +\([ 0-9.]+%\) +(.*)$/\2\t\1/p' | tr -d ',' |
        awk -F'\t' '$1 ~ /src\/metrics\/|p11gate::metrics::|__tls_get_addr/ { s += $2 } END { print s + 0 }'
}

echo "callgrind, $N and $N2 operations per run; library $LIB${BASE_LIB:+, base $BASE_LIB}"
declare -A ir
for workload in session_info aes_gcm_32; do
    for variant in "${variants[@]}"; do
        ir[$variant.$workload]=$(per_op "$(count "$variant" "$workload" "$N")" "$(count "$variant" "$workload" "$N2")")
    done
done
# Whether metrics were on: the loop ran the counting function (p11gate::metrics::record).
for f in "$work"/cg.*.*.[0-9]*; do
    case "$f" in *.stdout | *.stderr) continue ;; esac
    counted=$(grep -c 'p11gate::metrics::record' "$f" || true)
    case "$f" in
        */cg.on.*) [ "$counted" != 0 ] || { echo "metrics were not on in $f" >&2; exit 1; } ;;
        *) [ "$counted" = 0 ] || { echo "metrics were on in $f" >&2; exit 1; } ;;
    esac
done

echo
printf '%-16s %-8s %12s %14s %14s %12s %16s\n' workload metrics "Ir/op" "added/op" "added/call" "Ir off/on" "metrics' own/call"
json=""
for workload in session_info aes_gcm_32; do
    calls=1
    [ "$workload" = aes_gcm_32 ] && calls=2
    for variant in "${variants[@]}"; do
        ref=${ir[off.$workload]}
        [ "$variant" = off ] && ref=${ir[base.$workload]:-$ref}
        added=$(awk -v a="${ir[$variant.$workload]}" -v b="$ref" 'BEGIN { printf "%+.1f", a - b }')
        call=$(awk -v a="$added" -v c="$calls" 'BEGIN { printf "%+.1f", a / c }')
        ratio=$(awk -v a="$ref" -v b="${ir[$variant.$workload]}" 'BEGIN { printf "%.4f", a / b }')
        mine="-"
        if [ "$variant" = on ]; then
            mine=$(awk -v a="$(own on "$workload")" -v b="$(own off "$workload")" -v c="$calls" 'BEGIN { printf "%+.1f", (a - b) / c }')
        fi
        [ "$variant" = base ] && { added="-"; call="-"; ratio="-"; }
        printf '%-16s %-8s %12s %14s %14s %12s %16s\n' "$workload" "$variant" "${ir[$variant.$workload]}" "$added" "$call" "$ratio" "$mine"
        json+="{\"bench\":\"p11gate-metrics-count\",\"workload\":\"$workload\",\"metrics\":\"$variant\",\"ir_per_op\":${ir[$variant.$workload]},\"calls_per_op\":$calls,\"own_per_call\":\"$mine\"}"$'\n'
    done
done
echo "(off is compared with base when BASE_LIB is given, on with off)"
printf '%s' "$json"
