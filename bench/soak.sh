#!/usr/bin/env bash
# The soak: a million distinct users over twenty minutes against the release
# daemon, with MAX_USER_STATES far below a million and a short
# INBOX_RETENTION, sampling every 30 s what must stay flat: the daemon's
# resident memory and open file descriptors, the SQLite file, the inbox's
# rows, the live user actors; at the end, Redis keys without a TTL.
#
#   cargo build --release -p actorbot
#   REDIS_URL=redis://127.0.0.1:6379 bench/soak.sh      # REDIS_URL optional
#
# USERS, DURATION (seconds), MAX_USER_STATES and OUT (default target/soak)
# change the run. The load test's own report is OUT/report.txt (and .json);
# the samples are OUT/samples.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/actorbot}
USERS=${USERS:-1000000}
DURATION=${DURATION:-1200}
STATES=${MAX_USER_STATES:-20000}
OUT=${OUT:-target/soak}
mkdir -p "$OUT"

redis_env=()
if [ -n "${REDIS_URL:-}" ]; then
  redis_env=(--env "REDIS_URL=$REDIS_URL")
fi

# Each user arrives within the first half of the run and, thinking about
# as long as the run lasts, asks once or twice: a million distinct users.
"$BIN" loadtest --users "$USERS" --duration "$DURATION" --ramp $((DURATION / 2)) \
  --think "$DURATION" --mix start=30,ask=40,stats=30 \
  --ai-latency-ms 50 --ai-word-delay-ms 0 --drain 120 \
  --env "MAX_USER_STATES=$STATES" --env USER_STATE_TIMEOUT=60 \
  --env INBOX_RETENTION=300 --env CLEANUP_INTERVAL=60 \
  --env AI_SEMAPHORE_LIMIT=256 --env AI_QUEUE_SIZE=100000 \
  "${redis_env[@]}" \
  --output "$OUT/report.json" >"$OUT/report.txt" 2>&1 &
loadtest=$!

daemon=""
for _ in $(seq 600); do
  daemon=$(pgrep -P "$loadtest" -f "actorbot run" || true)
  [ -n "$daemon" ] && break
  sleep 0.1
done
if [ -z "$daemon" ]; then
  echo "soak: the daemon did not start; see $OUT/report.txt" >&2
  exit 1
fi
addr=$(tr '\0' '\n' <"/proc/$daemon/environ" | sed -n 's/^HTTP_ADDR=//p')
data=$(tr '\0' '\n' <"/proc/$daemon/environ" | sed -n 's/^DATA_DIR=//p')
db="$data/actorbot.sqlite3"

# A failed sample (the daemon ending between two reads) is not the soak's end.
set +e +o pipefail
started=$(date +%s)
printf 't_s\trss_mb\tfds\tdb_mb\tinbox_rows\tuser_actors\n' >"$OUT/samples.tsv"
while kill -0 "$daemon" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$daemon/status" 2>/dev/null || echo -)
  fds=$(ls "/proc/$daemon/fd" 2>/dev/null | wc -l)
  size=$(stat -c %s "$db" "$db-wal" 2>/dev/null | awk '{s += $1} END {printf "%.1f", s / 1048576}')
  rows=$(sqlite3 "file:$db?mode=ro" "PRAGMA busy_timeout = 2000; SELECT count(*) FROM inbox;" 2>/dev/null | tail -1 || echo -)
  actors=$(curl -s "http://$addr/metrics" | awk '/^actorbot_user_actors / {print $2}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' $(($(date +%s) - started)) "$rss" "$fds" "$size" "${rows:--}" "${actors:--}" >>"$OUT/samples.tsv"
  if [ -n "${REDIS_URL:-}" ]; then
    # Keys without a TTL among a sample of up to 200.
    redis-cli -u "$REDIS_URL" --scan 2>/dev/null | head -200 |
      while read -r key; do redis-cli -u "$REDIS_URL" ttl "$key"; done |
      awk '{n++} $1 == -1 {none++} END {printf "%d keys sampled, %d without a TTL\n", n, none}' >"$OUT/redis.txt"
  fi
  sleep 30
done
wait "$loadtest" || true
cat "$OUT/samples.tsv"
cat "$OUT/report.txt"
[ -f "$OUT/redis.txt" ] && cat "$OUT/redis.txt"
