#!/usr/bin/env bash
# Back-pressure under overload: max_in_flight(N) with OverflowPolicy::Reject,
# the layer with and without shed_when_saturated(), side by side in one run.
#
#   bench/backpressure.sh
#   ROUNDS=5 RATES="0" bench/backpressure.sh
#
# examples/bench_backpressure.rs serves GET /work (one async task of TASK_MS
# ms per request) and drives it with its own load generator (one thread, as
# `wrk -t1`; wrk cannot split latency by status, this needs the p50/p99 of
# the accepted requests apart from the 503s). Each load is run with the
# option off and on, in alternating order (off on, then on off), ROUNDS
# times; a fresh server per run, a 1 s warm-up, then SECONDS_PER_RUN s
# measured. Per run: requests/s, the 200s' and the 503s' p50/p99, the 503
# count, and from the server's /stats (read once its tasks have settled) the
# tasks scheduled, completed and rejected (lost: the client got a 200 for
# work that never ran), and the server's CPU µs per request. Medians of the
# rounds are printed and written to FIGURES with the command and settings.
#
# A load of RATE 0 is closed loop (each connection sends as soon as it has an
# answer); a RATE > 0 is paced at that many requests/s in all (open loop).
#
# Before measuring it waits (re-checking every 30 s, up to 20 min) until
# /tmp/bench-running is gone (another benchmark is measuring), then holds
# that marker itself until it exits.
#
# Environment: ROUNDS (3), SECONDS_PER_RUN (5), CONNECTIONS (64),
# MAX_IN_FLIGHT (32), TASK_MS (5), RATES ("0 10000"), PORT (3291),
# FIGURES (/tmp/backpressure-figures.md), RESULTS (a new /tmp directory),
# IDLE_MIN_PCT (85) and IDLE_WAIT_S (20): each run waits that long at most
# for a quiet machine; CARGO_TARGET_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
CONNECTIONS="${CONNECTIONS:-64}"
export MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-32}"
export TASK_MS="${TASK_MS:-5}"
RATES="${RATES:-0 10000}"
BP_PORT="${PORT:-3291}"
FIGURES="${FIGURES:-/tmp/backpressure-figures.md}"
RESULTS="${RESULTS:-$(mktemp -d /tmp/backpressure.XXXXXX)}"
export IDLE_WAIT_S="${IDLE_WAIT_S:-20}"
MARKER=/tmp/bench-running
BIN="$TARGET_DIR/release/examples/bench_backpressure"
URL="http://127.0.0.1:$BP_PORT"
COMMAND="bench/backpressure.sh  # ROUNDS=$ROUNDS SECONDS_PER_RUN=$SECONDS_PER_RUN CONNECTIONS=$CONNECTIONS MAX_IN_FLIGHT=$MAX_IN_FLIGHT TASK_MS=$TASK_MS RATES=\"$RATES\""

log "building examples/bench_backpressure.rs (release) in $TARGET_DIR"
(cd "$CRATE_DIR" && cargo build --quiet --release --example bench_backpressure)

waited=0
while [ -e "$MARKER" ]; do
    if [ "$waited" -ge 1200 ]; then
        log "$MARKER still there after 20 min (held by $(cat "$MARKER" 2>/dev/null)): not measuring"
        exit 1
    fi
    log "$MARKER exists (another benchmark is measuring): checking again in 30 s"
    sleep 30
    waited=$((waited + 30))
done
echo $$ >"$MARKER"
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
    fi
    # Only our own marker.
    if [ "$(cat "$MARKER" 2>/dev/null)" = "$$" ]; then rm -f "$MARKER"; fi
}
trap cleanup EXIT

log "results in $RESULTS"
RAW="$RESULTS/raw.jsonl"
: >"$RAW"

start() {
    local shed="$1" logfile="$2" tries=0
    PORT="$BP_PORT" SHED="$shed" "$BIN" serve >"$logfile" 2>&1 &
    SERVER_PID=$!
    until curl -sf "$URL/stats" >/dev/null 2>&1; do
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$logfile" >&2; exit 1; }
        tries=$((tries + 1))
        [ "$tries" -le 300 ] || { log "server did not answer in 30 s"; exit 1; }
        sleep 0.1
    done
}

stop() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

for round in $(seq 1 "$ROUNDS"); do
    for rate in $RATES; do
        if [ $((round % 2)) -eq 1 ]; then order="0 1"; else order="1 0"; fi
        for shed in $order; do
            idle=$(wait_for_quiet)
            start "$shed" "$RESULTS/server-$round-$rate-$shed.log"
            CONNECTIONS="$CONNECTIONS" LOAD_SECONDS=1 RATE="$rate" "$BIN" load "$URL/work" >/dev/null
            before=$(curl -sf "$URL/stats")
            load=$(CONNECTIONS="$CONNECTIONS" LOAD_SECONDS="$SECONDS_PER_RUN" RATE="$rate" "$BIN" load "$URL/work")
            after=$(curl -sf "$URL/stats")
            stop
            echo "{\"round\": $round, \"rate\": $rate, \"shed\": $shed, \"idle_pct\": $idle, \"load\": $load, \"before\": $before, \"after\": $after}" >>"$RAW"
            log "round $round rate $rate shed $shed: $load"
        done
    done
