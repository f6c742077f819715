#!/usr/bin/env bash
# The VFIO guest test: the project's NVMe-over-VFIO transport against QEMU's
# NVMe controller (a conventional and a zoned namespace) behind QEMU's Intel
# IOMMU, in a TCG guest booted from Debian's backports kernel and a busybox
# initramfs. Everything comes from Debian packages and this repository.
#
#   bash ci/vfio-guest/run.sh        (root: installs packages when missing)
#
# Steps (each printed by the guest as GUEST-STEP name: ok|FAILED):
# modules, list, fio (kernel driver baseline), bind, identify, selftest,
# dmar-fault, bench (with the vfio/kernel IOPS ratio), unbind, rebind.
# Exit status 0 only if the guest reports no failure.
#
# Environment: VFIO_GUEST_WORK (scratch dir, default target/vfio-guest),
# VFIO_GUEST_BENCH_SECONDS (default 3), VFIO_GUEST_TIMEOUT (default 300 s),
# VFIO_GUEST_LIBC=gnu (skip musl, build glibc with crt-static).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${VFIO_GUEST_WORK:-$ROOT/target/vfio-guest}
BENCH_SECONDS=${VFIO_GUEST_BENCH_SECONDS:-3}
TIMEOUT=${VFIO_GUEST_TIMEOUT:-300}
SERIAL=IOMEMVFIO0001
MODEL="QEMU NVMe Ctrl"
KERNEL_PKG=linux-image-amd64

log() { echo "vfio-guest: $*"; }
die() { echo "vfio-guest: FAILED: $*" >&2; exit 1; }
mkdir -p "$WORK"

# --- 1. packages ----------------------------------------------------------
log "step 1/5: packages"
bash "$HERE/install-deps.sh"

# --- 2. the statically linked iomem ---------------------------------------
log "step 2/5: static iomem build"
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
IOMEM=""
if [ "${VFIO_GUEST_LIBC:-musl}" = musl ] && command -v rustup >/dev/null &&
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
    cargo build --release --target x86_64-unknown-linux-musl -p iomem
    IOMEM=$TARGET_DIR/x86_64-unknown-linux-musl/release/iomem
    log "built with musl: $IOMEM"
else
    log "musl target not installable here: glibc with crt-static"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --target x86_64-unknown-linux-gnu -p iomem
    IOMEM=$TARGET_DIR/x86_64-unknown-linux-gnu/release/iomem
fi
[ -x "$IOMEM" ] || die "no iomem binary at $IOMEM"
if "$IOMEM" nvme --help >/dev/null 2>&1; then
    :
else
    die "this iomem has no 'nvme' subcommand: cli/src/main.rs must wire cmd_nvme (see cli/src/cmd_nvme.rs)"
fi

