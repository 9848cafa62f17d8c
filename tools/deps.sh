#!/bin/bash
# Install what building (and optionally testing) echod needs on Debian 12. Idempotent.
# usage: tools/deps.sh build|test
set -euo pipefail

BUILD_PKGS=(meson ninja-build pkg-config gcc libc6-dev libsystemd-dev libconfuse-dev libbsd-dev libseccomp-dev)
TEST_PKGS=(libcmocka-dev python3 python3-pytest python3-pytest-timeout socat ncat systemd procps iproute2 haproxy scdoc man-db dpkg-dev debhelper lintian debootstrap systemd-container nftables valgrind monitoring-plugins-basic prometheus-blackbox-exporter prometheus xinetd gnuplot-nox ucspi-tcp ipsvd strace)

want=("${BUILD_PKGS[@]}")
[ "${1:-build}" = test ] && want+=("${TEST_PKGS[@]}")

missing=()
for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# 'apt-get update' once per machine (the lists are empty on a fresh image)
if [ ! -e /var/lib/apt/lists/lock ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ]; then
        $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
