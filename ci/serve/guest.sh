#!/usr/bin/env bash
# QEMU guest smoke test of the vhost-user-blk export: a TCG guest (q35,
# memory-backend-memfd,share=on, vhost-user-blk-pci with two queues) boots
# Debian's bookworm-backports kernel and a busybox initramfs, writes 16 MiB
# of random data to /dev/vda with O_DIRECT, reads it back with O_DIRECT and
# compares md5 sums; also checks the block size and queue count the guest
# sees, and a discard. Kernel/initramfs approach as in ci/vfio-guest/.
#
#   bash ci/serve/guest.sh [IOMEM]      (root: installs packages when missing)
#
# Environment: IOMEM_GUEST_WORK (default target/serve-guest),
# IOMEM_GUEST_TIMEOUT (default 300 s).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${IOMEM_GUEST_WORK:-$ROOT/target/serve-guest}
TIMEOUT=${IOMEM_GUEST_TIMEOUT:-300}
IOMEM=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/iomem}

log() { echo "serve-guest: $*"; }
die() { echo "serve-guest: FAILED: $*" >&2; exit 1; }
mkdir -p "$WORK"
[ -x "$IOMEM" ] || die "no iomem binary at $IOMEM (cargo build --release -p iomem)"

# --- packages: qemu-system-x86 from bookworm-backports, busybox-static ----
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need[*]} and not root"
    # Adds bookworm-backports beside the machine's existing bookworm source
    # (no mirror name is written anywhere).
    bash "$ROOT/ci/vfio-guest/apt-backports.sh"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    for pkg in "${need[@]}"; do
        if [ "$pkg" = qemu-system-x86 ]; then
            apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86
        else
            apt-get install -y -qq --no-install-recommends "$pkg"
        fi
    done
fi

