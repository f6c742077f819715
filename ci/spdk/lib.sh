#!/usr/bin/env bash
# Shared helpers of the ci/spdk scripts, which RUN libiomemory_bdev.so in a
# stock SPDK v26.05 that someone built by hand outside the repository (see
# bdev/README.md). Nothing here downloads or builds SPDK.
#
# Inputs (environment):
#   SPDK_DIR        SPDK v26.05 tree built with --with-shared (required)
#   IOMEM_SPDK_WORK scratch directory (default /tmp/iomem-spdk)
#   CARGO_TARGET_DIR where cargo puts libiomemory_bdev.so and iomem
#   IOMEM_CORES     reactor mask of targets (default 0x1)
#   IOMEM_INIT_CORES mask of initiators (perf, bdevperf) (default 0x2)
set -euo pipefail

: "${SPDK_DIR:?set SPDK_DIR to an SPDK v26.05 tree built with --with-shared (see bdev/README.md)}"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${IOMEM_SPDK_WORK:-/tmp/iomem-spdk}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
MODULE=$TARGET_DIR/release/libiomemory_bdev.so
IOMEM=$TARGET_DIR/release/iomem
CORES=${IOMEM_CORES:-0x1}
INIT_CORES=${IOMEM_INIT_CORES:-0x2}
BIN=$SPDK_DIR/build/bin
EXAMPLES=$SPDK_DIR/build/examples
RESULTS=$WORK/results.txt
mkdir -p "$WORK"

export LD_LIBRARY_PATH=$SPDK_DIR/build/lib:$SPDK_DIR/isa-l/.libs:$SPDK_DIR/isa-l-crypto/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$REPO/bdev/python:$SPDK_DIR/python${PYTHONPATH:+:$PYTHONPATH}