done

{
    echo "# Back-pressure: max_in_flight($MAX_IN_FLIGHT) + Reject, with and without shed_when_saturated()"
    echo
    echo "Command: \`$COMMAND\` (raw: $RAW)"
    echo
    echo '```'
    echo "source: $(git -C "$CRATE_DIR" describe --always --dirty 2>/dev/null || echo "${BENCH_SOURCE:-unknown (not a git checkout; set BENCH_SOURCE)}")"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel: $(uname -sr)"
    echo "rustc: $(rustc --version)"
    echo '```'
    echo
    python3 - "$RAW" "$CONNECTIONS" "$TASK_MS" "$MAX_IN_FLIGHT" <<'PY'
import json, statistics, sys

raw, connections, task_ms, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [json.loads(line) for line in open(raw)]

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(v, unit=""):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}"

def count(v):
    return "—" if v is None else f"{v:,.0f}"

def ms(v):
    return "—" if v is None else f"{v / 1000:.2f}"

print(f"Server: `GET /work` schedules one async task sleeping {task_ms} ms; max_in_flight({limit}),")
print(f"OverflowPolicy::Reject. Client: {connections} keep-alive connections, one thread, no retries.")
print("Medians of the rounds; latency in ms, of the 200s (accepted) and of the 503s (shed).")
print("Lost = tasks rejected after their request got a 200; % of the 200s. A run is odd if the")
print("client saw errors or other statuses or fell a period behind its pace, or the server's")
print("counts do not add up (scheduled = completed + rejected, one handler run per 200).")
print()
print("| load | shed_when_saturated | req/s | 200/s | 503s | 200 p50 / p99 ms | 503 p50 / p99 ms | tasks run | tasks lost | lost % | server CPU µs/req | rounds |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for rate in sorted({r["rate"] for r in rows}):
    for shed in (0, 1):
        runs = [r for r in rows if r["rate"] == rate and r["shed"] == shed]
        if not runs:
            continue
        load = "closed loop" if rate == 0 else f"paced {rate:,.0f} req/s"
        def d(r, key):
            return r["after"][key] - r["before"][key]
        rps = med([r["load"]["rps"] for r in runs])
        ok_rate = med([r["load"]["rps"] * r["load"]["ok"] / r["load"]["requests"] if r["load"]["requests"] else None for r in runs])
        shed_n = med([r["load"]["shed"] for r in runs])
        ok_p50 = med([r["load"]["ok_p50_us"] for r in runs])
        ok_p99 = med([r["load"]["ok_p99_us"] for r in runs])
        sh_p50 = med([r["load"]["shed_p50_us"] for r in runs])
        sh_p99 = med([r["load"]["shed_p99_us"] for r in runs])
        ran = med([d(r, "completed") for r in runs])
        lost = med([d(r, "rejected") for r in runs])
        lost_pct = med([100 * d(r, "rejected") / r["load"]["ok"] if r["load"]["ok"] else None for r in runs])
        cpu = med([d(r, "cpu_us") / r["load"]["requests"] if r["load"]["requests"] else None for r in runs])
        odd = [r for r in runs if r["load"]["errors"] or r["load"]["other"] or r["load"]["late"]
               or d(r, "scheduled") != d(r, "completed") + d(r, "rejected")
               or d(r, "handler_runs") != r["load"]["ok"]]
        note = f"{len(runs)}" + (f" ({len(odd)} odd: see raw)" if odd else "")
        print(f"| {load} | {'on' if shed else 'off'} | {fmt(rps)} | {fmt(ok_rate)} | {count(shed_n)} | "
              f"{ms(ok_p50)} / {ms(ok_p99)} | {ms(sh_p50)} / {ms(sh_p99)} | {count(ran)} | {count(lost)} | "
              f"{fmt(lost_pct, '%')} | {fmt(cpu)} | {note} |")
print()
print("Per run (round, load, option: req/s, 503s, tasks lost, machine idle % before the run):")
print()
for r in rows:
    lost = r["after"]["rejected"] - r["before"]["rejected"]
    print(f"- {r['round']}, {'closed' if r['rate'] == 0 else r['rate']}, {'on' if r['shed'] else 'off'}: "
          f"{r['load']['rps']:,.0f} req/s, {r['load']['shed']:,} 503s, {lost:,} lost, "
          f"{r['load']['errors']} errors, {r['load']['late']} late, idle {r['idle_pct']}%")
PY
} >"$FIGURES"
cat "$FIGURES"
log "figures written to $FIGURES"
