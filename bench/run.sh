#!/usr/bin/env bash
# Load benchmark (BENCH.md, "Load"): the crate's server, the bare-axum floor
# and fastapi-tasks under wrk, interleaved, medians of the rounds.
#
#   bench/run.sh                 # every endpoint, 3 rounds, wrk -t1 -c64 -d5s
#   ROUNDS=5 ENDPOINTS="noop phases" bench/run.sh
#
# For each endpoint, each round runs crate, bare, fastapi in turn (A B C A B C
# ...). Each run starts a fresh server, warms it up (wrk -d1s), then measures
# one bounded wrk run and reads, around it: requests/s and p50/p99 latency
# (wrk --latency), the server's CPU time per request (utime+stime from
# /proc/PID/stat before and after), the machine's other load (/proc/stat,
# minus the server's and wrk's own CPU), the server's peak RSS (VmHWM), and
# completed tasks against expected ones (/stats before the warm-up and once
# the count has settled; expected = requests x tasks per request). The
# server is then stopped with SIGTERM; the crate's shutdown report is
# checked too. Raw files go to bench/results/load-<time>/; the summary
# (bench/summarize.py) is printed and saved there as summary.md.
#
# Environment: ROUNDS (3), DURATION (5s), WARMUP (1s), CONNECTIONS (64),
# THREADS (1), ENDPOINTS ("noop immediate phases blocking"), SERVERS
# ("crate bare fastapi"; add "layered" for the floor under any layer, see
# lib.sh), IDLE_MIN_PCT (85) and IDLE_WAIT_S (60) for the
# wait for a quiet machine before each run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
ENDPOINTS="${ENDPOINTS:-noop immediate phases blocking}"
SERVERS="${SERVERS:-crate bare fastapi}"

setup_all
RESULTS="$BENCH_DIR/results/load-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
{
    echo "command: bench/run.sh"
    echo "settings: ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS THREADS=$THREADS ENDPOINTS=\"$ENDPOINTS\" SERVERS=\"$SERVERS\""
    echo "wrk: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency"
    describe_machine
} >"$RESULTS/machine.txt"
cat "$RESULTS/machine.txt" >&2
log "results in $RESULTS"

TIMEFORMAT='%3U %3S'

# run_one SERVER ENDPOINT ROUND
run_one() {
    local server="$1" endpoint="$2" round="$3"
    local dir="$RESULTS/$endpoint-$server-$round"
    mkdir -p "$dir"
    local idle_before
    idle_before=$(wait_for_quiet)
    start_server "$server" "$dir/server.log"
    local url="$SERVER_URL/$endpoint"
    local completed_initial
    completed_initial=$(server_completed)
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" --latency "$url" >"$dir/warmup.txt" 2>&1

    local cpu0 cpu1 mach0 mach1
    mach0=$(machine_ticks)
    cpu0=$(proc_cpu_ticks "$SERVER_PID")
    { time wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$dir/wrk.txt" 2>&1; } 2>"$dir/wrk_time.txt"
    cpu1=$(proc_cpu_ticks "$SERVER_PID")
    mach1=$(machine_ticks)

    local completed_final hwm stats
    completed_final=$(settle_completed)
    hwm=$(proc_hwm_kib "$SERVER_PID")
    stats=$(curl -sf "$SERVER_URL/stats")
    local status=0
    stop_server || status=$?
    {
        echo "server=$server"
        echo "endpoint=$endpoint"
        echo "round=$round"
        echo "idle_before_pct=$idle_before"
        echo "cpu_ticks_before=$cpu0"
        echo "cpu_ticks_after=$cpu1"
        echo "machine_before=$mach0"
        echo "machine_after=$mach1"
        echo "wrk_cpu=$(cat "$dir/wrk_time.txt")"
        echo "hwm_kib=$hwm"
        echo "completed_initial=$completed_initial"
        echo "completed_final=$completed_final"
        echo "stats=$stats"
        echo "exit_status=$status"
        echo "shutdown=$(grep -m1 '^SHUTDOWN ' "$dir/server.log" | sed 's/^SHUTDOWN //' || true)"
    } >"$dir/run.env"
    log "$endpoint $server round $round: $(grep -m1 'Requests/sec' "$dir/wrk.txt" | tr -s ' ') (idle before: ${idle_before}%)"
}

for endpoint in $ENDPOINTS; do
    for round in $(seq 1 "$ROUNDS"); do
        for server in $SERVERS; do
            run_one "$server" "$endpoint" "$round"
        done
    done
done

python3 "$BENCH_DIR/summarize.py" load "$RESULTS" | tee "$RESULTS/summary.md"
