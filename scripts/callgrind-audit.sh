#!/usr/bin/env bash
# Instructions the audit trail adds per audited call on the calling thread, and what the writer
# thread spends per record, counted with callgrind.
#
# The audit bench has a counting mode (`--count KIND N`, benches/audit.rs): a fresh SoftHSMv2
# token, one logged-in session through libp11gate.so initialised with P11GATE_AUDIT for KIND
# (off, file = the JSON-lines file with its HMAC chain, syslog = RFC 5424 to a socket), 200
# warm-up operations, then N AES-256-GCM encryptions of 32 bytes (C_EncryptInit + C_Encrypt:
# two calls, one audit record) inside the function `p11gate_bench_audit_loop`.
#
# Calling thread: `valgrind --tool=callgrind --separate-threads=yes
# --toggle-collect=p11gate_bench_audit_loop`, with N and 2N operations; the main thread's
# (Ir(2N) - Ir(N)) / N is one operation, setup and warm-up cancel out, and the writer thread is
# in its own file (and collects nothing: the toggle function never runs there). Audit on minus
# audit off, divided by 2, is what audit adds per call.
#
# Writer thread: the same runs without the toggle (everything collected), per thread; the
# writer thread's (Ir(2N) - Ir(N)) / N is its cost per record, shown with its top functions.
#
# Environment: P11GATE_COUNT_N (default 2000); BENCH_EXE (default: built here); for the syslog
# kind P11GATE_BENCH_SYSLOG_SOCKET (a syslog daemon's socket; without it syslog is skipped);
# P11GATE_BENCH_AUDIT_KEY (optional); CARGO_TARGET_DIR as usual.
# Target (the issue): at most 2,000 instructions added per audited call on the calling thread.
# Exit status: 0 when met, 3 when not, other values on errors.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${P11GATE_COUNT_N:-2000}
N2=$((2 * N))
TARGET=2000

command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
if [ -z "${BENCH_EXE:-}" ]; then
    # The bench loads the libp11gate.so beside it; build the cdylib (and the p11gate program,
    # for audit verify) first, or the counts would be of a stale library.
    cargo build --release --quiet
    BENCH_EXE=$(cargo bench --bench audit --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*/audit-[^"]*"' | tail -1 | sed 's/^"executable":"//; s/"$//')
fi
[ -x "${BENCH_EXE:-}" ] || { echo "cannot find the audit bench binary" >&2; exit 1; }
export P11GATE_BENCH_CLI=${P11GATE_BENCH_CLI:-$target/release/p11gate}

kinds=(off file)
if [ -n "${P11GATE_BENCH_SYSLOG_SOCKET:-}" ]; then
    kinds+=(syslog)
else
    echo "(no P11GATE_BENCH_SYSLOG_SOCKET: the syslog sink is not counted)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# run MODE KIND OPS: callgrind of `--count KIND OPS`; MODE loop (toggle) or all.
run() {
    local mode=$1 kind=$2 ops=$3 out="$work/cg.$1.$2.$3"
    local -a opts=(--tool=callgrind --separate-threads=yes --callgrind-out-file="$out")
    [ "$mode" = loop ] && opts+=(--toggle-collect=p11gate_bench_audit_loop)
    if ! valgrind "${opts[@]}" "$BENCH_EXE" --count "$kind" "$ops" >"$out.stdout" 2>"$out.stderr"; then
        echo "callgrind $mode run '$kind $ops' failed:" >&2
        tail -20 "$out.stderr" >&2
        exit 1
    fi
    if [ "$kind" = file ]; then
        local want=$((ops + 200)) got
        got=$(sed -n 's/.*records=\([0-9]*\).*/\1/p' "$out.stdout")
        [ "$got" = "$want" ] || { echo "file run '$ops': $got C_Encrypt records, expected $want" >&2; exit 1; }
    fi
}

# totals THREAD FILEPREFIX: the callgrind total of one thread's file (01 = the main thread),
# or of every other thread together with "others".
totals() {
    local which=$1 prefix=$2 f sum=0 t
    for f in "$prefix"-[0-9]*; do
        case "$which" in
            main) [ "${f##*-}" = 01 ] || continue ;;
            others) [ "${f##*-}" != 01 ] || continue ;;
        esac
        t=$(awk '/^totals:/ { print $2; exit }' "$f")
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

per_op() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }'; }

echo "counting $N and $N2 AES-256-GCM operations (2 calls, 1 record each); bench $BENCH_EXE"
declare -A main writer
for kind in "${kinds[@]}"; do
    for ops in "$N" "$N2"; do
        run loop "$kind" "$ops"
        main[$kind.$ops]=$(totals main "$work/cg.loop.$kind.$ops")
        if [ "$kind" != off ]; then
            run all "$kind" "$ops"
            writer[$kind.$ops]=$(totals others "$work/cg.all.$kind.$ops")
        fi
    done
done

# upstream PREFIX: inclusive Ir of the upstream's (libsofthsm2.so's) C_EncryptInit and C_Encrypt
# on the main thread: what SoftHSMv2 itself ran, as opposed to p11gate and the bench loop.
upstream() {
    if ! command -v callgrind_annotate >/dev/null 2>&1; then echo 0; return; fi
    callgrind_annotate --inclusive=yes --threshold=100 "$1-01" 2>/dev/null |
        grep -E ':C_Encrypt(Init)? \[[^]]*softhsm[^]]*\]' | awk '{ gsub(",", "", $1); s += $1 } END { print s + 0 }'
}

