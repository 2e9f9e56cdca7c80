#!/usr/bin/env bash
# Runs loadgen (ringwire) and the baselines in bench/ (blocking std sockets, tokio with
# LengthDelimitedCodec, tokio-uring) side by side on loopback, several times each, and writes
# docs/benchmarks.md: medians, ratios to each baseline, the bars, the machine, the exact
# commands and the charts (docs/bench/*.svg).
#
# 64 B throughput also runs loadgen with each `--publisher` besides the default (thread): batch
# (`publish_batch` of 64 from a thread) and shard (a `Source` on the client's shard), as rows
# `ringwire-batch` and `ringwire-shard` of that table.
#
# TLS: 64 B and 1 KiB throughput with every connection inside TLS 1.3 (mutual TLS), ringwire
# (`loadgen run --tls`) beside the tokio-rustls baseline, against the plaintext rows of the
# same run; and mutual-TLS handshakes per second into one core (bench's `handshakes`).
#
# Wire integrity (ringwire only): 64 B and 1 KiB throughput with end-to-end CRC32C on and off,
# and 1 KiB of JSON log text with and without LZ4 (bytes on the wire per payload byte too).
#
# Also the durable outbox (ringwire only): the 64 B throughput run without an outbox, with one
# synced `none` and `always`, and the time to recover a 1 GiB outbox (bench's `recovery`).
#
# Usage: scripts/bench-report.sh            (RUNS=3 DURATION=5s WARMUP=1s by default)
#        RUNS=5 DURATION=10s scripts/bench-report.sh
#        ONLY=tp64 scripts/bench-report.sh  (one workload, for a quick look; still rewrites the doc)
#        ONLY=dur64 / ONLY=recovery         (the outbox rows only)
#        ONLY=tls                           (the TLS rows only)
#        ONLY=wire                          (the CRC and LZ4 rows only)
#
# Runs are interleaved (run 1 of every workload and stack, then run 2, ...) so that a slow
# patch of the machine does not land on one stack only. Every command is bounded by `timeout`.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ONLY=${ONLY:-}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW=target/bench-report/$STAMP
mkdir -p "$RAW" docs/bench

echo "building release binaries..." >&2
cargo build --release --quiet -p loadgen -p ringwire-bench --bins
LOADGEN=target/release/loadgen
BASELINE=target/release/baseline
RECOVERY=target/release/recovery
HANDSHAKES=target/release/handshakes
OUTBOX=target/bench-outbox

# name|flags — the workloads of the report.
WORKLOADS=(
  "tp64|--mode throughput --size 64"
  "tp1k|--mode throughput --size 1024"
  "lat64|--mode latency --size 64 --rate 10000"
  "lat64busy|--mode latency --size 64 --rate 10000 --busy-poll"
  "fanin|--mode fanin --size 64 --conns 1000"
  "pp64|--mode pingpong --size 64"
  "pp64busy|--mode pingpong --size 64 --busy-poll"
)
STACKS=(ringwire std tokio tokio-uring)
# loadgen --publisher values run beside the default (thread) in tp64 and tp1k, as stacks
# ringwire-<value>.
PUBLISHERS=(batch shard)
# name|flags — the TLS rows: ringwire with --tls, and the tokio-rustls baseline.
TLS=(
  "tls64|--mode throughput --size 64"
  "tls1k|--mode throughput --size 1024"
)
# name|variant|flags — the CRC and LZ4 rows, ringwire only.
WIRE=(
  "crc64|on|--mode throughput --size 64 --crc on"
  "crc64|off|--mode throughput --size 64 --crc off"
  "crc1k|on|--mode throughput --size 1024 --crc on"
  "crc1k|off|--mode throughput --size 1024 --crc off"
  "lz4|plain|--mode throughput --size 1024 --content text"
  "lz4|lz4|--mode throughput --size 1024 --content text --lz4"
)
# variant|flags — the durable outbox rows, all 64 B throughput through loadgen.
DURABLE=(
  "memory|--mode throughput --size 64"
  "outbox-none|--mode throughput --size 64 --outbox $OUTBOX --sync none"
  "outbox-always|--mode throughput --size 64 --outbox $OUTBOX --sync always"
)
# variant|flags — recovery of 1 GiB of records.
RECOVERIES=(
  "1k|--bytes 1GiB --size 1024 --dir target/bench-recovery"
  "64|--bytes 1GiB --size 64 --dir target/bench-recovery"
)

