# Sourced by the setup scripts that need Debian packages: apt_install WHO PACKAGE...
#
# Installs the packages non-interactively without recommends, as root or through sudo (with
# neither it prints "WHO: need root (or sudo) to apt-get install ..." and exits 1, which every
# caller would do anyway). Maintainer scripts are asked not to start services meanwhile
# (policy-rc.d exit 101, removed again if we created it): a test machine must not gain a daemon
# on a fixed port. apt-get's output goes to a temporary log; on failure apt_install returns 1 with
# APT_ERROR set to its first error lines, and the caller decides whether that fails the run or
# only skips the tests that need the packages.

apt_install() {
  local who=$1 sudo="" log policy=/usr/sbin/policy-rc.d created_policy=0 status=0
  shift
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "$who: need root (or sudo) to apt-get install $*" >&2
      exit 1
    fi
    sudo=sudo
  fi
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    created_policy=1
  fi
  log="$(mktemp "${TMPDIR:-/tmp}/physarum-apt.XXXXXX")"
  { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
      --no-install-recommends "$@"; } >"$log" 2>&1 </dev/null || status=$?
  if [ "$created_policy" = 1 ]; then
    $sudo rm -f "$policy"
  fi
  APT_ERROR=""
  if [ "$status" -ne 0 ]; then
    APT_ERROR="$(grep -E '^(E|Err):' "$log" | head -n 3 | tr '\n' ' ' || true)"
    [ -n "$APT_ERROR" ] || APT_ERROR="$(tail -n 3 "$log" | tr '\n' ' ')"
    APT_ERROR="apt-get install $* failed: $APT_ERROR"
  fi
  rm -f "$log"
  return "$status"
}
