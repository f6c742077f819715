#!/usr/bin/env bash
# Every request type the module serves, through SPDK's bdev layer: bdevperf
# workloads write, verify, unmap, write_zeroes, flush and reset on iom0 in
# one process, none may fail; the module's own counters show each type
# arrived.
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

SECS=${IOMEM_TYPES_SECS:-2}
card=$WORK/types.img
sock=$WORK/types.sock
make_card "$card" 1GiB
bdev_conf "$WORK/types.json" "$(iomem_entry iom0 "$card")"
start_app types "$sock" --preload "$EXAMPLES/bdevperf" -u -z -m "$CORES" -s 512 --json "$WORK/types.json" -T iom0

for w in write verify unmap write_zeroes flush reset; do
	python3 "$SPDK_DIR/examples/bdev/bdevperf/bdevperf.py" -s "$sock" -t 120 \
		perform_tests -q 32 -o 4096 -w "$w" -t "$SECS" > "$WORK/types-$w.json" ||
		{ tail -20 "$WORK/types.log"; die "bdevperf $w"; }
	read -r iops failed < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print("%.0f %d" % (r["iops"], r["io_failed"]))' "$WORK/types-$w.json")
	((failed == 0)) || die "$w: $failed I/O failed"
	result "bdevperf $w QD32 4k ${SECS}s on iom0: $iops IOPS, 0 failed"
done
counts=$(python3 "$SPDK_DIR/scripts/rpc.py" -s "$sock" bdev_get_bdevs -b iom0 | python3 -c '
import json, sys
io = json.load(sys.stdin)[0]["driver_specific"]["iomemory"]["io"]
for k in ("writes", "reads", "unmaps", "write_zeroes", "flushes"):
    assert io[k] > 0, (k, io)
assert io["failed"] == 0, io
print(", ".join("%s %d" % (k, io[k]) for k in ("reads", "writes", "unmaps", "write_zeroes", "flushes", "resets", "nomem", "bounced")))')
stop_app types "$sock"
result "iom0 counters after the io-type runs: $counts (resets reach the module only when I/O is still outstanding after reset_io_drain_timeout)"