run_one() { # name variant run command... -> runs it bounded, keeps the JSON if it succeeded
  local name=$1 variant=$2 run=$3
  shift 3
  local json="$RAW/$name.$variant.$run.json"
  [[ $run == 1 ]] && echo "$name|$variant|$*" >> "$RAW/commands.txt"
  echo "run $run/$RUNS  $name  $variant" >&2
  set +e
  timeout 300 "$@" --json "$json" > "$RAW/$name.$variant.$run.log" 2>&1
  local status=$?
  set -e
  if [[ $status != 0 ]]; then
    echo "  failed (exit $status): $(tail -n 3 "$RAW/$name.$variant.$run.log")" >&2
    rm -f "$json"
  fi
}

command_for() { # stack flags -> the command line
  local stack=$1 flags=$2
  if [[ $stack == ringwire ]]; then
    echo "$LOADGEN run $flags --duration $DURATION --warmup $WARMUP"
  else
    echo "$BASELINE --stack $stack $flags --duration $DURATION --warmup $WARMUP"
  fi
}

: > "$RAW/commands.txt"
for run in $(seq 1 "$RUNS"); do
  for entry in "${WORKLOADS[@]}"; do
    name=${entry%%|*}
    flags=${entry#*|}
    [[ -n $ONLY && $name != "$ONLY" ]] && continue
    for stack in "${STACKS[@]}"; do
      cmd=$(command_for "$stack" "$flags")
      json="$RAW/$name.$stack.$run.json"
      [[ $run == 1 ]] && echo "$name|$stack|$cmd" >> "$RAW/commands.txt"
      echo "run $run/$RUNS  $name  $stack" >&2
      set +e
      # shellcheck disable=SC2086
      timeout 180 $cmd --json "$json" > "$RAW/$name.$stack.$run.log" 2>&1
      status=$?
      set -e
      if [[ $status == 2 ]]; then
        # The stack does not support this workload (e.g. tokio has no busy-poll mode).
        rm -f "$json"
        echo "unsupported" > "$RAW/$name.$stack.unsupported"
      elif [[ $status != 0 ]]; then
        echo "  failed (exit $status): $(tail -n 3 "$RAW/$name.$stack.$run.log")" >&2
        rm -f "$json"
      fi
    done
    if [[ $name == tp64 || $name == tp1k ]]; then
      for publisher in "${PUBLISHERS[@]}"; do
        # shellcheck disable=SC2086
        run_one "$name" "ringwire-$publisher" "$run" $LOADGEN run $flags --publisher "$publisher" \
          --duration "$DURATION" --warmup "$WARMUP"
      done
    fi
  done
  if [[ -z $ONLY || $ONLY == tls ]]; then
    for entry in "${TLS[@]}"; do
      name=${entry%%|*}
      # shellcheck disable=SC2086
      run_one "$name" ringwire "$run" $LOADGEN run ${entry#*|} --tls --duration "$DURATION" --warmup "$WARMUP"
      # shellcheck disable=SC2086
      run_one "$name" tokio-rustls "$run" $BASELINE --stack tokio-rustls ${entry#*|} \
        --duration "$DURATION" --warmup "$WARMUP"
    done
    for stack in ringwire tokio-rustls; do
      run_one handshakes "$stack" "$run" $HANDSHAKES --stack "$stack" --duration "$DURATION" --warmup "$WARMUP"
    done
  fi
  if [[ -z $ONLY || $ONLY == wire ]]; then
    for entry in "${WIRE[@]}"; do
      IFS='|' read -r name variant flags <<< "$entry"
      # shellcheck disable=SC2086
      run_one "$name" "$variant" "$run" $LOADGEN run $flags --duration "$DURATION" --warmup "$WARMUP"
    done
  fi
  if [[ -z $ONLY || $ONLY == dur64 ]]; then
    for entry in "${DURABLE[@]}"; do
      # shellcheck disable=SC2086
      run_one dur64 "${entry%%|*}" "$run" $LOADGEN run ${entry#*|} --duration "$DURATION" --warmup "$WARMUP"
    done
  fi
  if [[ -z $ONLY || $ONLY == recovery ]]; then
    for entry in "${RECOVERIES[@]}"; do
      # shellcheck disable=SC2086
      run_one recovery "${entry%%|*}" "$run" $RECOVERY ${entry#*|}
    done
  fi
done
rm -rf "$OUTBOX" target/bench-recovery

python3 scripts/bench_report.py "$RAW" "$LOADGEN" "$RUNS" "$DURATION" "$WARMUP"
echo "wrote docs/benchmarks.md (raw results in $RAW)" >&2
