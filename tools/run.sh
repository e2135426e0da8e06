#!/usr/bin/env bash
# The main job: installs the dependencies, builds an optimised tree (build-release/), starts
# pdrouter with four mock engines (pdmock: a prefill and a decode worker in each of two racks,
# KV transfers held to the rack), drives it for a few seconds with requests from the shipped
# Mooncake trace (pdbench load), and prints the routing decision latency, the router's
# hand-off latency both ways, client latency, the KV hit rate, fallbacks and errors.
#
# Usage: tools/run.sh [--seconds S] [--concurrency N] [--speedup X] [--components]
#   --speedup X    pdmock runs its engine model X times faster than real time (default 1000:
#                  the trace's 40k-token prompts would otherwise take seconds each)
#   --components   afterwards, also the component benchmarks (pdbench route and mailbox)
# PDROUTER_SHARED points at the shared/ directory (default: ../shared beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
pd_install_deps

seconds=5 concurrency=16 speedup=1000 components=0
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) seconds=$2; shift 2 ;;
	--concurrency) concurrency=$2; shift 2 ;;
	--speedup) speedup=$2; shift 2 ;;
	--components) components=1; shift ;;
	*) echo "run.sh: unknown option $1 (see the top of tools/run.sh)" >&2; exit 2 ;;
	esac
done
shared=${PDROUTER_SHARED:-../shared}
trace=$shared/traces/mooncake_synthetic_trace.jsonl
[ -f "$trace" ] || { echo "run.sh: $trace not found (set PDROUTER_SHARED)" >&2; exit 2; }

[ -f build-release/build.ninja ] || pd_quiet meson setup build-release --buildtype=release
pd_quiet ninja -C build-release control/pdrouter tools/pdmock bench/pdbench

dir=$(mktemp -d /tmp/pdrouter-run.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

echo "== pdrouter with 2 prefill + 2 decode mock workers in racks r1, r2 (logs in $dir)"
build-release/control/pdrouter --listen "unix:$dir/client.sock" \
	--control-socket "$dir/control.sock" --admin-socket "$dir/admin.sock" \
	--kv-transfer-domain rack 2>"$dir/pdrouter.log" &
router=$!
pids+=("$router")
for i in 1 2; do
	[ -S "$dir/control.sock" ] || sleep 0.2
done
for rack in r1 r2; do
	for mode in prefill decode; do
		build-release/tools/pdmock --socket "$dir/control.sock" --model mooncake \
			--mode $mode --domain rack=$rack --speedup "$speedup" \
			2>"$dir/pdmock-$mode-$rack.log" &
		pids+=($!)
	done
done
sleep 1
grep -E 'event=(placement|started)' "$dir/pdrouter.log" | sed 's/^/  /'

echo "== pdbench load: Mooncake trace, closed loop, $concurrency in flight, ${seconds}s"
status=0
build-release/bench/pdbench load --router "unix:$dir/client.sock" --admin "$dir/admin.sock" \
	--trace "$trace" --model mooncake --concurrency "$concurrency" --duration "$seconds" \
	--max-input 65536 --stream || status=$?
kill -TERM "$router"
wait "$router" || status=1
echo "== pdrouter's counters at exit"
grep 'event=counters_final' "$dir/pdrouter.log" | tr ' ' '\n' | grep -E \
	'^(requests|completed|errors|disagg|fallbacks|decode_retries|timeouts|worker_failed)=' |
	sed 's/^/  /'

if [ "$components" = 1 ]; then
	echo "== pdbench route: routing decision latency, block size 64"
	build-release/bench/pdbench route
	echo "== pdbench mailbox: one-way hand-off and throughput over a lane ring, CPUs 0 and 1"
	build-release/bench/pdbench mailbox
fi
exit $status
