#!/usr/bin/env bash
# bdev_iomemory_delete while bdevperf has 32 writes in flight on the bdev:
# the delete completes, bdevperf's job ends on the remove event, the
# process keeps running, the card is checkpointed and detached, and the
# next attach finds it clean.
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

card=$WORK/delete.img
sock=$WORK/delete.sock
make_card "$card" 1GiB
bdev_conf "$WORK/delete.json" "$(iomem_entry iom0 "$card")"

log "bdevperf -z on iom0; randwrite QD 32 for 20 s; delete after 2 s"
start_app delete "$sock" --preload "$EXAMPLES/bdevperf" -u -z -m "$CORES" -s 512 --json "$WORK/delete.json" -T iom0
python3 "$SPDK_DIR/examples/bdev/bdevperf/bdevperf.py" -s "$sock" -t 60 perform_tests -q 32 -o 4096 -w randwrite -t 20 \
	> "$WORK/delete-perf.json" 2>&1 &
perf_pid=$!
sleep 2
start=$(date +%s.%N)
[[ $(rpc "$sock" bdev_iomemory_delete iom0) == true ]] || die "delete with I/O in flight failed"
took=$(python3 -c "print(f'{$(date +%s.%N) - $start:.3f}')")
wait "$perf_pid" || true
rpc "$sock" spdk_get_version > /dev/null || die "bdevperf died after the delete"
[[ $(rpc "$sock" bdev_get_bdevs | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == 0 ]] ||
	die "iom0 still listed after delete"
grep -q "iom0: card checkpointed and detached" "$WORK/delete.log" || die "no clean detach after delete"
stop_app delete "$sock"

log "reattach: the card must be clean"
start_app delete2 "$sock" --preload "$BIN/spdk_tgt" -u -m "$CORES" -s 256 --json "$WORK/delete.json"
kind=$(rpc "$sock" bdev_get_bdevs -b iom0 | python3 -c '
import json, sys
print(json.load(sys.stdin)[0]["driver_specific"]["iomemory"]["vsl"]["attach"]["kind"])')
stop_app delete2 "$sock"
[[ $kind == Clean ]] || die "reattach after delete found the card $kind"
result "delete with 32 writes in flight: RPC returned true in ${took}s, bdevperf alive, card checkpointed; reattach: $kind"
