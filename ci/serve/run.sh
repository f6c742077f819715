#!/usr/bin/env bash
# `iomem serve` against real clients, none of them written here:
#   NBD:   nbdinfo, fio (--ioengine=nbd, crc32c verify, several bs/iodepth),
#          qemu-io, nbdcopy, python3-libnbd (libnbd_checks.py);
#          the same suite against qemu-nbd, to show the tests are right;
#          kill -9 of the server during a verifying fio run, restart, and a
#          verify-only pass over what was acknowledged;
#          throughput: fio nbd 4k randread/randwrite QD32, ours vs qemu-nbd
#          on a file in tmpfs.
#   vhost: throughput, ours vs qemu-storage-daemon's vhost-user-blk export
#          (cargo bench --bench vhost_vs_qsd, the rust-vmm Frontend client), and
#          the QEMU guest smoke test (guest.sh) unless IOMEM_SERVE_GUEST=0.
#
#   bash ci/serve/run.sh      (root: installs its Debian packages)
#
# All traffic is on 127.0.0.1 and Unix sockets; every client runs under
# `timeout`. Environment: IOMEM_SERVE_WORK (scratch, default
# target/serve-ci), IOMEM_SERVE_BENCH_SECS (default 5), IOMEM_SERVE_GUEST
# (1 = run the guest test, default 1).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${IOMEM_SERVE_WORK:-$ROOT/target/serve-ci}
BENCH_SECS=${IOMEM_SERVE_BENCH_SECS:-5}
GUEST=${IOMEM_SERVE_GUEST:-1}
PY=/usr/bin/python3
PASS=0
FAIL=0
PIDS=()

log() { echo "serve-ci: $*"; }
ok() { echo "serve-ci: ok: $*"; PASS=$((PASS + 1)); }
bad() { echo "serve-ci: FAILED: $*"; FAIL=$((FAIL + 1)); }
die() { echo "serve-ci: FAILED: $*" >&2; exit 1; }
cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

rm -rf "$WORK" && mkdir -p "$WORK"
SHM=$(mktemp -d /dev/shm/iomem-serve-ci.XXXXXX)
trap 'cleanup; rm -rf "$SHM"' EXIT

# --- packages ------------------------------------------------------------
log "packages"
if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    need=()
    command -v fio >/dev/null || need+=(fio)
    command -v nbdinfo >/dev/null || need+=(libnbd-bin)
    $PY -c 'import nbd' 2>/dev/null || need+=(python3-libnbd)
    command -v qemu-io >/dev/null || need+=(qemu-utils)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        apt-get install -y --no-install-recommends "${need[@]}"
    fi
fi
for t in fio nbdinfo nbdcopy qemu-io qemu-nbd qemu-storage-daemon; do
    command -v "$t" >/dev/null || die "$t is not installed"
done
$PY -c 'import nbd' || die "python3-libnbd is not installed"

# --- build ---------------------------------------------------------------
log "build"
cd "$ROOT"
cargo build --release -p iomem
IOMEM=${CARGO_TARGET_DIR:-$ROOT/target}/release/iomem
"$IOMEM" serve --help >/dev/null 2>&1 || die "this iomem has no 'serve' subcommand: cli/src/main.rs must wire cmd_serve/cmd_rpc"

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (bounded) for a path to appear.
wait_path() {
    for _ in $(seq 1 300); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    return 1
}

# Starts iomem serve on card $1 with NBD on unix:$2 and TCP $3; sets SERVE_PID.
start_ours() {
    local card=$1 sock=$2 tcp=$3 log=$4
    shift 4
    rm -f "$sock"
    "$IOMEM" serve --rpc-socket "$WORK/rpc.sock" "$@" "$card" \
        --nbd "unix:$sock" --export disk0 --nbd "$tcp" --export disk0-tcp >"$log" 2>&1 &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    wait_path "$sock" || { cat "$log"; die "iomem serve did not come up"; }
}

