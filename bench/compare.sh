#!/usr/bin/env bash
# actorbot beside what its users would pick instead, in one run on this
# machine: teloxide and aiogram echo bots (bench/peers/) against the same
# fake Telegram as actorbot (the load-test tool's, in the same process as
# the measurement, on the same cores), reportlab for the 5-page report and
# Pillow for the photo step, on the same inputs as actorbot's documents
# benchmark. Each figure is measured for every contender in turn (A B C),
# and the whole sequence repeated ROUNDS times (A B C A B C), so that the
# machine's drift hits them alike; bench/compare_table.py then prints the
# table with actorbot ÷ peer for each round. Each round also runs actorbot's
# burst and open loop against the fake behind TLS, offering HTTP/1.1 alone
# and then HTTP/2 as well (TELEGRAM_HTTP_VERSION), for the second table.
#
#   bench/compare.sh                        # builds, installs, runs, prints
#   NICE="nice -n 19" ROUNDS=2 bench/compare.sh
#
# Environment: CARGO_TARGET_DIR (default target/), ROUNDS (2), NICE (empty:
# the runs' priority, e.g. "nice -n 19" on a shared machine), BUILD (1: build
# and install first; 0: use what is there), OUT (the logs' directory, under
# $CARGO_TARGET_DIR/peers/ by default), NOTE (a line printed with the table,
# e.g. what else ran on the machine).
#
# The Python peers go into a virtual environment under
# $CARGO_TARGET_DIR/peers/venv (python3 with venv and pip, and the network
# to PyPI, the first time); the Rust peers build into
# $CARGO_TARGET_DIR/peers/cargo. Nothing here runs in `cargo test`.

set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PEERS=$TARGET/peers
ROUNDS=${ROUNDS:-2}
NICE=${NICE:-}
BUILD=${BUILD:-1}
OUT=${OUT:-$PEERS/compare-$(date -u +%Y%m%dT%H%M%SZ)}
VENV=$PEERS/venv
PY=$VENV/bin/python

# The inputs: the same for every contender.
BURST_UPDATES=20000
BURST_USERS=10000
RATE=5000
SECONDS_AT_RATE=10
STARTS=5
PHOTO=$PEERS/photo-12mp.jpg
FONT=$ROOT/src/pdf/fonts/DejaVuSans.ttf

LOADTEST=$TARGET/release/loadtest
ACTORBOT=$TARGET/release/actorbot
TELOXIDE=$PEERS/cargo/release/teloxide-echo
AIOGRAM="$PY $ROOT/bench/peers/python/echo_aiogram.py"

if [ "$BUILD" = 1 ]; then
    $NICE cargo build --release --workspace
    $NICE cargo bench --bench documents --no-run
    for peer in teloxide inputs; do
        CARGO_TARGET_DIR=$PEERS/cargo $NICE cargo build --release --locked \
            --manifest-path "bench/peers/$peer/Cargo.toml"
    done
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --disable-pip-version-check \
        -r bench/peers/python/requirements.txt
fi
mkdir -p "$OUT"
if [ ! -f "$PHOTO" ]; then
    "$PEERS/cargo/release/peer-inputs" "$PHOTO"
fi

# run NAME COMMAND...: the command's output into $OUT/NAME.log, and shown.
run() {
    local name=$1
    shift
    echo "== $name" >&2
    $NICE "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.log"
}

# peer WHO: the load-test tool's arguments that make WHO the bot under test.
peer() {
    case $1 in
    actorbot) peer=() ;;
    teloxide) peer=(--peer "$TELOXIDE") ;;
    aiogram) peer=(--peer "$AIOGRAM") ;;
    esac
}

{
    echo "started $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, rounds $ROUNDS, nice: ${NICE:-none}"
    echo "actorbot $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src actors emulator tests || echo ' (modified)')"
    echo "teloxide $(grep -A1 '^name = "teloxide"$' bench/peers/teloxide/Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')," \
        "$("$PY" -m pip freeze --disable-pip-version-check | grep -iE '^(aiogram|reportlab|rl.accel|pillow)==' | tr '\n' ' ')"
    "$PY" --version
    echo "${NOTE:-}"
} >"$OUT/about.txt"
cat "$OUT/about.txt"

for round in $(seq 1 "$ROUNDS"); do
    for who in actorbot teloxide aiogram; do
        peer "$who"
        run "burst-$who-$round" "$LOADTEST" --daemon "$ACTORBOT" "${peer[@]}" --run throughput \
            --updates "$BURST_UPDATES" --users "$BURST_USERS"
    done
    for who in actorbot teloxide aiogram; do
        peer "$who"
        run "latency-$who-$round" "$LOADTEST" --daemon "$ACTORBOT" "${peer[@]}" --run latency \
            --rate "$RATE" --seconds "$SECONDS_AT_RATE"
    done
    # actorbot alone, the fake behind TLS offering HTTP/2 and HTTP/1.1:
    # the daemon offering HTTP/1.1 alone, then HTTP/2 as well.
    for kind in burst latency; do
        for version in 1.1 2; do
            case $kind in
            burst) what=(--run throughput --updates "$BURST_UPDATES" --users "$BURST_USERS") ;;
            latency) what=(--run latency --rate "$RATE" --seconds "$SECONDS_AT_RATE") ;;
            esac
            run "tls-$kind-http$version-$round" "$LOADTEST" --daemon "$ACTORBOT" "${what[@]}" \
                --tls --env "TELEGRAM_HTTP_VERSION=$version"
        done
    done
    for who in actorbot teloxide aiogram; do
        peer "$who"
        run "startup-$who-$round" "$LOADTEST" --daemon "$ACTORBOT" "${peer[@]}" --run startup --starts "$STARTS"
    done
    run "documents-actorbot-$round" cargo bench --bench documents
    run "report-ttf-$round" "$PY" bench/peers/python/report.py --font ttf "$FONT"
    run "report-base14-$round" "$PY" bench/peers/python/report.py --font base14
    run "photo-pillow-$round" "$PY" bench/peers/python/photo.py "$PHOTO" \
        --out "$OUT/pillow-a4.jpg"
done

"$PY" bench/compare_table.py "$OUT" | tee "$OUT/table.md"
