#!/usr/bin/env bash
# Runs p11gate's cargo-fuzz targets (fuzz/): `scripts/fuzz.sh [TARGET|all] [SECONDS]`.
#
#   scripts/fuzz.sh                  every target for 60 s each
#   scripts/fuzz.sh calls 600        one target for ten minutes
#   scripts/fuzz.sh all 1800         the campaign before a release: 30 minutes each
#   scripts/fuzz.sh cmin TARGET      minimise fuzz/corpus/TARGET in place
#   scripts/fuzz.sh smoke 20         what scripts/test.sh runs: each target 20 s, corpus unchanged
#
# Installs cargo-fuzz when it is missing. Builds with the nightly toolchain when one is
# installed, else with stable and RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags); both with
# AddressSanitizer. Runs nice'd. New inputs are added to
# fuzz/corpus/TARGET (commit the useful ones after `cmin`); crashes land in fuzz/artifacts/TARGET:
# fix the bug, then move the crashing input to fuzz/regressions/TARGET, which
# tests/fuzz_corpus.rs replays in the normal test run.
#
# Environment: FUZZ_TARGET_DIR (default fuzz/target), FUZZ_JOBS (parallel fuzzing processes per
# target, default 1), FUZZ_RSS_MB (default 2048).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGETS=(config template mechanism calls)

# cargo-fuzz, installed when missing; returns 1 with a reason when it cannot be.
need_cargo_fuzz() {
    if command -v cargo-fuzz >/dev/null 2>&1; then
        return 0
    fi
    echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    if ! cargo install cargo-fuzz --locked; then
        echo "cargo-fuzz could not be installed" >&2
        return 1
    fi
}

# How to call cargo fuzz (sets FUZZ): the nightly toolchain when one is installed, else stable
# with RUSTC_BOOTSTRAP=1, which lets through the -Z flags cargo-fuzz passes. With an argument,
# the stable way whatever is installed.
choose_toolchain() {
    if [ -z "${1:-}" ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        FUZZ=(cargo +nightly fuzz)
    else
        FUZZ=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
    fi
}

SANITIZER=address

# Never CARGO_TARGET_DIR: the fuzz build's flags differ from the normal build's, and the two
# would rebuild over each other.
target_dir() {
    echo "${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
}

build() {
    nice -n 10 "${FUZZ[@]}" build --sanitizer "$SANITIZER" --target-dir "$(target_dir)" "$@"
}

# libFuzzer flags for a target (sets FLAGS). The calls target keeps state across inputs (a
# runtime, sessions, caches), so libFuzzer's leak check after each new input fired on most of
# them, and its heap scans took 70% of the time without telling a leak from state that is kept:
# it runs without them. Memory growth over a long run is what the soak test bounds; here
# -rss_limit_mb catches runaway growth.
target_flags() {
    FLAGS=(-timeout=10 -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -print_final_stats=1)
    if [ "$1" = calls ]; then
        FLAGS+=(-detect_leaks=0)
    fi
}

run_one() {
    local target=$1 seconds=$2
    target_flags "$target"
    # Parallel processes only when asked: with -jobs libFuzzer writes each job's output to
    # fuzz-N.log instead of the terminal.
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
        FLAGS+=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
    fi
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    build "$target"
    echo "==> fuzzing $target for ${seconds}s"
    nice -n 10 "${FUZZ[@]}" run --sanitizer "$SANITIZER" --target-dir "$(target_dir)" "$target" \
        "fuzz/corpus/$target" -- -max_total_time="$seconds" "${FLAGS[@]}"
}

# Minimises a corpus: a set cover over edge coverage only (no hit counters, no comparison
# features), which keeps every edge in a few hundred files per target (cargo fuzz cmin keeps
# thousands); the fuzzer finds the finer features again within seconds. The hand-made seed-*
# files always stay.
cmin() {
    local target=$1 bin merged
    target_flags "$target"
    build "$target"
    bin="$(target_dir)/$(rustc -vV | sed -n 's/^host: //p')/release/$target"
    merged=$(mktemp -d)
    nice -n 10 "$bin" -set_cover_merge=1 -use_counters=0 -use_cmp=0 "${FLAGS[@]}" \
        "$merged" "fuzz/corpus/$target"
    find "fuzz/corpus/$target" -type f ! -name 'seed-*' -delete
    find "$merged" -type f -exec cp {} "fuzz/corpus/$target/" \;
    rm -rf "$merged"
    echo "==> fuzz/corpus/$target: $(find "fuzz/corpus/$target" -type f | wc -l) files"
}

# The short run in scripts/test.sh: every target for `seconds`, on a copy of its corpus (new
# inputs are not kept). When no toolchain here can build the targets, says why and succeeds:
# tests/fuzz_corpus.rs still replays the corpora on stable.
smoke() {
    local seconds=$1 t scratch
    if ! need_cargo_fuzz; then
        echo "==> fuzz smoke run skipped: cargo-fuzz is not installed and could not be"
        return 0
    fi
    choose_toolchain
    if ! build; then
        if [ "${FUZZ[0]}" = env ]; then
            echo "==> fuzz smoke run skipped: the fuzz targets do not build with stable and RUSTC_BOOTSTRAP=1 (see above)"
            return 0
        fi
        echo "==> the nightly build failed; trying stable with RUSTC_BOOTSTRAP=1"
        choose_toolchain stable
        if ! build; then
            echo "==> fuzz smoke run skipped: the fuzz targets build neither with nightly nor with stable and RUSTC_BOOTSTRAP=1 (see above)"
            return 0
        fi
    fi
    for t in "${TARGETS[@]}"; do
        scratch=$(mktemp -d)
        target_flags "$t"
        echo "==> fuzzing $t for ${seconds}s (smoke)"
        if ! nice -n 10 "${FUZZ[@]}" run --sanitizer "$SANITIZER" --target-dir "$(target_dir)" \
            "$t" "$scratch" "fuzz/corpus/$t" -- -max_total_time="$seconds" "${FLAGS[@]}"; then
            rm -rf "$scratch"
            echo "==> fuzz target $t failed: the crashing input is in fuzz/artifacts/$t" >&2
            return 1
        fi
        rm -rf "$scratch"
    done
}

what=${1:-all}
if [ "$what" = smoke ]; then
    smoke "${2:-20}"
    exit
fi
need_cargo_fuzz
choose_toolchain
case "$what" in
    cmin)
        cmin "${2:?usage: scripts/fuzz.sh cmin TARGET}"
        ;;
    all)
        # Every target runs even when one finds a crash; the exit status says if any did.
        failed=()
        for t in "${TARGETS[@]}"; do
            run_one "$t" "${2:-60}" || failed+=("$t")
        done
        if [ "${#failed[@]}" -gt 0 ]; then
            echo "==> crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
            exit 1
        fi
        ;;
    config | template | mechanism | calls)
        run_one "$what" "${2:-60}"
        ;;
    *)
        echo "usage: scripts/fuzz.sh [config|template|mechanism|calls|all] [SECONDS]" >&2
        echo "       scripts/fuzz.sh cmin TARGET | smoke [SECONDS]" >&2
        exit 2
        ;;
esac
