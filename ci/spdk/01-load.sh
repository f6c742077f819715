#!/usr/bin/env bash
# spdk_tgt loads libiomemory_bdev.so both ways (LD_PRELOAD and DPDK's -d
# through --env-context), creates an iomemory bdev on an emulated card,
# shows it in bdev_get_bdevs with its driver-specific status, checks the
# RPC errors, and deletes it (checkpoint + detach).
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

card=$WORK/load.img
make_card "$card" 1GiB
sock=$WORK/load.sock

check_route() {
	local route=$1
	shift
	log "spdk_tgt, module loaded by $route"
	start_app "tgt-$route" "$sock" "$@"
	local methods
	methods=$(rpc "$sock" rpc_get_methods)
	grep -q '"bdev_iomemory_create"' <<< "$methods" || die "$route: RPC not registered"
	grep -q '"bdev_iomemory_delete"' <<< "$methods" || die "$route: RPC not registered"
	[[ $(rpc "$sock" bdev_iomemory_create -b iom0 -p "$card" --format-if-blank) == iom0 ]] || die "$route: create"
	rpc "$sock" bdev_get_bdevs -b iom0 > "$WORK/bdev-$route.json"
	python3 - "$WORK/bdev-$route.json" << 'EOF'
import json, sys
b = json.load(open(sys.argv[1]))[0]
d = b["driver_specific"]["iomemory"]
assert b["product_name"] == "ioMemory" and b["block_size"] == 4096, b
assert d["card"]["identity"]["model"] == "ioDrive2", d["card"]
assert d["vsl"]["ram_usage"]["total"] > 0 and "reserve" in d["vsl"], d["vsl"]
assert d["dma"]["regions"] >= 1 and d["dma"]["refused"] == 0, d["dma"]
assert d["lifecycle"]["state"] == "active", d["lifecycle"]
print(f'   {b["name"]}: {b["num_blocks"]} x {b["block_size"]} B, model {d["card"]["identity"]["model"]}, '
      f'SN {d["card"]["identity"]["serial"]}, RAM {d["vsl"]["ram_usage"]["total"]} B, '
      f'WA {d["vsl"]["write_amplification"]}, reserve {d["vsl"]["reserve"]["state"]}, '
      f'DMA {d["dma"]["regions"]} region(s) / {d["dma"]["bytes"] >> 20} MiB, uuid {b["uuid"]}')
EOF
	# Bad parameters answer with JSON-RPC errors and change nothing.
	local err
	err=$(rpc "$sock" bdev_iomemory_create -b iom1 -p /nonexistent.img 2>&1 || true)
	grep -q -- '-32602' <<< "$err" || die "$route: missing image not refused: $err"
	err=$(rpc_raw "$sock" bdev_iomemory_create 2>&1 || true)
	grep -q -- '-32602' <<< "$err" || die "$route: missing params not refused: $err"
	err=$(rpc_raw "$sock" bdev_iomemory_create '{"name":"x","path":"'"$card"'","colour":"red"}' 2>&1 || true)
	grep -q -- 'unknown field' <<< "$err" || die "$route: unknown key not refused: $err"
	err=$(rpc "$sock" bdev_iomemory_create -b iom0 -p "$card" 2>&1 || true)
	grep -qi 'lock\|in use\|already\|exist' <<< "$err" || die "$route: second open of the card not refused: $err"
	[[ $(rpc "$sock" bdev_iomemory_delete iom0) == true ]] || die "$route: delete"
	err=$(rpc "$sock" bdev_iomemory_delete iom0 2>&1 || true)
	grep -q -- '-19' <<< "$err" || die "$route: delete of a missing bdev: $err"
	stop_app "tgt-$route" "$sock"
	grep -q "iom0: card checkpointed and detached" "$WORK/tgt-$route.log" || die "$route: no detach message"
	result "load via $route: OK (create, bdev_get_bdevs driver_specific, RPC errors, delete+checkpoint)"
}

check_route LD_PRELOAD --preload "$BIN/spdk_tgt" -u -m "$CORES"
check_route env-context "$BIN/spdk_tgt" -u -m "$CORES" --env-context "-d $MODULE"