# --- the NBD client suite ------------------------------------------------
# nbd_suite NAME URI_UNIX URI_TCP STRICT
nbd_suite() {
    local name=$1 uri=$2 turi=$3 strict=$4
    log "NBD suite against $name"
    if timeout 60 nbdinfo --json "$uri" >"$WORK/$name-nbdinfo.json"; then
        if [ "$strict" = 1 ]; then
            if $PY - "$WORK/$name-nbdinfo.json" <<'PYEOF'
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
need = ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_df"]
missing = [k for k in need if not e.get(k)]
assert not missing, missing
assert "base:allocation" in e.get("contexts", []), e.get("contexts")
assert e["block_size_minimum"] in (512, 4096) and e["block_size_maximum"] >= 1 << 20
PYEOF
            then ok "$name: nbdinfo capabilities"; else bad "$name: nbdinfo capabilities"; fi
        else
            ok "$name: nbdinfo"
        fi
    else
        bad "$name: nbdinfo"
    fi

    local bs qd u
    for bs in 4k 64k 1m; do
        for qd in 1 16 32; do
            u=$uri
            [ "$qd" = 16 ] && u=$turi
            if timeout 300 fio --name="v-$bs-$qd" --ioengine=nbd --uri="$u" --rw=randwrite --bs=$bs \
                --iodepth=$qd --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 \
                --output="$WORK/$name-fio-$bs-$qd.log" && grep -q "err= 0" "$WORK/$name-fio-$bs-$qd.log"; then
                ok "$name: fio nbd verify bs=$bs iodepth=$qd"
            else
                bad "$name: fio nbd verify bs=$bs iodepth=$qd"
                tail -5 "$WORK/$name-fio-$bs-$qd.log" || true
            fi
        done
    done

    if timeout 120 qemu-io -f raw "$uri" \
        -c "write -P 0x5a 0 1M" -c "write -z 1M 1M" -c "discard 2M 1M" -c "write -P 0xa5 3M 64k" \
        -c "flush" -c "read -P 0x5a 0 1M" -c "read -P 0 1M 1M" -c "read -P 0xa5 3M 64k" \
        -c "write -P 0x33 -f 4M 128k" -c "read -P 0x33 4M 128k" >"$WORK/$name-qemu-io.log" 2>&1 &&
        ! grep -qiE "verification failed|error" "$WORK/$name-qemu-io.log" &&
        [ "$(grep -c '^read ' "$WORK/$name-qemu-io.log")" = 4 ]; then
        ok "$name: qemu-io patterns, write -z, discard, FUA"
    else
        bad "$name: qemu-io"
        cat "$WORK/$name-qemu-io.log"
    fi

    head -c $((48 << 20)) /dev/urandom >"$WORK/in.bin"
    rm -f "$WORK/out.bin"
    if timeout 120 nbdcopy "$WORK/in.bin" "$uri" && timeout 120 nbdcopy "$turi" "$WORK/out.bin" &&
        cmp -n $((48 << 20)) "$WORK/in.bin" "$WORK/out.bin"; then
        ok "$name: nbdcopy round trip (file -> unix export -> tcp export -> file)"
    else
        bad "$name: nbdcopy round trip"
    fi
    rm -f "$WORK/out.bin"

    local sflag=()
    [ "$strict" = 1 ] && sflag=(--strict)
    if timeout 120 $PY "$HERE/libnbd_checks.py" "$uri" "${sflag[@]}"; then
        ok "$name: python3-libnbd structured replies, block status, FUA, zero, multi-conn, bad requests"
    else
        bad "$name: python3-libnbd checks"
    fi
}

# --- ours ----------------------------------------------------------------
"$IOMEM" sim create "$WORK/card0.img" --capacity 1GiB >/dev/null
PORT=$(free_port)
start_ours "$WORK/card0.img" "$WORK/ours.nbd" "127.0.0.1:$PORT" "$WORK/serve.log" --format-if-blank
nbd_suite iomem "nbd+unix:///disk0?socket=$WORK/ours.nbd" "nbd://127.0.0.1:$PORT/disk0-tcp" 1
if timeout 10 "$IOMEM" rpc -s "$WORK/rpc.sock" card_status '{"name":"card0"}' >"$WORK/status.json" &&
    grep -q '"Attached"' "$WORK/status.json"; then
    ok "iomem rpc card_status shows the card Attached with live counters"
else
    bad "iomem rpc card_status"
