#!/usr/bin/env bash
# Installs what the VFIO guest test needs, from Debian's packages:
#   qemu-system-x86 (10.x, bookworm-backports: the bookworm build would
#   downgrade the machine's qemu-utils), busybox-static, fio (kernel-driver
#   baseline inside the guest), and makes sure the backports suite is in the
#   apt sources with fresh lists (the guest kernel comes from there too).
# Idempotent; installing needs root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v fio >/dev/null || need+=(fio)

backports_listed() {
    # No grep -q: under pipefail an early exit would SIGPIPE apt-cache.
    apt-cache madison linux-image-amd64 2>/dev/null | grep bookworm-backports >/dev/null
}

if [ ${#need[@]} -eq 0 ] && backports_listed; then
    echo "install-deps: qemu-system-x86_64, busybox-static, fio present; bookworm-backports listed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need ${need[*]:-} and the bookworm-backports lists, and not root; install qemu-system-x86 from bookworm-backports, busybox-static and fio" >&2
    exit 1
fi
bash "$HERE/apt-backports.sh"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
for pkg in "${need[@]}"; do
    case "$pkg" in
    qemu-system-x86)
        apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 ;;
    *)
        apt-get install -y -qq --no-install-recommends "$pkg" ;;
    esac
done
qemu-system-x86_64 --version | head -n1