# --- the backports kernel ---------------------------------------------------
KDIR=$WORK/kernel
if [ ! -f "$KDIR/.done" ]; then
    rm -rf "$KDIR" && mkdir -p "$KDIR/deb"
    grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/ ||
        { bash "$ROOT/ci/vfio-guest/apt-backports.sh" && apt-get update -qq; }
    IMAGE_PKG=$(apt-cache depends -t bookworm-backports linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
    [ -n "$IMAGE_PKG" ] || die "cannot resolve linux-image-amd64 in bookworm-backports"
    log "kernel package $IMAGE_PKG"
    (cd "$KDIR/deb" && apt-get download -t bookworm-backports "$IMAGE_PKG" >/dev/null 2>&1) || true
    ls "$KDIR"/deb/*.deb >/dev/null 2>&1 || die "apt-get download $IMAGE_PKG fetched nothing"
    dpkg-deb -x "$KDIR"/deb/*.deb "$KDIR/root"
    rm -rf "$KDIR/deb"
    touch "$KDIR/.done"
fi
VMLINUZ=$(ls "$KDIR"/root/boot/vmlinuz-* | head -n1)
MODDIR=$(ls -d "$KDIR"/root/lib/modules/* | head -n1)

# --- initramfs: busybox, virtio modules in dependency order, the test -------
IR=$WORK/initramfs
rm -rf "$IR" && mkdir -p "$IR"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$IR/bin/busybox"
: >"$IR/lib/modules/load.list"
# The .deb carries no modules.dep (depmod runs at install), so dependencies
# come from each module's own .modinfo "depends=" record.
modinfo_depends() {
    case "$1" in
    *.xz) xz -dc "$1" ;;
    *.zst) zstd -qdc "$1" ;;
    *) cat "$1" ;;
    esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}
add_module() { # name: copies it after its dependencies; built-in modules are skipped
    local f dep base
    f=$(find "$MODDIR/kernel" \( -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" \) | head -n1)
    [ -n "$f" ] || f=$(find "$MODDIR/kernel" \( -name "${1//_/-}.ko" -o -name "${1//_/-}.ko.xz" -o -name "${1//_/-}.ko.zst" \) | head -n1)
    [ -n "$f" ] || return 0
    for dep in $(modinfo_depends "$f"); do
        add_module "$dep"
    done
    base=$(basename "$f")
    base=${base%.xz}
    base=${base%.zst}
    grep -qx "$base" "$IR/lib/modules/load.list" && return 0
    case "$f" in
    *.xz) xz -dc "$f" >"$IR/lib/modules/$base" ;;
    *.zst) zstd -qdc "$f" >"$IR/lib/modules/$base" ;;
    *) cp "$f" "$IR/lib/modules/$base" ;;
    esac
    echo "$base" >>"$IR/lib/modules/load.list"
}
add_module virtio_pci
add_module virtio_blk
cat >"$IR/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/load.list); do insmod /lib/modules/$m 2>/dev/null; done
pass=0; fail=0
step() { if [ "$2" = ok ]; then pass=$((pass+1)); else fail=$((fail+1)); fi; echo "GUEST-STEP $1: $2"; }
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ -b /dev/vda ]; then step disk ok; else step disk FAILED; echo "serve-guest: $pass passed, $((fail+5)) failed"; poweroff -f; fi
lbs=$(cat /sys/block/vda/queue/logical_block_size 2>/dev/null)
echo "guest: logical block size $lbs, queues $(ls /sys/block/vda/mq 2>/dev/null | wc -l), size $(cat /sys/block/vda/size) sectors"
[ "$(ls /sys/block/vda/mq 2>/dev/null | wc -l)" = 2 ] && step multiqueue ok || step multiqueue FAILED
dd if=/dev/urandom of=/tmp/r bs=1M count=16 2>/dev/null
a=$(md5sum < /tmp/r)
dd if=/tmp/r of=/dev/vda bs=1M oflag=direct 2>/dev/null && step write-direct ok || step write-direct FAILED
dd if=/dev/vda of=/tmp/b bs=1M count=16 iflag=direct 2>/dev/null && step read-direct ok || step read-direct FAILED
b=$(md5sum < /tmp/b)
echo "guest: md5 written $a read $b"
[ "$a" = "$b" ] && step md5 ok || step md5 FAILED
if blkdiscard -o 0 -l 1048576 /dev/vda 2>/dev/null; then
  z=$(dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | md5sum)
  e=$(dd if=/dev/zero bs=1M count=1 2>/dev/null | md5sum)
  [ "$z" = "$e" ] && step discard ok || step discard FAILED
else
  step discard FAILED
fi
echo "serve-guest: $pass passed, $fail failed"
poweroff -f
INIT
chmod +x "$IR/init"
(cd "$IR" && find . | busybox cpio -o -H newc 2>/dev/null) >"$WORK/initramfs.cpio"

# --- host side: the export --------------------------------------------------
rm -f "$WORK/card.img" "$WORK/vhost.sock"
"$IOMEM" sim create "$WORK/card.img" --capacity 256MiB >/dev/null
"$IOMEM" serve --rpc-socket "$WORK/rpc.sock" --format-if-blank "$WORK/card.img" \
    --vhost-user-blk "$WORK/vhost.sock" --queues 2 >"$WORK/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [ -S "$WORK/vhost.sock" ] && break; sleep 0.1; done
[ -S "$WORK/vhost.sock" ] || { cat "$WORK/serve.log"; die "iomem serve did not come up"; }

# --- boot -------------------------------------------------------------------
GUEST_LOG=$WORK/guest.log
start=$(date +%s.%N)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -smp 2 -m 512 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -chardev socket,id=vu,path="$WORK/vhost.sock" \
    -device vhost-user-blk-pci,chardev=vu,num-queues=2 \
    -kernel "$VMLINUZ" -initrd "$WORK/initramfs.cpio" \
    -append "console=ttyS0 quiet panic=-1 no_timer_check" \
    </dev/null 2>&1 | tr -d '\r' | tee "$GUEST_LOG"
qemu_rc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
log "boot to result: $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s (qemu exit $qemu_rc)"
kill -TERM "$SERVE"
wait "$SERVE" || die "iomem serve did not exit 0 after the guest"
trap - EXIT
[ "$qemu_rc" = 124 ] && die "the guest did not finish within ${TIMEOUT}s"
summary=$(grep -E '^serve-guest: [0-9]+ passed, [0-9]+ failed$' "$GUEST_LOG" | tail -n1 || true)
[ -n "$summary" ] || die "the guest printed no result line (see $GUEST_LOG)"
echo "$summary"
case "$summary" in
*" 0 failed") exit 0 ;;
*) exit 1 ;;
esac
