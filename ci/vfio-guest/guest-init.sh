#!/bin/busybox sh
# /init of the VFIO test guest (busybox initramfs). Runs every step against
# QEMU's NVMe controller behind the emulated Intel IOMMU, prints each one as
# "GUEST-STEP <name>: ok|FAILED <detail>", then a closing
# "vfio-guest: N passed, M failed" line, and powers off.
#
# Expected in the initramfs: /bin/busybox, /bin/iomem (static), kernel
# modules in /lib/modules/*.ko, /etc/vfio-guest.conf (SERIAL, MODEL,
# BENCH_SECONDS, FIO_PATH, FIO_LOADER, FIO_LIBDIRS); the host's /usr is offered over virtio-9p
# (mount tag hostusr) for fio.

/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /dev/hugepages
. /etc/vfio-guest.conf

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "GUEST-STEP $1: ok $2"; }
bad() { FAIL=$((FAIL + 1)); echo "GUEST-STEP $1: FAILED $2"; }
say() { echo "vfio-guest: $*"; }
finish() {
    echo "vfio-guest: $PASS passed, $FAIL failed"
    sync
    poweroff -f
}

say "guest up after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
for m in irqbypass vfio vfio_iommu_type1 vfio-pci-core vfio-pci nvme-auth nvme-core nvme; do
    insmod "/lib/modules/$m.ko" 2>/tmp/insmod.err || {
        grep -q 'File exists' /tmp/insmod.err || { bad modules "insmod $m: $(cat /tmp/insmod.err)"; finish; }
    }
done
ok modules "vfio, vfio_iommu_type1, vfio-pci, nvme loaded"

# The host's /usr over virtio-9p, read-only: fio and its libraries.
FIO=""
mkdir -p /host/usr
mount_host_usr() {
    for m in netfs 9pnet 9pnet_virtio 9p; do
        insmod "/lib/modules/$m.ko" 2>>/tmp/9p.err || return 1
    done
    mount -t 9p -o trans=virtio,version=9p2000.L,ro hostusr /host/usr 2>>/tmp/9p.err
}
if mount_host_usr && [ -n "$FIO_PATH" ] && [ -x "/host$FIO_PATH" ] && [ -x "/host$FIO_LOADER" ]; then
    FIO="/host$FIO_LOADER --library-path $FIO_LIBDIRS /host$FIO_PATH"
else
    say "no fio from the host's /usr ($(cat /tmp/9p.err 2>/dev/null)): no kernel-driver baseline"
fi

# The NVMe controller: class 0x010802.
ADDR=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = "0x010802" ] && ADDR=$(basename "$d") && break
done
[ -n "$ADDR" ] || { bad find "no NVMe controller (class 0x010802) in /sys/bus/pci/devices"; finish; }
say "NVMe controller at $ADDR, IOMMU group $(basename "$(readlink /sys/bus/pci/devices/$ADDR/iommu_group)")"

# 1. iomem list finds it.
iomem list > /tmp/list.out 2>&1
cat /tmp/list.out
if grep -q "$ADDR" /tmp/list.out && grep -qi "nvme" /tmp/list.out; then
    ok list "iomem list shows $ADDR as an NVMe controller"
else
    bad list "iomem list does not show $ADDR"
fi

# 2. Kernel driver baseline: fio, io_uring, on /dev/nvme0n1.
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
FIO_IOPS=""
if [ ! -b /dev/nvme0n1 ]; then
    bad kernel-nvme "/dev/nvme0n1 did not appear with the kernel nvme driver"
elif [ -n "$FIO" ]; then
    $FIO --name=kernel --filename=/dev/nvme0n1 --ioengine=io_uring --direct=1 \
        --rw=randread --bs=4k --iodepth=32 --numjobs=1 --time_based \
        --runtime="$BENCH_SECONDS" --norandommap --minimal > /tmp/fio.out 2>/tmp/fio.err
    # Terse format v3: field 8 is read IOPS.
    FIO_IOPS=$(cut -d';' -f8 /tmp/fio.out)
    if [ -n "$FIO_IOPS" ] && [ "$FIO_IOPS" -gt 0 ] 2>/dev/null; then
        ok fio "kernel nvme driver, fio io_uring randread 4k qd32: $FIO_IOPS IOPS"
    else
        bad fio "fio produced no IOPS: $(cat /tmp/fio.err /tmp/fio.out | head -c 400)"
        FIO_IOPS=""
    fi
fi

# 3. Before binding, VFIO use is refused with the command that fixes it.
if iomem nvme identify "$ADDR" > /tmp/nb.out 2>&1; then
    bad not-bound "identify over VFIO succeeded while $ADDR is on the nvme driver"
elif grep -q "run \`iomem bind $ADDR\` first" /tmp/nb.out; then
    ok not-bound "$(cat /tmp/nb.out)"
else
    bad not-bound "unexpected refusal: $(cat /tmp/nb.out)"
fi

