#!/usr/bin/env bash
# Runs p11gate's whole test suite: the one command for developers and CI.
#
# On a fresh Debian 12 machine (as root, or with sudo) it first installs the Debian packages the
# tests use, but only those whose program is missing. Then: rustfmt check, clippy with warnings
# as errors, every test target, a build of the benches (built, not run: `cargo test
# --all-targets` would run a `harness = false` bench's main(), so the benches are only built),
# and a short run of each fuzz target (FUZZ_SMOKE_SECONDS, default 20; 0 skips it).
#
# All test binaries run even when one fails (--no-fail-fast), so a CI log shows every failure.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh pkcs11_tool` or
# `scripts/test.sh -- --nocapture`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
run() {
    printf '+ %s\n' "$*"
    "$@"
}

# True when the program is on PATH or in an sbin directory (rsyslogd lives in /usr/sbin, which a
# non-root PATH may lack).
have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# program (or file) -> the Debian package that provides it
declare -a missing=()
need_program() {
    if have "$1"; then
        printf '  %-14s found (%s)\n' "$1" "$2"
    else
        printf '  %-14s missing: will install %s\n' "$1" "$2"
        missing+=("$2")
    fi
}
need_file() {
    if [ -e "$1" ]; then
        printf '  %-14s found (%s)\n' "$(basename "$1")" "$2"
    else
        printf '  %-14s missing: will install %s\n' "$(basename "$1")" "$2"
        missing+=("$2")
    fi
}

step "Checking the programs the tests need"
need_program softhsm2-util softhsm2
need_file /usr/lib/softhsm/libsofthsm2.so softhsm2
need_program pkcs11-tool opensc
need_file /usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so opensc-pkcs11
need_file /usr/include/p11-kit-1/p11-kit/pkcs11.h libp11-kit-dev
need_program gcc gcc
# libFuzzer (the fuzz smoke run) is C++.
need_program g++ g++
need_program valgrind valgrind
need_program nm binutils
need_program rsyslogd rsyslog
need_program openssl openssl
need_program python3 python3
need_program groff groff-base
need_program p11-kit p11-kit
need_program p11tool gnutls-bin
need_program dpkg-shlibdeps dpkg-dev

if [ "${#missing[@]}" -gt 0 ]; then
    # Deduplicate (softhsm2 may be listed twice).
    mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    step "Installing missing Debian packages: ${packages[*]}"
    run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${packages[@]}"
fi

# cargo-deb builds the Debian package in tests/install.rs (from crates.io, pinned; about a
# minute to build on two cores).
if ! cargo deb --version >/dev/null 2>&1; then
    step "Installing cargo-deb"
    run cargo install cargo-deb --locked --version 3.8.0
fi

step "Versions"
run cargo --version
run cargo deb --version
run rustc --version
dpkg-query -W -f='  ${Package} ${Version}\n' softhsm2 opensc p11-kit gnutls-bin 2>/dev/null || true

step "Formatting"
run cargo fmt --all -- --check

step "Lints"
run cargo clippy --all-targets -- -D warnings

step "Tests"
run cargo test --no-fail-fast --lib --bins --tests "$@"

step "Benches (build only)"
run cargo build --benches

# Each cargo-fuzz target for a few seconds (scripts/fuzz.sh smoke: installs cargo-fuzz when
# missing, builds with nightly or stable + RUSTC_BOOTSTRAP=1, and skips with a reason when
# neither builds). The first build takes minutes; FUZZ_SMOKE_SECONDS=0 skips the step.
fuzz_seconds=${FUZZ_SMOKE_SECONDS:-20}
step "Fuzz smoke run (${fuzz_seconds} s per target)"
if [ "$fuzz_seconds" -gt 0 ]; then
    run scripts/fuzz.sh smoke "$fuzz_seconds"
else
    echo "  skipped (FUZZ_SMOKE_SECONDS=0)"
fi

step "All checks passed"
