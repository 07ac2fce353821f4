#!/usr/bin/env bash
# Installs p11gate, or removes what it installed (--uninstall). make install's conventions:
#
#   scripts/install.sh [--p11-kit] [--group NAME] [--lib FILE --bin FILE]
#   scripts/install.sh --uninstall
#
#   PREFIX=/usr/local      where the module, the command and the docs go (or --prefix DIR)
#   SYSCONFDIR=/etc        where the configuration goes (or --sysconfdir DIR). The module looks
#                          for /etc/p11gate/p11gate.toml: elsewhere, set P11GATE_CONFIG.
#   DESTDIR=               a staging root for packagers (or --destdir DIR); the manifest and
#                          the p11-kit module file name the final paths, without DESTDIR
#
# What it installs (mode; files under SYSCONFDIR owned root:GROUP when run as root):
#
#   PREFIX/lib/p11gate/libp11gate.so           0644  the module applications load
#   PREFIX/lib/p11gate/install-manifest        0644  what was installed, for --uninstall
#   PREFIX/bin/p11gate                         0755  the command
#   PREFIX/share/doc/p11gate/                  0644  README.md, SECURITY.md, config-reference.md,
#                                                    p11gate.toml.example, examples/vault/ (the
#                                                    Vault kit of contrib/vault)
#   PREFIX/share/man/man1/p11gate.1.gz         0644
#   SYSCONFDIR/p11gate/                        0750  (left as it is when it already exists)
#   SYSCONFDIR/p11gate/p11gate.toml            0640  packaging/p11gate.toml: the soft token.
#                                                    Never over an existing file: the example
#                                                    then goes beside it, as p11gate.toml.example
#   /etc/pkcs11/modules/p11gate.module         0644  with --p11-kit (or --p11-kit-dir DIR):
#                                                    p11-kit-aware programs then load p11gate
#
# GROUP (--group NAME) is the group that may read the configuration: default "p11gate" when
# that group exists, else "root" (then only root can use the module until the administrator
# changes it). Not run as root, files belong to the user who ran it (a package build).
#
# The module and the command come from --lib and --bin, or else from `cargo build --release`
# (run when cargo is on PATH; under sudo, where it usually is not, build first as yourself).
#
# --uninstall removes what the manifest lists and nothing else: files under SYSCONFDIR only
# when they are unchanged (an edited configuration is the administrator's and stays), and
# directories the install created only when they are empty. Installing again first removes the
# earlier installation the same way, so the manifest always describes one installation.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "install.sh: $*" >&2
    exit 1
}
note() { echo "install.sh: $*"; }

PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
DESTDIR=${DESTDIR:-}
p11kit_dir=""
group=""
lib=""
bin=""
uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        --sysconfdir) SYSCONFDIR=${2:?--sysconfdir needs a directory}; shift ;;
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift ;;
        --group) group=${2:?--group needs a name}; shift ;;
        --lib) lib=${2:?--lib needs a file}; shift ;;
        --bin) bin=${2:?--bin needs a file}; shift ;;
        --p11-kit) p11kit_dir=/etc/pkcs11/modules ;;
        --p11-kit-dir) p11kit_dir=${2:?--p11-kit-dir needs a directory}; shift ;;
        --uninstall) uninstall=1 ;;
        -h | --help) usage ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage ;;
    esac
    shift
