#!/usr/bin/env bash
# Compares the aiowal RESP example server with Debian's redis-server
# configured for the same durability (appendonly yes, appendfsync always),
# both on the current disk, both driven by redis-benchmark on loopback.
#   scripts/compare_redis.sh [REQUESTS]     (default 50000 per run)
# Needs redis-server and redis-tools (apt-get install redis-server redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
work=$(mktemp -d "$PWD/compare-redis.XXXXXX")
cleanup() { kill "${KV:-}" "${RS:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet --example kv_server
KVP=6391; RSP=6392
./target/release/examples/kv_server --port $KVP --dir "$work/kv" >/dev/null & KV=$!
redis-server --port $RSP --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always \
    --save '' --daemonize no --logfile "$work/redis.log" & RS=$!
for p in $KVP $RSP; do
    for _ in $(seq 100); do redis-cli -p $p ping >/dev/null 2>&1 && break; sleep 0.1; done
done

echo "redis-benchmark -t set -n $N, SET requests/s (p50 ms); disk: $(df -T . | awk 'NR==2 {print $2 " on " $1}')"
printf '%4s %6s | %20s | %20s | %6s\n' C V aiowal-kv "redis fsync=always" ratio
for V in 100 4096; do
    for C in 1 16 64; do
        run() { redis-benchmark -p "$1" -t set -n "$N" -c "$C" -d "$V" -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1; }
        a=$(run $KVP); r=$(run $RSP)
        ar=$(echo "$a" | awk '{print $2}'); rr=$(echo "$r" | awk '{print $2}')
        ap=$(echo "$a" | sed -n 's/.*p50=\([0-9.]*\).*/\1/p'); rp=$(echo "$r" | sed -n 's/.*p50=\([0-9.]*\).*/\1/p')
        printf '%4s %6s | %12s (%5s) | %12s (%5s) | %5.2fx\n' "$C" "$V" "$ar" "$ap" "$rr" "$rp" "$(echo "$ar / $rr" | bc -l)"
    done
done
