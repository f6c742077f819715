#!/usr/bin/env bash
# save_config / restart with --json: an iomemory bdev, a passthru bdev on
# top of it and an NVMe-oF/TCP subsystem exporting the passthru. Data is
# written over NVMe-oF, the configuration saved, the target stopped and
# restarted from the saved JSON (also from a copy with the module's entry
# moved first in the bdev subsystem), and the data read back over NVMe-oF.
# SPDK saves module-level entries (bdev_passthru_create) before per-bdev
# ones (bdev_iomemory_create), so the saved file itself exercises a
# dependent created before its base; the copy exercises the module first.
source "$(dirname "$0")/lib.sh"
trap stop_all EXIT

NQN=nqn.2026-11.io.iomemory:cfg
ADDR=127.0.0.1
PORT=${IOMEM_NVMF_PORT:-4421}
card=$WORK/config.img
sock=$WORK/config.sock
make_card "$card" 1GiB
make_data "$WORK/cfg-data.bin" 32 7

cat > "$WORK/cfg-init.json" << EOF
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"tcp","adrfam":"ipv4",
  "traddr":"$ADDR","trsvcid":"$PORT","subnqn":"$NQN"}},
 {"method":"bdev_wait_for_examine"}]}]}
EOF
# nvmf_dd in|out FILE: copy FILE to / from the exported namespace.
nvmf_dd() {
	local args=(--ob Nvme0n1 --if "$2" --seek 100)
	[[ $1 == out ]] && args=(--ib Nvme0n1 --of "$2" --skip 100 --count 256)
	"$BIN/spdk_dd" -u -m "$INIT_CORES" -s 256 --json "$WORK/cfg-init.json" --bs 131072 --qd 4 "${args[@]}" \
		> "$WORK/cfg-dd.log" 2>&1 || { tail -20 "$WORK/cfg-dd.log"; die "spdk_dd $1 over NVMe-oF"; }
}

log "target 1: iom0, passthru pt0 on it, NVMe-oF/TCP exporting pt0; write 32 MiB"
start_app cfg1 "$sock" --preload "$BIN/spdk_tgt" -u -m "$CORES" -s 512
rpc "$sock" bdev_iomemory_create -b iom0 -p "$card" --format-if-blank > /dev/null
rpc "$sock" bdev_passthru_create -b iom0 -p pt0 > /dev/null
rpc "$sock" nvmf_create_transport -t TCP > /dev/null
rpc "$sock" nvmf_create_subsystem "$NQN" -a -s IOMEM0000000002 > /dev/null
rpc "$sock" nvmf_subsystem_add_ns "$NQN" pt0 > /dev/null
rpc "$sock" nvmf_subsystem_add_listener "$NQN" -t tcp -f ipv4 -a "$ADDR" -s "$PORT" > /dev/null
nvmf_dd in "$WORK/cfg-data.bin"
rpc "$sock" save_config > "$WORK/saved.json"
stop_app cfg1 "$sock"

python3 - "$WORK/saved.json" "$WORK/saved-first.json" "$card" << 'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
bdev = next(s for s in cfg["subsystems"] if s["subsystem"] == "bdev")["config"]
methods = [e["method"] for e in bdev]
i = methods.index("bdev_iomemory_create")
entry = bdev[i]
assert entry["params"]["name"] == "iom0" and entry["params"]["path"] == sys.argv[3], entry
print("   saved bdev config order:", ", ".join(methods))
# A copy with the iomemory entry first, before bdev_set_options and the rest.
bdev.insert(0, bdev.pop(i))
json.dump(cfg, open(sys.argv[2], "w"), indent=1)
EOF

for conf in saved saved-first; do
	log "target restarted with --json $conf.json: read back over NVMe-oF"
	start_app "cfg-$conf" "$sock" --preload "$BIN/spdk_tgt" -u -m "$CORES" -s 512 --json "$WORK/$conf.json"
	kind=$(rpc "$sock" bdev_get_bdevs -b iom0 | python3 -c '
import json, sys
print(json.load(sys.stdin)[0]["driver_specific"]["iomemory"]["vsl"]["attach"]["kind"])')
	rpc "$sock" bdev_get_bdevs -b pt0 > /dev/null || die "$conf: pt0 missing after restart"
	rm -f "$WORK/cfg-back.bin"
	nvmf_dd out "$WORK/cfg-back.bin"
	cmp "$WORK/cfg-data.bin" "$WORK/cfg-back.bin" || die "$conf: data differs after restart"
	stop_app "cfg-$conf" "$sock"
	result "save_config -> restart --json $conf.json: iom0 attached ($kind), pt0 + NVMe-oF back, 32 MiB written before the restart read back identical over NVMe-oF"
done