done
for d in "$PREFIX" "$SYSCONFDIR" ${p11kit_dir:+"$p11kit_dir"}; do
    case "$d" in /*) ;; *) die "$d: PREFIX, SYSCONFDIR and --p11-kit-dir must be absolute paths" ;; esac
done
DESTDIR=${DESTDIR%/}
PREFIX=${PREFIX%/}
SYSCONFDIR=${SYSCONFDIR%/}
libdir=$PREFIX/lib/p11gate
manifest=$libdir/install-manifest

# --- Uninstall: the manifest, read backwards (files before the directories holding them) ---

# remove_installed: removes what $DESTDIR$manifest lists; 1 when there is no manifest.
remove_installed() {
    [ -f "$DESTDIR$manifest" ] || return 1
    local lines=() line kind path sum i
    mapfile -t lines < <(grep -v '^#' "$DESTDIR$manifest")
    rm -f "$DESTDIR$manifest"
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        line=${lines[i]}
        kind=${line%%$'\t'*}
        path=${line##*$'\t'}
        case "$kind" in
            file)
                rm -f "$DESTDIR$path"
                ;;
            conf)
                sum=${line#conf$'\t'}
                sum=${sum%%$'\t'*}
                if [ ! -e "$DESTDIR$path" ]; then
                    :
                elif [ "$(sha256sum <"$DESTDIR$path" | cut -d' ' -f1)" = "$sum" ]; then
                    rm -f "$DESTDIR$path"
                else
                    note "kept $DESTDIR$path: it was changed after installation"
                fi
                ;;
            dir)
                if [ -d "$DESTDIR$path" ] && ! rmdir "$DESTDIR$path" 2>/dev/null; then
                    note "kept $DESTDIR$path: it is not empty"
                fi
                ;;
            *) die "$DESTDIR$manifest: unknown entry: $line" ;;
        esac
    done
}

if [ "$uninstall" = 1 ]; then
    remove_installed || die "no manifest at $DESTDIR$manifest: nothing installed there by install.sh"
    note "removed the installation listed in $DESTDIR$manifest"
    exit 0
fi

# --- Install ---

owner_args=()
if [ "$(id -u)" -eq 0 ]; then
    if [ -z "$group" ]; then
        if getent group p11gate >/dev/null; then group=p11gate; else group=root; fi
    fi
    getent group "$group" >/dev/null || die "group $group does not exist"
    owner_args=(-o root -g "$group")
elif [ -n "$group" ]; then
    die "--group needs root (files can be given to a group only by root)"
fi

if [ -z "$lib" ] || [ -z "$bin" ]; then
    if [ -n "$lib$bin" ]; then die "give both --lib and --bin, or neither"; fi
    out=${CARGO_TARGET_DIR:-$repo/target}/release
    if command -v cargo >/dev/null; then
        note "building (cargo build --release --locked)"
        (cd "$repo" && cargo build --release --locked)
    elif [ -f "$out/libp11gate.so" ] && [ -f "$out/p11gate" ]; then
        note "cargo is not on PATH: installing the build in $out"
    else
        die "no build in $out and no cargo on PATH: run cargo build --release first"
    fi
    lib=$out/libp11gate.so
    bin=$out/p11gate
fi
[ -f "$lib" ] || die "$lib: no such file"
[ -f "$bin" ] || die "$bin: no such file"

if remove_installed; then
    note "removed the earlier installation in $DESTDIR$PREFIX first"
fi

entries=()
# record KIND [SUM] PATH: one manifest line; written at once after the manifest exists.
record() {
    local line
    line=$(printf '%s\t' "$@")
    line=${line%$'\t'}
    entries+=("$line")
    if [ -f "$DESTDIR$manifest" ]; then
        printf '%s\n' "$line" >>"$DESTDIR$manifest"
    fi
}

# make_dir PATH: creates PATH and its missing parents (0755), recording each one it creates.
make_dir() {
    local p=$1 missing=()
    while [ ! -d "$DESTDIR$p" ]; do
        missing=("$p" "${missing[@]}")
        p=$(dirname "$p")
    done
    for p in "${missing[@]}"; do
        mkdir -m 0755 "$DESTDIR$p"
        record dir "$p"
    done
}

# put MODE SOURCE PATH: installs a file that --uninstall removes whatever its content.
put() {
    make_dir "$(dirname "$3")"
    install -m "$1" "$2" "$DESTDIR$3"
    record file "$3"
}

# put_conf SOURCE PATH: installs a configuration file (0640, root:GROUP) that --uninstall
# removes only while it is unchanged.
put_conf() {
    install -m 0640 "${owner_args[@]}" "$1" "$DESTDIR$2"
    record conf "$(sha256sum <"$DESTDIR$2" | cut -d' ' -f1)" "$2"
}

make_dir "$libdir"
{
    echo "# p11gate install manifest: what scripts/install.sh installed, which"
    echo "# scripts/install.sh --uninstall removes (PREFIX=$PREFIX SYSCONFDIR=$SYSCONFDIR)."
    echo "# dir PATH | file PATH | conf SHA256 PATH (removed only while unchanged)"
    printf '%s\n' "${entries[@]}"
} >"$DESTDIR$manifest"
chmod 0644 "$DESTDIR$manifest"

put 0644 "$lib" "$libdir/libp11gate.so"
put 0755 "$bin" "$PREFIX/bin/p11gate"
put 0644 "$repo/README.md" "$PREFIX/share/doc/p11gate/README.md"
put 0644 "$repo/SECURITY.md" "$PREFIX/share/doc/p11gate/SECURITY.md"
put 0644 "$repo/doc/config-reference.md" "$PREFIX/share/doc/p11gate/config-reference.md"
put 0644 "$repo/packaging/p11gate.toml" "$PREFIX/share/doc/p11gate/p11gate.toml.example"
for f in "$repo"/contrib/vault/*.hcl; do
    put 0644 "$f" "$PREFIX/share/doc/p11gate/examples/vault/${f##*/}"
done
for f in "$repo"/contrib/vault/vault.service.d/*.conf; do
    put 0644 "$f" "$PREFIX/share/doc/p11gate/examples/vault/vault.service.d/${f##*/}"
done
man_page=$(mktemp)
trap 'rm -f "$man_page"' EXIT
gzip -9n -c "$repo/doc/p11gate.1" >"$man_page"
put 0644 "$man_page" "$PREFIX/share/man/man1/p11gate.1.gz"

confdir=$SYSCONFDIR/p11gate
if [ ! -d "$DESTDIR$confdir" ]; then
    make_dir "$confdir"
    chmod 0750 "$DESTDIR$confdir"
    [ ${#owner_args[@]} -eq 0 ] || chown root:"$group" "$DESTDIR$confdir"
fi
if [ -e "$DESTDIR$confdir/p11gate.toml" ]; then
    put_conf "$repo/packaging/p11gate.toml" "$confdir/p11gate.toml.example"
    note "kept the existing $DESTDIR$confdir/p11gate.toml; the example is p11gate.toml.example beside it"
else
    put_conf "$repo/packaging/p11gate.toml" "$confdir/p11gate.toml"
fi

if [ -n "$p11kit_dir" ]; then
    module_file=$(mktemp)
    trap 'rm -f "$man_page" "$module_file"' EXIT
    sed "s|^module: /usr/lib/p11gate/|module: $libdir/|" "$repo/packaging/p11gate.module" >"$module_file"
    make_dir "$p11kit_dir"
    install -m 0644 "$module_file" "$DESTDIR$p11kit_dir/p11gate.module"
    record conf "$(sha256sum <"$DESTDIR$p11kit_dir/p11gate.module" | cut -d' ' -f1)" \
        "$p11kit_dir/p11gate.module"
fi

if [ ${#owner_args[@]} -gt 0 ]; then
    note "installed into $DESTDIR$PREFIX; configuration in $DESTDIR$confdir, readable by group $group"
else
    note "installed into $DESTDIR$PREFIX; configuration in $DESTDIR$confdir (not root: the files belong to $(id -un))"
fi
