#!/usr/bin/env bash
# p11gate's built-in soft token vs SoftHSMv2: AES-GCM encrypt and
# decrypt, HMAC-SHA256, lookup by label with 4 and with 10,000 objects, RSA-2048 OAEP decrypt,
# C_GenerateRandom; at 1 and 2 threads, in one process and one interleaved run
# (benches/soft.rs); then resident memory with the 10,000-object token open.
#
# Set-up done here, in a fresh directory under /var/tmp (removed at the end):
#   - installs softhsm2 when softhsm2-util is missing (valgrind too, for --profile);
#   - builds the release cdylib, the `p11gate` program and the bench;
#   - SoftHSMv2: its own softhsm2.conf (file object store) and two tokens made by softhsm2-util,
#     `sbench-few` and `sbench-many`;
#   - p11gate: P11GATE_HOME with P11GATE_NUM_SLOTS=2, both tokens made by `p11gate token init`
#     (SO PIN and user PIN on stdin); no upstream (P11GATE_CONFIG names a missing file),
#     P11GATE_AUDIT=off;
#   - `bench --populate SIDE N` on each side: the workload keys (AES-256, HMAC generic secret,
#     RSA-2048) on sbench-few, N private generic secrets on sbench-many (C_CreateObject).
#
# Arguments: --profile WORKLOAD[,WORKLOAD...] also runs callgrind on N operations of each
# workload through p11gate (`bench --count`) and prints the top functions (inclusive).
# Workload names: aes_gcm_encrypt_32 aes_gcm_decrypt_32 hmac_sha256_sign_32 find_few find_many
# rsa2048_oaep_decrypt generate_random_32.
#
# Environment:
#   P11GATE_SBENCH_OBJECTS (default 10000): objects on p11gate's sbench-many;
#   P11GATE_SBENCH_SOFTHSM_OBJECTS (default: the same): objects on SoftHSMv2's sbench-many;
#   P11GATE_COUNT_N (default 2000): operations per callgrind profile (find_many: N/10,
#     rsa2048_oaep_decrypt: N/40);
#   P11GATE_BENCH_ROUNDS, P11GATE_BENCH_BATCH_MS, P11GATE_BENCH_THREADS,
#   P11GATE_BENCH_WORKLOADS: see benches/soft.rs. CARGO_TARGET_DIR as usual.
# Exit status: 0 when every target is met, 3 when one is missed, other values on errors.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

profile=""
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=${2:?--profile needs a workload list}; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

need_packages softhsm2:softhsm2-util
[ -z "$profile" ] || need_packages valgrind:valgrind

target=${CARGO_TARGET_DIR:-target}
step "Building (release: libp11gate.so, p11gate, the soft bench)"
cargo build --release --quiet
cargo bench --bench soft --no-run --quiet
BENCH_EXE=$(cargo bench --bench soft --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*/soft-[^"]*"' | tail -1 | sed 's/^"executable":"//; s/"$//')
[ -x "$BENCH_EXE" ] || { echo "cannot find the soft bench binary" >&2; exit 1; }

work=$(mktemp -d /var/tmp/p11gate-bench-soft.XXXXXX)
trap 'rm -rf "$work"' EXIT
so_pin=sbench-so-pin-5150
user_pin=sbench-user-pin-7316
objects=${P11GATE_SBENCH_OBJECTS:-10000}
softhsm_objects=${P11GATE_SBENCH_SOFTHSM_OBJECTS:-$objects}

export P11GATE_SBENCH_USER_PIN=$user_pin
export P11GATE_SBENCH_SOFTHSM
P11GATE_SBENCH_SOFTHSM=$(softhsm_module)
P11GATE_SBENCH_GATE="$(cd "$target/release" && pwd)/libp11gate.so"
export P11GATE_SBENCH_GATE
export SOFTHSM2_CONF="$work/softhsm2.conf"
export P11GATE_HOME="$work/p11gate" P11GATE_NUM_SLOTS=2 P11GATE_CONFIG="$work/none.toml"
export P11GATE_AUDIT=off P11GATE_LOG=stderr P11GATE_LOG_LEVEL=warn
unset P11GATE_UPSTREAM P11GATE_APP

step "Tokens in $work"
mkdir -p "$work/softhsm"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$work/softhsm" >"$SOFTHSM2_CONF"
for label in sbench-few sbench-many; do
    softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$user_pin" >/dev/null
done
echo "SoftHSMv2 $(softhsm2-util --version): sbench-few, sbench-many"
slot=0
for label in sbench-few sbench-many; do
    printf '%s\n%s\n' "$so_pin" "$user_pin" |
        "$target/release/p11gate" token init --slot "$slot" --label "$label"
    slot=$((slot + 1))
done

step "Objects: keys on sbench-few, $softhsm_objects (SoftHSMv2) / $objects (p11gate) on sbench-many"
"$BENCH_EXE" --populate softhsm "$softhsm_objects" | grep -E 'keys|000 objects|objects created' | tail -2
"$BENCH_EXE" --populate p11gate "$objects" | grep -E 'keys|000 objects|objects created' | tail -2

step "Timing: SoftHSMv2 vs p11gate's soft token; interleaved, one process; then resident memory"
timing_log="$work/timing.log"
status=0
"$BENCH_EXE" | tee "$timing_log" || status=$?
if [ "$status" != 0 ] && [ "$status" != 3 ]; then
    exit "$status"
fi

if [ -n "$profile" ]; then
    n=${P11GATE_COUNT_N:-2000}
    for w in ${profile//,/ }; do
        count=$n
        case "$w" in
            find_many) count=$((n / 10)) ;;
            rsa2048_oaep_decrypt) count=$((n / 40)) ;;
        esac
        [ "$count" -ge 1 ] || count=1
        step "callgrind: $count x $w through p11gate"
        out="$work/callgrind.$w"
        valgrind --tool=callgrind --callgrind-out-file="$out" \
            --toggle-collect=p11gate_sbench_count_loop \
            "$BENCH_EXE" --count p11gate "$w" "$count" 2>"$out.log" >/dev/null ||
            { cat "$out.log" >&2; exit 1; }
        total=$(awk '/^summary:/ { print $2; exit }' "$out")
        echo "instructions per operation: $((total / count))"
        # awk reads all its input (no SIGPIPE under pipefail), keeps the first rows.
        echo "-- top functions, inclusive (below the bench's own frames):"
        callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
            awk '/^ *[0-9,]+ \(/ && !/\(100\.0%\)/ && n < 20 { n++; print substr($0, 1, 200) }'
        echo "-- top functions, self:"
        callgrind_annotate "$out" 2>/dev/null |
            awk '/^ *[0-9,]+ \(/ && !/PROGRAM TOTALS/ && n < 12 { n++; print substr($0, 1, 200) }'
    done
fi

step "Summary"
grep -E '^\s+\[(MET|NOT MET)\]|=>' "$timing_log" || true
[ "$status" = 0 ] || exit 3
