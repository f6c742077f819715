#!/usr/bin/env bash
# Hot remove: the emulated card loses power (bdev_iomemory_inject_power_cut)
# under QD 32 writes from bdevperf (-f: keep going after failures).
# Requests fail (none is dropped), a poller sees the card offline and
# unregisters the bdev, bdevperf's job ends and the process keeps
# running; nothing is checkpointed. A new
# process then attaches the card by a recovery scan and a verify run on it
# passes.
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

card=$WORK/hotremove.img
sock=$WORK/hotremove.sock
make_card "$card" 1GiB
bdev_conf "$WORK/hotremove.json" "$(iomem_entry iom0 "$card")"

log "bdevperf -z on iom0: randwrite QD 32; power cut after 2 s"
start_app hotremove "$sock" --preload "$EXAMPLES/bdevperf" -u -z -f -m "$CORES" -s 512 --json "$WORK/hotremove.json" -T iom0
python3 "$SPDK_DIR/examples/bdev/bdevperf/bdevperf.py" -s "$sock" -t 60 perform_tests -q 32 -o 4096 -w randwrite -t 20 \
	> "$WORK/hotremove-perf.json" 2>&1 &
perf_pid=$!
sleep 2
[[ $(rpc "$sock" bdev_iomemory_inject_power_cut iom0) == true ]] || die "power cut injection failed"
for ((i = 0; i < 100; i++)); do
	n=$(python3 "$SPDK_DIR/scripts/rpc.py" -s "$sock" bdev_get_bdevs | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
	((n == 0)) && break
	sleep 0.1
done
((n == 0)) || die "iom0 was not hot-removed after the power cut"
wait "$perf_pid" || true
rpc "$sock" spdk_get_version > /dev/null || die "bdevperf died after the hot remove"
grep -q "the card went offline; removing the bdev (hot remove)" "$WORK/hotremove.log" || die "no hot-remove message"
grep -q "iom0: the card was lost; nothing checkpointed" "$WORK/hotremove.log" || die "no card-lost detach"
failed=$(grep -c "I/O failed: the card lost power" "$WORK/hotremove.log" || true)
stop_app hotremove "$sock"

log "new process: the card is recovered by a scan"
start_app hotremove2 "$sock" --preload "$BIN/spdk_tgt" -u -m "$CORES" -s 256 --json "$WORK/hotremove.json"
kind=$(rpc "$sock" bdev_get_bdevs -b iom0 | python3 -c '
import json, sys
print(json.load(sys.stdin)[0]["driver_specific"]["iomemory"]["vsl"]["attach"]["kind"])')
stop_app hotremove2 "$sock"
[[ $kind == Scan ]] || die "attach after a power cut was $kind, expected a recovery scan"

log "bdevperf verify on the recovered card"
env LD_PRELOAD="$MODULE" "$EXAMPLES/bdevperf" -u -m "$CORES" -s 512 --json "$WORK/hotremove.json" \
	-q 32 -o 4096 -w verify -t 3 > "$WORK/hotremove-verify.log" 2>&1 ||
	{ tail -30 "$WORK/hotremove-verify.log"; die "verify after recovery failed"; }
fails=$(tr '\r' '\n' < "$WORK/hotremove-verify.log" | awk '$1 == "Total" && $2 == ":" { print $5 }' | tail -1)
[[ $fails == 0.00 ]] || die "verify after recovery: $fails failures/s"
result "hot remove: power cut under QD32 randwrite -> $failed request(s) failed (each logged, none dropped), iom0 unregistered by its poller, bdevperf alive, card not checkpointed; next attach: $kind (recovery), bdevperf verify on it: 0 failures"
