#!/usr/bin/env bash
# Shutdown right after a burst (BENCH.md: "every task is completed or
# reported, none vanishes").
#
#   bench/shutdown_burst.sh            # 2 rounds of crate, bare, fastapi
#   ROUNDS=3 SERVERS=crate bench/shutdown_burst.sh
#
# Each run starts a fresh server, bursts `GET /burst` for 2 s (wrk -t1 -c64),
# then sends SIGTERM the moment wrk ends. /burst schedules three tasks per
# request: a 100 ms async task, a shielded 50 ms async task, and a 50 ms sync
# after-response task, each incrementing a counter when it ends; so thousands
# are in flight (and sync ones queued for a thread) at the signal.
#
# The crate's server drains, calls `background.shutdown(grace)` and prints
# its report and stats: the check is scheduled == completed + failed +
# panicked + timed_out + cancelled + rejected (nothing queued or running),
# the report covers every task in flight at the signal, and the counter
# equals `completed`. The bare server and fastapi-tasks print what /burst
# scheduled and what completed: the difference vanished without a report.
#
# Environment: ROUNDS (2), BURST (2s), CONNECTIONS (64), SERVERS
# ("crate bare fastapi"), GRACE_MS (5000, the crate's grace).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-2}"
BURST="${BURST:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
SERVERS="${SERVERS:-crate bare fastapi}"
export GRACE_MS="${GRACE_MS:-5000}"

setup_all
RESULTS="$BENCH_DIR/results/burst-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
{
    echo "command: bench/shutdown_burst.sh"
    echo "settings: ROUNDS=$ROUNDS BURST=$BURST CONNECTIONS=$CONNECTIONS SERVERS=\"$SERVERS\" GRACE_MS=$GRACE_MS"
    describe_machine
} >"$RESULTS/machine.txt"
log "results in $RESULTS"

for round in $(seq 1 "$ROUNDS"); do
    for server in $SERVERS; do
        dir="$RESULTS/burst-$server-$round"
        mkdir -p "$dir"
        wait_for_quiet >/dev/null
        start_server "$server" "$dir/server.log"
        wrk -t1 -c"$CONNECTIONS" -d"$BURST" "$SERVER_URL/burst" >"$dir/wrk.txt" 2>&1
        started=$(date +%s.%N)
        status=0
        stop_server 120 || status=$?
        ended=$(date +%s.%N)
        {
            echo "server=$server"
            echo "round=$round"
            echo "exit_status=$status"
            echo "exit_seconds=$(echo "$started $ended" | awk '{ printf "%.3f", $2 - $1 }')"
            echo "shutdown=$(grep -m1 '^SHUTDOWN ' "$dir/server.log" | sed 's/^SHUTDOWN //' || true)"
        } >"$dir/run.env"
        log "burst $server round $round: $(grep -m1 'requests in' "$dir/wrk.txt" | tr -s ' '), exit after $(grep exit_seconds "$dir/run.env" | cut -d= -f2) s"
    done
done

python3 "$BENCH_DIR/summarize.py" burst "$RESULTS" | tee "$RESULTS/summary.md"