# 4. Bind to vfio-pci with the project's own tool.
if iomem bind "$ADDR"; then
    drv=$(basename "$(readlink /sys/bus/pci/devices/$ADDR/driver)")
    grp=$(basename "$(readlink /sys/bus/pci/devices/$ADDR/iommu_group)")
    if [ "$drv" = vfio-pci ] && [ -c "/dev/vfio/$grp" ]; then
        ok bind "$ADDR on vfio-pci, /dev/vfio/$grp present"
    else
        bad bind "driver is $drv, /dev/vfio/$grp $( [ -c /dev/vfio/$grp ] && echo present || echo missing)"
    fi
else
    bad bind "iomem bind $ADDR failed"
    finish
fi

# 5. Identify over VFIO matches QEMU's model and serial.
iomem nvme identify "$ADDR" > /tmp/id.out 2>&1
cat /tmp/id.out
if grep -qx "Model: $MODEL" /tmp/id.out && grep -qx "Serial: $SERIAL" /tmp/id.out; then
    ok identify "model \"$MODEL\", serial \"$SERIAL\" read over VFIO"
else
    bad identify "expected model \"$MODEL\" and serial \"$SERIAL\""
fi

# 6. The destructive self-test: patterns over several queue pairs,
#    deallocate, zones, IOMMU probe.
dmesg -c > /dev/null
iomem nvme selftest "$ADDR" --destructive --queues 4 \
    --expect-model "$MODEL" --expect-serial "$SERIAL" > /tmp/selftest.out 2>&1
rc=$?
cat /tmp/selftest.out
if [ $rc -eq 0 ]; then
    ok selftest "$(grep '^selftest: [0-9]* passed' /tmp/selftest.out)"
else
    bad selftest "exit $rc: $(grep 'FAILED\|^iomem:' /tmp/selftest.out | head -n 3)"
fi

# 7. The IOMMU blocked the probe: the kernel logged a DMAR fault for it.
PROBE=$(sed -n 's/.*unmapped IOVA \(0x[0-9a-f]*\) (expect.*/\1/p' /tmp/selftest.out | head -n 1)
dmesg > /tmp/dmesg.out
grep -i 'dmar' /tmp/dmesg.out | head -n 6
if [ -z "$PROBE" ]; then
    bad dmar-fault "the selftest printed no probe address"
elif grep -i 'dmar' /tmp/dmesg.out | grep -qi "fault addr $PROBE"; then
    ok dmar-fault "the guest kernel logged a DMAR fault at $PROBE"
else
    bad dmar-fault "no DMAR fault for $PROBE in dmesg"
fi

# 8. A second process is refused while one holds the device.
iomem nvme bench "$ADDR/1" --rw randread --bs 4k --iodepth 4 --runtime 3 > /dev/null 2>&1 &
holder=$!
sleep 1
if iomem nvme identify "$ADDR" > /tmp/busy.out 2>&1; then
    bad busy "a second open succeeded while a bench held $ADDR"
elif grep -q "is busy: another process" /tmp/busy.out; then
    ok busy "$(cat /tmp/busy.out)"
else
    bad busy "unexpected refusal: $(cat /tmp/busy.out)"
fi
wait $holder

# 9. Poll-mode bench over VFIO, beside the kernel driver's fio number.
iomem nvme bench "$ADDR/1" --rw randread --bs 4k --iodepth 32 --runtime "$BENCH_SECONDS" --json \
    > /tmp/bench.out 2>/tmp/bench.err
rc=$?
cat /tmp/bench.out
VFIO_IOPS=$(sed -n 's/^ *"iops": \([0-9]*\).*/\1/p' /tmp/bench.out | head -n 1)
if [ $rc -eq 0 ] && [ -n "$VFIO_IOPS" ] && [ "$VFIO_IOPS" -gt 0 ]; then
    if [ -n "$FIO_IOPS" ]; then
        RATIO=$(awk -v a="$VFIO_IOPS" -v b="$FIO_IOPS" 'BEGIN { printf "%.2f", a / b }')
        ok bench "iomem nvme bench randread 4k qd32: $VFIO_IOPS IOPS; kernel nvme + fio io_uring: $FIO_IOPS IOPS; ratio $RATIO (TCG: only the ratio means anything)"
        say "RATIO vfio/kernel = $RATIO"
    else
        ok bench "iomem nvme bench randread 4k qd32: $VFIO_IOPS IOPS (no fio baseline)"
    fi
else
    bad bench "exit $rc: $(head -c 400 /tmp/bench.err)"
fi

# 10. Release to the kernel driver: the block device comes back.
if iomem unbind "$ADDR"; then
    i=0
    while [ ! -b /dev/nvme0n1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    drv=$(basename "$(readlink /sys/bus/pci/devices/$ADDR/driver)")
    if [ "$drv" = nvme ] && [ -b /dev/nvme0n1 ]; then
        ok unbind "$ADDR back on nvme, /dev/nvme0n1 present"
    else
        bad unbind "driver is $drv, /dev/nvme0n1 $( [ -b /dev/nvme0n1 ] && echo present || echo missing)"
    fi
else
    bad unbind "iomem unbind $ADDR failed"
fi

# 11. Round trip: bind again works after the release.
if iomem bind "$ADDR" > /dev/null && iomem unbind "$ADDR" > /dev/null; then
    ok rebind "second bind/unbind round trip"
else
    bad rebind "second bind/unbind round trip failed"
fi

finish