# --- 3. the backports kernel -----------------------------------------------
log "step 3/5: kernel"
KDIR=$WORK/kernel
if [ ! -f "$KDIR/.done" ]; then
    rm -rf "$KDIR" && mkdir -p "$KDIR/deb"
    # The metapackage names the current backports image package.
    IMAGE_PKG=$(apt-cache depends -t bookworm-backports "$KERNEL_PKG" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | sed -n 1p)
    [ -n "$IMAGE_PKG" ] || die "cannot resolve $KERNEL_PKG in bookworm-backports (is the suite in the apt sources? see apt-backports.sh)"
    log "kernel package $IMAGE_PKG"
    (cd "$KDIR/deb" && apt-get download -t bookworm-backports "$IMAGE_PKG" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    ls "$KDIR"/deb/*.deb >/dev/null 2>&1 || die "apt-get download $IMAGE_PKG fetched nothing"
    dpkg-deb -x "$KDIR"/deb/*.deb "$KDIR/root"
    rm -rf "$KDIR/deb"
    touch "$KDIR/.done"
fi
VMLINUZ=$(find "$KDIR/root/boot" -name 'vmlinuz-*' | sort | sed -n 1p)
MODDIR=$(find "$KDIR/root/lib/modules" -mindepth 1 -maxdepth 1 -type d | sort | sed -n 1p)
[ -n "$VMLINUZ" ] && [ -n "$MODDIR" ] || die "no kernel image or modules under $KDIR/root"

# --- 4. the initramfs -------------------------------------------------------
log "step 4/5: initramfs"
IR=$WORK/initramfs
rm -rf "$IR" && mkdir -p "$IR"/{bin,dev,proc,sys,tmp,etc,lib/modules,lib64}
cp /bin/busybox "$IR/bin/busybox"
# Without debug info: a smaller initramfs boots faster under TCG.
strip --strip-debug -o "$IR/bin/iomem" "$IOMEM" 2>/dev/null || cp "$IOMEM" "$IR/bin/iomem"
cp "$HERE/guest-init.sh" "$IR/init" && chmod +x "$IR/init"
for m in virt/lib/irqbypass drivers/vfio/vfio drivers/vfio/vfio_iommu_type1 \
    drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci \
    drivers/nvme/common/nvme-auth drivers/nvme/host/nvme-core drivers/nvme/host/nvme; do
    src=$MODDIR/kernel/$m.ko
    if [ -f "$src.xz" ]; then xz -dc "$src.xz" > "$IR/lib/modules/$(basename "$m").ko"
    elif [ -f "$src" ]; then cp "$src" "$IR/lib/modules/"
    else die "kernel module $m missing from $MODDIR"; fi
done
# fio stays on the host: the guest mounts the host's /usr read-only over
# virtio-9p and runs it with its own loader and libraries (Debian's fio
# links Ceph, GlusterFS and RDMA libraries: ~80 MB that would otherwise be
# copied into every initramfs).
for m in fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p; do
    src=$MODDIR/kernel/$m.ko
    if [ -f "$src.xz" ]; then xz -dc "$src.xz" > "$IR/lib/modules/$(basename "$m").ko"
    elif [ -f "$src" ]; then cp "$src" "$IR/lib/modules/"; fi
done
# Host paths under /usr, resolved (merged-/usr symlinks such as /lib point
# outside the share): fio, its loader, and every directory its libraries
# come from.
FIO_PATH="" FIO_LOADER="" FIO_LIBDIRS=""
if command -v fio >/dev/null; then
    FIO_PATH=$(readlink -f "$(command -v fio)")
    FIO_LOADER=$(readlink -f /lib64/ld-linux-x86-64.so.2)
    FIO_LIBDIRS=$(ldd "$FIO_PATH" | awk '/=> \//{print $3}' | xargs -r -n1 readlink -f |
        xargs -r -n1 dirname | sort -u | sed 's|^|/host|' | paste -sd: -)
fi
cat > "$IR/etc/vfio-guest.conf" <<CONF
SERIAL='$SERIAL'
MODEL='$MODEL'
BENCH_SECONDS='$BENCH_SECONDS'
FIO_PATH='$FIO_PATH'
FIO_LOADER='$FIO_LOADER'
FIO_LIBDIRS='$FIO_LIBDIRS'
CONF
(cd "$IR" && find . | busybox cpio -o -H newc 2>/dev/null) > "$WORK/initramfs.cpio"
log "initramfs $(du -h "$WORK/initramfs.cpio" | cut -f1)"

# --- 5. boot -----------------------------------------------------------------
log "step 5/5: boot (TCG, q35, intel-iommu, nvme with a zoned namespace)"
truncate -s 0 "$WORK/ns1.img" "$WORK/zns.img"
truncate -s 64M "$WORK/ns1.img"
truncate -s 32M "$WORK/zns.img"
GUEST_LOG=$WORK/guest.log
# TCG on a loaded host can miss the kernel's early timer-IRQ check through
# the remapped IO-APIC ("timer doesn't work through Interrupt-remapped
# IO-APIC", a panic before any test ran): `no_timer_check` skips that check,
# and a boot that panics before the first test step is tried once more.
boot() {
    truncate -s 0 "$WORK/ns1.img" "$WORK/zns.img"
    truncate -s 64M "$WORK/ns1.img"
    truncate -s 32M "$WORK/zns.img"
    start=$(date +%s.%N)
    set +e
    timeout "$TIMEOUT" qemu-system-x86_64 \
        -machine q35,kernel-irqchip=split -accel tcg -cpu max -smp 2 -m 1024 \
        -nodefaults -no-user-config -display none -serial stdio -no-reboot \
        -device intel-iommu,intremap=on,aw-bits=48 \
        -kernel "$VMLINUZ" -initrd "$WORK/initramfs.cpio" \
        -append "console=ttyS0 intel_iommu=on hugepages=64 quiet panic=-1 no_timer_check" \
        -drive file="$WORK/ns1.img",if=none,id=ns1,format=raw,discard=unmap \
        -drive file="$WORK/zns.img",if=none,id=ns2,format=raw,discard=unmap \
        -device nvme,id=nvme0,serial="$SERIAL" \
        -virtfs local,path=/usr,mount_tag=hostusr,security_model=none,readonly=on \
        -device nvme-ns,drive=ns1,bus=nvme0,nsid=1 \
        -device nvme-ns,drive=ns2,bus=nvme0,nsid=2,zoned=true,zoned.zone_size=4M,zoned.zone_capacity=4M \
        < /dev/null 2>&1 | tr -d '\r' | tee "$GUEST_LOG"
    qemu_rc=${PIPESTATUS[0]}
    set -e
    end=$(date +%s.%N)
    log "guest ran $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s (qemu exit $qemu_rc)"
}
for attempt in 1 2; do
    boot
    if grep -q 'Kernel panic' "$GUEST_LOG" && ! grep -q '^GUEST-STEP ' "$GUEST_LOG" && [ "$attempt" = 1 ]; then
        log "the guest kernel panicked before the first step (TCG timing); booting once more"
        continue
    fi
    break
done
[ "$qemu_rc" = 124 ] && die "the guest did not finish within ${TIMEOUT}s"
summary=$(grep -E '^vfio-guest: [0-9]+ passed, [0-9]+ failed$' "$GUEST_LOG" | sed -n '$p' || true)
[ -n "$summary" ] || die "the guest printed no result line (see $GUEST_LOG)"
grep -E '^GUEST-STEP ' "$GUEST_LOG" | sed 's/^/  /'
echo "$summary"
case "$summary" in
*" 0 failed") exit 0 ;;
*) exit 1 ;;
esac
