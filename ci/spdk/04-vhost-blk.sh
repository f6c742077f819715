#!/usr/bin/env bash
# A vhost-user-blk controller on an iomemory bdev (SPDK's vhost target with
# the module preloaded), driven by SPDK's virtio-user initiator
# (bdev_virtio_attach_controller --trtype user) inside bdevperf running the
# verify workload: every block written is read back and compared.
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

SECS=${IOMEM_PERF_SECS:-10}
card=$WORK/vhost.img
sock=$WORK/vhost.sock
ctrl=vhost.iom0
make_card "$card" 1GiB
rm -f "$WORK/$ctrl"

log "vhost target with the module, controller $WORK/$ctrl on iom0"
start_app vhost "$sock" --preload "$BIN/vhost" -u -m "$CORES" -s 512 -S "$WORK"
rpc "$sock" bdev_iomemory_create -b iom0 -p "$card" --format-if-blank > /dev/null
rpc "$sock" vhost_create_blk_controller "$ctrl" iom0 > /dev/null
[[ -S $WORK/$ctrl ]] || die "no vhost-user socket at $WORK/$ctrl"

log "bdevperf -w verify over virtio-user ($SECS s, QD 32, 4 KiB)"
bdev_conf "$WORK/virtio.json" \
	'{"method":"bdev_virtio_attach_controller","params":{"name":"VirtioBlk0","trtype":"user","traddr":"'"$WORK/$ctrl"'","dev_type":"blk","vq_count":1,"vq_size":512}}'
# The virtio-user initiator shares its memory with the target through
# hugetlbfs file descriptors: pre-allocated, one file (-s, -g).
"$EXAMPLES/bdevperf" -u -m "$INIT_CORES" -s 1024 -g --json "$WORK/virtio.json" -T VirtioBlk0 \
	-q 32 -o 4096 -w verify -t "$SECS" > "$WORK/bdevperf-virtio.log" 2>&1 ||
	{ tail -40 "$WORK/bdevperf-virtio.log"; die "bdevperf verify over vhost-user failed"; }
line=$(tr '\r' '\n' < "$WORK/bdevperf-virtio.log" | awk '$1 == "Total" && $2 == ":"' | tail -1)
[[ -n $line ]] || { tail -40 "$WORK/bdevperf-virtio.log"; die "no bdevperf result"; }
read -r iops mibs fails <<< "$(awk '{print $3, $4, $5}' <<< "$line")"
[[ $fails == 0.00 ]] || die "verify reported $fails failed I/O per second"
grep -qi "miscompare\|verify failed\|io_failed" "$WORK/bdevperf-virtio.log" && die "verify found bad data"

info=$(rpc "$sock" bdev_get_bdevs -b iom0)
read -r writes reads bounced < <(python3 -c '
import json, sys
io = json.loads(sys.argv[1])[0]["driver_specific"]["iomemory"]["io"]
print(io["writes"], io["reads"], io["bounced"])' "$info")
((writes > 0 && reads > 0)) || die "iom0 saw no I/O ($writes writes, $reads reads)"
result "vhost iom0 counters: $(iomem_io "$sock" iom0)"
stop_app vhost "$sock"
result "vhost-user-blk: bdevperf verify over virtio-user -> vhost -> iom0, ${SECS}s QD32 4k: $iops IOPS, 0 failures; iom0 served $writes writes, $reads reads ($bounced bounced)"