fi
kill -TERM "$SERVE_PID"
if timeout 60 tail --pid="$SERVE_PID" -f /dev/null && wait "$SERVE_PID"; then
    grep -q "detached (checkpoint written)" "$WORK/serve.log" && ok "SIGTERM: drained, detached, exit 0" || bad "SIGTERM: no detach message"
else
    bad "SIGTERM: iomem serve did not exit 0"
fi

# --- the same suite against qemu-nbd -------------------------------------
truncate -s 1G "$SHM/qemu.raw"
QPORT=$(free_port)
qemu-nbd -f raw -x disk0 -k "$WORK/qemu.nbd" -t -e 8 --cache=writeback "$SHM/qemu.raw" >"$WORK/qemu-nbd.log" 2>&1 &
QPID=$!
PIDS+=("$QPID")
qemu-nbd -f raw -x disk0-tcp -b 127.0.0.1 -p "$QPORT" -t -e 8 --cache=writeback --shared=8 "$SHM/qemu.raw" >"$WORK/qemu-nbd-tcp.log" 2>&1 &
QPID2=$!
PIDS+=("$QPID2")
wait_path "$WORK/qemu.nbd" || die "qemu-nbd did not come up"
sleep 0.5
nbd_suite qemu-nbd "nbd+unix:///disk0?socket=$WORK/qemu.nbd" "nbd://127.0.0.1:$QPORT/disk0-tcp" 0
kill "$QPID" "$QPID2" 2>/dev/null || true
wait "$QPID" "$QPID2" 2>/dev/null || true

# --- kill -9 during a verifying fio run -----------------------------------
log "kill -9 during a verifying fio run"
"$IOMEM" sim create "$WORK/crash.img" --capacity 1GiB >/dev/null
CPORT=$(free_port)
start_ours "$WORK/crash.img" "$WORK/crash.nbd" "127.0.0.1:$CPORT" "$WORK/crash1.log" --format-if-blank
CURI="nbd+unix:///disk0?socket=$WORK/crash.nbd"
# Sequential writes at iodepth 16: when the server dies, every block
# before the last 16 issued was acknowledged.
timeout 300 fio --name=crash --ioengine=nbd --uri="$CURI" --rw=write --bs=4k --iodepth=16 --size=900M \
    --verify=crc32c --do_verify=0 --output="$WORK/crash-fio1.log" &
FIO=$!
sleep 3
kill -9 "$SERVE_PID"
wait "$FIO" || true
ISSUED=$(grep -oE "issued rwts: total=0,[0-9]+" "$WORK/crash-fio1.log" | grep -oE "[0-9]+$" || echo 0)
ACKED=$((ISSUED - 16))
log "fio issued $ISSUED writes before the kill; verifying the first $ACKED"
start_ours "$WORK/crash.img" "$WORK/crash.nbd" "127.0.0.1:$CPORT" "$WORK/crash2.log"
if [ "$ACKED" -gt 1000 ] &&
    timeout 300 fio --name=crash --ioengine=nbd --uri="$CURI" --rw=write --bs=4k --iodepth=16 \
        --size=$((ACKED * 4096)) --verify=crc32c --verify_fatal=1 --verify_only \
        --output="$WORK/crash-fio2.log" && grep -q "err= 0" "$WORK/crash-fio2.log"; then
    ok "kill -9 + restart: fio verify-only over $ACKED acknowledged 4k writes, no mismatch"
else
    bad "kill -9 + restart: verify-only pass"
    tail -20 "$WORK/crash-fio2.log" 2>/dev/null || true
fi
# The verify pass must be able to fail: blocks never written do not verify.
if timeout 60 fio --name=crash --ioengine=nbd --uri="$CURI" --rw=write --bs=4k --iodepth=1 \
    --offset=$(((ISSUED + 64) * 4096)) --size=64k --verify=crc32c --verify_only \
    --output="$WORK/crash-fio3.log" >/dev/null 2>&1 && grep -q "err= 0" "$WORK/crash-fio3.log"; then
    bad "negative control: verify-only passed over never-written blocks"
else
    ok "negative control: verify-only fails over never-written blocks"
