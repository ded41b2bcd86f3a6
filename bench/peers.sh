#!/usr/bin/env bash
# make bench-peers: run the shared peer harness with offload's adapters, in one run: one per
# backend, and SQLite and Redis again with the synchronous per-call enqueue (`enqueue_sync`).
# The harness flushes its Redis before every measurement, so it gets a private Redis on
# 127.0.0.1:${BENCH_REDIS_PORT:-6390} (started here if none answers), never the one tests use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
harness=${PEERS_HARNESS:-$top/../shared/bench/peers}
port=${BENCH_REDIS_PORT:-6390}
tmp=${TMPDIR:-/tmp}
[ -f "$harness/run.py" ] || { echo "no peer harness at $harness (set PEERS_HARNESS)"; exit 2; }
if ! redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$tmp" --logfile "$tmp/offload-bench-redis.log"
  sleep 0.5
fi
export BENCH_REDIS_URL="redis://127.0.0.1:$port/0"
bash "$harness/setup_env.sh" >/dev/null
export PEERS_PY_ARQ="$tmp/peers-venv-arq/bin/python" PEERS_PY_TASKIQ="$tmp/peers-venv-taskiq/bin/python"
out=${BENCH_OUT:-$top/bench/out/peers}
mkdir -p "$out"
py="$top/.venv/bin/python"
"$tmp/peers-venv/bin/python" "$harness/run.py" --out "$out" \
  --adapter "offload_sqlite=$here/peers/offload_sqlite.py@$py" \
  --adapter "offload_pg=$here/peers/offload_pg.py@$py" \
  --adapter "offload_redis=$here/peers/offload_redis.py@$py" \
  --adapter "offload_sqlite_sync=$here/peers/offload_sqlite_sync.py@$py" \
  --adapter "offload_redis_sync=$here/peers/offload_redis_sync.py@$py" \
  ${BENCH_ONLY:+--only "$BENCH_ONLY"} ${BENCH_REPS:+--reps "$BENCH_REPS"} ${BENCH_ARGS:-}
"$py" "$here/peers_report.py" "$out"