off_op=$(per_op "${main[off.$N]}" "${main[off.$N2]}")
declare -A up
for kind in "${kinds[@]}"; do
    up[$kind]=$(per_op "$(upstream "$work/cg.loop.$kind.$N")" "$(upstream "$work/cg.loop.$kind.$N2")")
done
echo
printf '%-28s %14s %14s %12s %12s %12s %14s\n' "calling thread" "Ir ($N)" "Ir ($N2)" "Ir/op" "added/op" "added/call" "writer Ir/rec"
json=""
split=""
status=0
for kind in "${kinds[@]}"; do
    op=$(per_op "${main[$kind.$N]}" "${main[$kind.$N2]}")
    added=$(awk -v a="$op" -v b="$off_op" 'BEGIN { printf "%.1f", a - b }')
    call=$(awk -v a="$added" 'BEGIN { printf "%.1f", a / 2 }')
    w="-"
    [ "$kind" != off ] && w=$(per_op "${writer[$kind.$N]}" "${writer[$kind.$N2]}")
    printf '%-28s %14s %14s %12s %12s %12s %14s\n' "audit $kind" "${main[$kind.$N]}" "${main[$kind.$N2]}" "$op" "$added" "$call" "$w"
    rest=$(awk -v a="$op" -v u="${up[$kind]}" 'BEGIN { printf "%.1f", a - u }')
    split+=$(printf '%-28s %14s %14s' "audit $kind" "${up[$kind]}" "$rest")$'\n'
    json+="{\"bench\":\"p11gate-audit-count\",\"sink\":\"$kind\",\"ops\":[$N,$N2],\"calling_ir_per_op\":$op,\"added_ir_per_op\":$added,\"added_ir_per_call\":$call,\"upstream_ir_per_op\":${up[$kind]},\"outside_upstream_ir_per_op\":$rest,\"writer_ir_per_record\":\"$w\"}"$'\n'
    if [ "$kind" != off ] && awk -v c="$call" -v t="$TARGET" 'BEGIN { exit !(c > t) }'; then
        status=3
    fi
done
echo
echo "the same per operation, split: inside SoftHSMv2's C_EncryptInit + C_Encrypt (inclusive) and"
echo "outside them (p11gate's own code, what it calls, and the bench loop):"
printf '%-28s %14s %14s\n' "" "upstream/op" "outside/op"
printf '%s' "$split"
echo

# Per function, exclusive (inlined code under its own name): what audit adds per operation on
# the calling thread, file sink vs off.
fnlist() {
    callgrind_annotate --auto=no --inclusive=no --threshold=100 "$1" 2>/dev/null |
        sed -nE 's/^ *([0-9,]+) +\([ 0-9.]+%\) +(.*)$/\2\t\1/p' | grep -v 'PROGRAM TOTALS' |
        tr -d ',' | sed -E 's#/rustc/[0-9a-f]+/library/#<rust>/#; s# \[[^]]*\]\t#\t#'
}
if command -v callgrind_annotate >/dev/null 2>&1; then
    for kind in off file; do
        for ops in "$N" "$N2"; do
            fnlist "$work/cg.loop.$kind.$ops-01" | sed "s/^/$kind.$ops\t/"
        done
    done | awk -F'\t' -v n="$N" -v n2="$N2" '
        { split($1, w, "."); d = (w[2] == n2) ? $3 : -$3
          if (w[1] == "file") g[$2] += d; else r[$2] += d; k[$2] = 1 }
        END { for (x in k) { v = (g[x] - r[x]) / n; if (v >= 5 || v <= -5) printf "%+.1f\t%s\n", v, x } }
    ' | sort -g -r >"$work/functions"
    echo "instructions added per operation on the calling thread, by function (file vs off, exclusive):"
    awk -F'\t' 'NR <= 15 { printf "  %9s  %s\n", $1, $2 }' "$work/functions"
    echo
    for kind in "${kinds[@]}"; do
        [ "$kind" = off ] && continue
        echo "writer thread, audit $kind: top functions per record (exclusive, $N2-operation run minus $N;"
        echo "valgrind's CPU has no SHA extensions, so the HMAC runs sha2's portable code here)"
        for ops in "$N" "$N2"; do
            for f in "$work/cg.all.$kind.$ops"-[0-9]*; do
                [ "${f##*-}" = 01 ] && continue
                fnlist "$f"
            done | sed "s/^/$ops\t/"
        done | awk -F'\t' -v n="$N" -v n2="$N2" '
            { d = ($1 == n2) ? $3 : -$3; c[$2] += d }
            END { for (x in c) { v = c[x] / n; if (v >= 20) printf "%.0f\t%s\n", v, x } }
        ' | sort -g -r | awk -F'\t' 'NR <= 12 { printf "  %9s  %s\n", $1, $2 }'
        echo
    done
fi

printf '%s' "$json"
echo "target: <= $TARGET instructions added per audited call on the calling thread"
for kind in "${kinds[@]}"; do
    [ "$kind" = off ] && continue
    op=$(per_op "${main[$kind.$N]}" "${main[$kind.$N2]}")
    call=$(awk -v a="$op" -v b="$off_op" 'BEGIN { printf "%.1f", (a - b) / 2 }')
    ok=$(awk -v c="$call" -v t="$TARGET" 'BEGIN { print (c <= t) ? "MET" : "NOT MET" }')
    echo "  [$ok] audit $kind: $call per call"
done
echo "P11GATE_AUDIT_COUNT_TARGETS=$([ $status = 0 ] && echo met || echo not-met)"
exit $status