fi
kill -TERM "$SERVE_PID"
wait "$SERVE_PID" || bad "iomem serve exit after the crash test"

# --- throughput: NBD -------------------------------------------------------
log "throughput: fio nbd 4k QD32, ${BENCH_SECS}s each"
iops() { $PY -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(int(j["read"]["iops"] + j["write"]["iops"]))' "$1"; }
fill_nbd() { # NAME URI
    timeout 300 fio --name=fill --ioengine=nbd --uri="$2" --rw=write --bs=1m --iodepth=8 --size=256M \
        --output="$WORK/bench-$1-fill.log" >/dev/null
}
bench_nbd() { # NAME URI RW ROUND
    timeout 300 fio --name="$1-$3" --ioengine=nbd --uri="$2" --rw="$3" --bs=4k --iodepth=32 --size=256M \
        --time_based --runtime="$BENCH_SECS" --output-format=json --output="$WORK/bench-$1-$3-$4.json" >/dev/null
}
# Both backends keep their data in tmpfs: qemu-nbd's raw file and our
# emulated card's image (the NAND array is a sparse mmap of that file).
# Both servers run side by side (each idles while the other is measured);
# two interleaved rounds, the best of each kept.
"$IOMEM" sim create "$SHM/bench.img" --capacity 1GiB >/dev/null
BPORT=$(free_port)
start_ours "$SHM/bench.img" "$WORK/bench.nbd" "127.0.0.1:$BPORT" "$WORK/bench-serve.log" --format-if-blank
truncate -s 1G "$SHM/bench.raw"
qemu-nbd -f raw -x disk0 -k "$WORK/qbench.nbd" -t --cache=writeback "$SHM/bench.raw" >/dev/null 2>&1 &
QPID=$!
PIDS+=("$QPID")
wait_path "$WORK/qbench.nbd"
sleep 0.3
OURS_URI="nbd+unix:///disk0?socket=$WORK/bench.nbd"
QEMU_URI="nbd+unix:///disk0?socket=$WORK/qbench.nbd"
fill_nbd iomem "$OURS_URI"
fill_nbd qemu-nbd "$QEMU_URI"
for round in 1 2; do
    for rw in randread randwrite; do
        bench_nbd iomem "$OURS_URI" $rw $round
        bench_nbd qemu-nbd "$QEMU_URI" $rw $round
    done
done
kill -TERM "$SERVE_PID"
wait "$SERVE_PID" || true
kill "$QPID" 2>/dev/null || true
best() { # NAME RW
    local a b
    a=$(iops "$WORK/bench-$1-$2-1.json")
    b=$(iops "$WORK/bench-$1-$2-2.json")
    echo $((a > b ? a : b))
}
for rw in randread randwrite; do
    O=$(best iomem $rw)
    Q=$(best qemu-nbd $rw)
    R=$($PY -c "print(f'{$O/$Q:.2f}')")
    echo "serve-ci: throughput: NBD 4k $rw QD32: iomem $O IOPS, qemu-nbd (tmpfs) $Q IOPS, ratio $R"
    [ "$O" -gt 0 ] && ok "NBD $rw throughput measured (ratio $R)" || bad "NBD $rw throughput"
done

# --- throughput: vhost-user-blk -------------------------------------------
log "throughput: vhost-user-blk vs qemu-storage-daemon"
if IOMEM_BENCH_SECS=$BENCH_SECS timeout 600 cargo bench -p iomem --bench vhost_vs_qsd 2>&1 |
    tee "$WORK/vhost-bench.log" | grep -E "IOPS|ratio"; then
    grep -q "IOPS" "$WORK/vhost-bench.log" && ok "vhost-user-blk throughput measured" || bad "vhost-user-blk benchmark"
else
    bad "vhost-user-blk benchmark"
fi

# --- QEMU guest smoke test -------------------------------------------------
if [ "$GUEST" = 1 ]; then
    if timeout 900 bash "$HERE/guest.sh" "$IOMEM"; then
        ok "QEMU guest (vhost-user-blk-pci): O_DIRECT random data written and read back, md5 match"
    else
        bad "QEMU guest smoke test"
    fi
fi

echo "serve-ci: $PASS passed, $FAIL failed"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
