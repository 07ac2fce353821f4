# Shared helpers for scripts/*.sh (sourced, not run).

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# need_packages PKG:PROGRAM ...: installs each Debian package whose program is missing.
need_packages() {
  local missing=() spec
  for spec in "$@"; do
    command -v "${spec#*:}" >/dev/null 2>&1 || missing+=("${spec%%:*}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  step "Installing ${missing[*]} from Debian's packages"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# softhsm_module: prints the path of SoftHSMv2's PKCS#11 module.
softhsm_module() {
  local p
  for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -e "$p" ] && { echo "$p"; return 0; }
  done
  echo "SoftHSMv2's module not found" >&2
  return 1
}
