#!/usr/bin/env bash
# bdevperf, same workload, on three bdevs of one run:
#   iom0     the iomemory bdev on an emulated 1 GiB ioDrive2 card,
#   Malloc0  a malloc bdev of the same size (the SPDK-internal ceiling),
#   ftl0     SPDK's own FTL bdev (the peer doing the same job: a host FTL
#            over flash-like media) over a malloc base and a malloc cache.
# Workload: 4 KiB randwrite, then randread of what was written, at QD 32,
# $IOMEM_PERF_SECS seconds each, in the same bdevperf process (-z and two
# perform_tests calls), one reactor, each over its whole bdev.
#
# Stock SPDK v26.05 FTL refuses a base under 20 GiB and a cache under
# 5 GiB and uses 1 GiB bands; as malloc bdevs that is 25 GiB of RAM, more
# than this machine has. The SPDK used here was therefore built with those
# minimums lowered to 2 GiB / 1 GiB (lib/ftl/mngt/ftl_mngt_bdev.c) and
# SPDK_FTL_ZONE_EMU_BLOCKS=65536 (256 MiB bands, SPDK's own make knob);
# set IOMEM_FTL_BASE_MIB/IOMEM_FTL_CACHE_MIB to 20480/5120 on a stock build
# with enough memory. The malloc bdevs need more than the reserved
# hugepages, so all three runs use DPDK --no-huge memory (the same for
# every bdev, so the comparison stays fair).
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

SECS=${IOMEM_PERF_SECS:-10}
FTL_BASE_MIB=${IOMEM_FTL_BASE_MIB:-4096}
FTL_CACHE_MIB=${IOMEM_FTL_CACHE_MIB:-1100}
card=$WORK/perf.img
make_card "$card" 1GiB
sock=$WORK/bdevperf.sock

# perf NAME BDEV MEM_MB PRELOAD(0/1) CONFIG_ENTRIES...
perf() {
	local name=$1 bdev=$2 mem=$3 preload=$4
	shift 4
	bdev_conf "$WORK/$name.json" "$@"
	local args=("$EXAMPLES/bdevperf" -u -z --no-huge -s "$mem" -m "$CORES" --json "$WORK/$name.json" -T "$bdev")
	if ((preload)); then
		start_app "bdevperf-$name" "$sock" --preload "${args[@]}"
	else
		start_app "bdevperf-$name" "$sock" "${args[@]}"
	fi
	local blocks
	blocks=$(python3 "$SPDK_DIR/scripts/rpc.py" -s "$sock" -t 600 bdev_get_bdevs -b "$bdev" -t 600 |
		python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["num_blocks"])')
	local rw
	for rw in randwrite randread; do
		log "bdevperf $bdev ($blocks blocks) $rw"
		python3 "$SPDK_DIR/examples/bdev/bdevperf/bdevperf.py" -s "$sock" -t $((SECS + 120)) \
			perform_tests -q 32 -o 4096 -w "$rw" -t "$SECS" > "$WORK/bdevperf-$name-$rw.json" ||
			{ tail -30 "$WORK/bdevperf-$name.log"; die "bdevperf $name $rw"; }
		read -r iops lat failed < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print("%.0f %.1f %d" % (r["iops"], r["avg_latency_us"], r["io_failed"]))' "$WORK/bdevperf-$name-$rw.json")
		((failed == 0)) || die "$bdev $rw: $failed I/O failed"
		eval "IOPS_${name}_${rw}=$iops"
		result "bdevperf 4k $rw QD32 ${SECS}s: $bdev ($blocks x 4 KiB) $iops IOPS, avg $lat us"
	done
	if ((preload)); then
		result "bdevperf $bdev counters: $(iomem_io "$sock" "$bdev")"
	fi
	stop_app "bdevperf-$name" "$sock"
}

perf iom0 iom0 2048 1 "$(iomem_entry iom0 "$card")"
perf malloc Malloc0 2048 0 \
	'{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}}'
perf ftl ftl0 $((FTL_BASE_MIB + FTL_CACHE_MIB + 1024)) 0 \
	'{"method":"bdev_malloc_create","params":{"name":"FtlBase","num_blocks":'$((FTL_BASE_MIB * 256))',"block_size":4096}}' \
	'{"method":"bdev_malloc_create","params":{"name":"FtlCache","num_blocks":'$((FTL_CACHE_MIB * 256))',"block_size":4096}}' \
	'{"method":"bdev_ftl_create","params":{"name":"ftl0","base_bdev":"FtlBase","cache":"FtlCache","l2p_dram_limit":64}}'

for rw in randwrite randread; do
	i=IOPS_iom0_$rw m=IOPS_malloc_$rw f=IOPS_ftl_$rw
	result "ratio $rw: iom0/Malloc0 = $(python3 -c "print(f'{${!i}/${!m}:.4f}')"), iom0/ftl0 = $(python3 -c "print(f'{${!i}/${!f}:.3f}')")"
done
