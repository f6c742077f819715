#!/usr/bin/env bash
# Runs every ci/spdk test against the SPDK v26.05 at $SPDK_DIR (built by
# hand, see bdev/README.md): builds libiomemory_bdev.so with the shim,
# reserves hugepages, runs the tests in order, releases the hugepages and
# prints the measured results. Not part of .ci/run (CI has no SPDK).
#
#   sudo SPDK_DIR=/work/spdk ci/spdk/run-all.sh [TEST...]
#   (TEST: 01-load 02-nvmf-tcp 03-bdevperf 04-vhost-blk 05-save-config
#    06-delete-inflight 07-io-types 08-hot-remove; default all; IOMEM_SKIP_BUILD=1 skips cargo)
source "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

tests=("$@")
if ((${#tests[@]} == 0)); then
	tests=(01-load 02-nvmf-tcp 03-bdevperf 04-vhost-blk 05-save-config 06-delete-inflight 07-io-types 08-hot-remove)
fi
[[ -n ${IOMEM_SKIP_BUILD:-} ]] || build_module
trap hugepages_down EXIT
hugepages_up 1024
: > "$RESULTS"
{
	echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# SPDK $(git -C "$SPDK_DIR" describe --tags 2> /dev/null || echo '?'), module $(sha256sum < "$MODULE" | cut -c1-12)"
} >> "$RESULTS"
failed=()
for t in "${tests[@]}"; do
	log "$t"
	if ! bash "$here/$t.sh"; then
		failed+=("$t")
		result "$t: FAILED"
	fi
done
echo
cat "$RESULTS"
if ((${#failed[@]})); then
	echo "failed: ${failed[*]}"
	exit 1
fi
