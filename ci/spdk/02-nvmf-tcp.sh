#!/usr/bin/env bash
# NVMe-oF/TCP on 127.0.0.1 exporting an iomemory bdev: spdk_nvme_perf 4 KiB
# randwrite and randread at QD 32; then data written through NVMe-oF (by
# spdk_dd over a bdev_nvme TCP controller) is read back through a second
# path that does not touch NVMe-oF (spdk_dd on the card directly, after
# the target detached it) and compared byte for byte. A malloc bdev
# exported by the same target under a second NQN is measured the same way:
# the NVMe-oF/TCP ceiling of this machine.
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

SECS=${IOMEM_PERF_SECS:-10}
NQN=nqn.2026-11.io.iomemory:iom0
MNQN=nqn.2026-11.io.iomemory:malloc0
ADDR=127.0.0.1
PORT=${IOMEM_NVMF_PORT:-4420}
card=$WORK/nvmf.img
sock=$WORK/nvmf.sock
make_card "$card" 1GiB

log "nvmf target (spdk_tgt + LD_PRELOAD) on $ADDR:$PORT"
start_app nvmf "$sock" --preload "$BIN/spdk_tgt" -u -m "$CORES" -s 1024
rpc "$sock" bdev_iomemory_create -b iom0 -p "$card" --format-if-blank > /dev/null
rpc "$sock" nvmf_create_transport -t TCP > /dev/null
rpc "$sock" nvmf_create_subsystem "$NQN" -a -s IOMEM0000000001 -d "ioMemory iom0" > /dev/null
rpc "$sock" nvmf_subsystem_add_ns "$NQN" iom0 > /dev/null
rpc "$sock" nvmf_subsystem_add_listener "$NQN" -t tcp -f ipv4 -a "$ADDR" -s "$PORT" > /dev/null
rpc "$sock" bdev_malloc_create -b Malloc0 256 4096 > /dev/null
rpc "$sock" nvmf_create_subsystem "$MNQN" -a -s IOMEM0000000009 -d "malloc control" > /dev/null
rpc "$sock" nvmf_subsystem_add_ns "$MNQN" Malloc0 > /dev/null
rpc "$sock" nvmf_subsystem_add_listener "$MNQN" -t tcp -f ipv4 -a "$ADDR" -s "$PORT" > /dev/null

for target in iom0 Malloc0; do
	nqn=$NQN
	[[ $target == Malloc0 ]] && nqn=$MNQN
	tr="trtype:TCP adrfam:IPv4 traddr:$ADDR trsvcid:$PORT subnqn:$nqn"
	for w in randwrite randread; do
		log "spdk_nvme_perf $target -q 32 -o 4096 -w $w -t $SECS"
		"$BIN/spdk_nvme_perf" -q 32 -o 4096 -w "$w" -t "$SECS" -c "$INIT_CORES" -s 256 -r "$tr" \
			> "$WORK/perf-$target-$w.log" 2>&1 || { cat "$WORK/perf-$target-$w.log"; die "spdk_nvme_perf $w"; }
		line=$(grep -E '^Total' "$WORK/perf-$target-$w.log" | tail -1)
		[[ -n $line ]] || { cat "$WORK/perf-$target-$w.log"; die "no Total line from perf $w"; }
		# Total : IOPS MiB/s avg min max (us)
		read -r iops mibs avg min max <<< "$(awk '{print $3, $4, $5, $6, $7}' <<< "$line")"
		result "nvmf-tcp perf 4k $w QD32 ${SECS}s $target: $iops IOPS, $mibs MiB/s, avg $avg us, max $max us"
	done
done

log "write 64 MiB of random data through NVMe-oF (spdk_dd -> bdev_nvme TCP -> target -> iom0)"
make_data "$WORK/data.bin" 64 42
cat > "$WORK/nvmf-init.json" << EOF
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"tcp","adrfam":"ipv4",
  "traddr":"$ADDR","trsvcid":"$PORT","subnqn":"$NQN"}},
 {"method":"bdev_wait_for_examine"}]}]}
EOF
# 128 KiB units; offset 512 units = 64 MiB into the device.
"$BIN/spdk_dd" -u -m "$INIT_CORES" -s 256 --json "$WORK/nvmf-init.json" --if "$WORK/data.bin" --ob Nvme0n1 \
	--bs 131072 --seek 512 --qd 8 > "$WORK/dd-write.log" 2>&1 || { cat "$WORK/dd-write.log"; die "spdk_dd over NVMe-oF"; }

result "nvmf-tcp iom0 counters: $(iomem_io "$sock" iom0)"
log "detach the card (stop the target: bdev destruct checkpoints it)"
stop_app nvmf "$sock"
grep -q "iom0: card checkpointed and detached" "$WORK/nvmf.log" || die "target did not detach the card cleanly"

log "read it back through a second path: spdk_dd on the card itself (no NVMe-oF)"
bdev_conf "$WORK/direct.json" "$(iomem_entry iom0 "$card")"
env LD_PRELOAD="$MODULE" "$BIN/spdk_dd" -u -m "$CORES" -s 256 --json "$WORK/direct.json" --ib iom0 --of "$WORK/back.bin" \
	--bs 131072 --skip 512 --count 512 --qd 8 > "$WORK/dd-read.log" 2>&1 || { cat "$WORK/dd-read.log"; die "spdk_dd direct"; }
cmp "$WORK/data.bin" "$WORK/back.bin" || die "data read back directly differs from data written through NVMe-oF"
result "nvmf-tcp data check: 64 MiB written via NVMe-oF/TCP (spdk_dd -> Nvme0n1) == read back directly from the card (spdk_dd iom0): identical ($(sha256sum < "$WORK/data.bin" | cut -c1-16))"