log() { printf '== %s\n' "$*"; }
result() { printf '%s\n' "$*" | tee -a "$RESULTS"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# rpc SOCK ARGS...: rpc.py with the iomemory plugin.
rpc() {
	local sock=$1
	shift
	python3 "$SPDK_DIR/scripts/rpc.py" -s "$sock" --plugin iomemory_rpc_plugin "$@"
}

# rpc_raw SOCK METHOD [PARAMS_JSON]: one raw JSON-RPC call (any params,
# even malformed ones); prints the result, or the error and fails.
rpc_raw() {
	python3 - "$@" << 'EOF'
import json, sys
from spdk.rpc.client import JSONRPCClient, JSONRPCException
sock, method = sys.argv[1], sys.argv[2]
params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
try:
    print(json.dumps(JSONRPCClient(sock).call(method, params)))
except JSONRPCException as e:
    print(e.message)
    sys.exit(1)
EOF
}

# Builds the module (shim included) and the iomem CLI.
build_module() {
	log "cargo build --release -p iomemory-bdev -p iomem (SPDK_DIR=$SPDK_DIR)"
	(cd "$REPO" && SPDK_DIR=$SPDK_DIR nice cargo build --release -p iomemory-bdev -p iomem)
	nm -D --defined-only "$MODULE" | grep iomem_rs_abi_version > /dev/null || die "$MODULE lacks the Rust ABI"
	nm "$MODULE" | grep rpc_register_rpc_bdev_iomemory_create > /dev/null || die "$MODULE was built without the SPDK shim"
}

HUGE_PREV=
HUGE_MOUNTED=
# Reserves 1024 x 2 MiB hugepages (or $1) and mounts hugetlbfs.
hugepages_up() {
	local want=${1:-1024}
	HUGE_PREV=$(cat /proc/sys/vm/nr_hugepages)
	if ((HUGE_PREV < want)); then
		echo "$want" > /proc/sys/vm/nr_hugepages
	fi
	local got
	got=$(cat /proc/sys/vm/nr_hugepages)
	((got >= want)) || die "only $got of $want hugepages could be reserved"
	if ! mount | grep -q "type hugetlbfs"; then
		mkdir -p /dev/hugepages
		mount -t hugetlbfs nodev /dev/hugepages
		HUGE_MOUNTED=1
	fi
	log "hugepages: $got x 2 MiB reserved"
}

# Releases what hugepages_up took.
hugepages_down() {
	if [[ -n $HUGE_MOUNTED ]]; then
		umount /dev/hugepages || true
		HUGE_MOUNTED=
	fi
	if [[ -n $HUGE_PREV ]]; then
		echo "$HUGE_PREV" > /proc/sys/vm/nr_hugepages
		HUGE_PREV=
	fi
}

declare -A APP_PID=()

# start_app NAME SOCK [--preload] BINARY ARGS...: runs an SPDK app in the
# background (log in $WORK/NAME.log) and waits until its RPC socket answers.
start_app() {
	local name=$1 sock=$2
	shift 2
	local preload=()
	if [[ $1 == --preload ]]; then
		preload=(env "LD_PRELOAD=$MODULE")
		shift
	fi
	rm -f "$sock"
	"${preload[@]}" "$@" -r "$sock" > "$WORK/$name.log" 2>&1 &
	APP_PID[$name]=$!
	local i
	for ((i = 0; i < 300; i++)); do
		if [[ -S $sock ]] && python3 "$SPDK_DIR/scripts/rpc.py" -s "$sock" -t 2 spdk_get_version > /dev/null 2>&1; then
			return 0
		fi
		kill -0 "${APP_PID[$name]}" 2> /dev/null || { cat "$WORK/$name.log"; die "$name exited during start"; }
		sleep 0.1
	done
	die "$name did not answer on $sock"
}

# stop_app NAME SOCK: asks for a clean exit (SIGTERM through RPC), waits.
stop_app() {
	local name=$1 sock=$2
	local pid=${APP_PID[$name]:-}
	[[ -n $pid ]] || return 0
	python3 "$SPDK_DIR/scripts/rpc.py" -s "$sock" -t 5 spdk_kill_instance SIGTERM > /dev/null 2>&1 || kill -TERM "$pid" 2> /dev/null || true
	local i
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2> /dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2> /dev/null; then
		kill -KILL "$pid" 2> /dev/null || true
		echo "warning: $name had to be killed" >&2
	fi
	wait "$pid" 2> /dev/null || true
	unset "APP_PID[$name]"
}

# Stops every app this script started (for EXIT traps).
stop_all() {
	local name
	for name in "${!APP_PID[@]}"; do
		kill -TERM "${APP_PID[$name]}" 2> /dev/null || true
	done
	for name in "${!APP_PID[@]}"; do
		wait "${APP_PID[$name]}" 2> /dev/null || true
	done
	APP_PID=()
}

# make_card PATH CAPACITY: a fresh emulated card image.
make_card() {
	rm -f "$1"
	"$IOMEM" sim create "$1" --capacity "$2" > /dev/null
}

# Deterministic test data: make_data FILE MIB SEED.
make_data() {
	python3 - "$1" "$2" "$3" << 'EOF'
import random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with open(path, "wb") as f:
    for _ in range(mib):
        f.write(rng.randbytes(1 << 20))
EOF
}

# bdev_conf FILE ENTRIES...: writes an SPDK JSON config with one bdev
# subsystem holding the given method entries (JSON objects).
bdev_conf() {
	local file=$1
	shift
	local IFS=,
	printf '{"subsystems":[{"subsystem":"bdev","config":[%s,{"method":"bdev_wait_for_examine"}]}]}\n' "$*" > "$file"
}

iomem_entry() {
	printf '{"method":"bdev_iomemory_create","params":{"name":"%s","path":"%s","format_if_blank":true}}' "$1" "$2"
}

# iomem_io SOCK BDEV: the iomemory bdev's I/O counters, one line.
iomem_io() {
	python3 "$SPDK_DIR/scripts/rpc.py" -s "$1" bdev_get_bdevs -b "$2" | python3 -c '
import json, sys
d = json.load(sys.stdin)[0]["driver_specific"]["iomemory"]
io, dma = d["io"], d["dma"]
print("%d reads, %d writes, %d failed, %d nomem, %d bounced; DMA %d region(s) %d MiB, %d refused"
      % (io["reads"], io["writes"], io["failed"], io["nomem"], io["bounced"],
         dma["regions"], dma["bytes"] >> 20, dma["refused"]))'
}

# bdevperf_iops LOGFILE BDEV: IOPS of BDEV from a bdevperf summary.
bdevperf_iops() {
	awk -v b="$2" '$1 == b && $2 == ":" { print $4 }' "$1" | tail -1
}
