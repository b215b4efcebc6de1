#!/usr/bin/env bash
# Durable throughput (BENCH.md, "Durable tasks"): this crate's durable tasks
# against River's Rust client (riverqueue, their engine) used directly with
# the same settings, in one run, on SQLite and Postgres.
#
#   bench/durable.sh                    # 3 rounds, both backends
#   ROUNDS=5 BACKENDS=sqlite bench/durable.sh
#   SIDES="crate river river-wrapped" bench/durable.sh   # adds the diagnostic
#
# About 3 min of measuring, plus the build and the waits for a quiet machine
# (at most START_QUIET_S + QUIET_BUDGET_S, 4.5 min).
#
# Each measurement is one process of examples/bench_durable.rs on a fresh
# store: a new SQLite file, or a new Postgres database (CREATE DATABASE on
# the server of $AXUM_BACKGROUND_PG_URL; .ci/postgres.sh starts one when it
# is not set). For each backend:
#
#   enqueue  N single inserts from 32 concurrent callers (no workers):
#            crate `schedule` vs river `insert`
#   batch    BATCH_N inserts in chunks of 1,000 (no workers):
#            crate `schedule_many` vs river `insert_many`
#   e2e      16 workers running, N single inserts from 32 callers, timed from
#            the first insert to the last job's completion (counted in the job)
#   defaults e2e with DurableStore::sqlite(path) / ::postgres(url) untouched
#            (its baseline: river e2e, whose settings are those defaults)
#
# Every round runs every configuration once, round-robin, the sides of each
# row back to back in an order rotated each round (A B, then B A). Before
# each run the harness waits (up to IDLE_WAIT_S) for the machine to be
# IDLE_MIN_PCT idle. Raw lines go to bench/results/durable-<time>/raw.jsonl,
# the table of medians to summary.md there, and to stdout.
#
# While it measures, /tmp/bench-running exists (other sessions hold off).
#
# Environment:
#   ROUNDS (3), N (5000), BATCH_N (20000)
#   BACKENDS ("sqlite pg"), MODES ("enqueue batch e2e defaults")
#   SIDES ("crate river"; add river-wrapped for River with the crate's stored
#     job format, a diagnostic)
#   IDLE_MIN_PCT (85); IDLE_WAIT_S (20) per run and QUIET_BUDGET_S (150) in all
#     for the waits for a quiet machine; START_QUIET_S (120) for a first one,
#     once /tmp/bench-running is up
#   BENCH_MARKER (/tmp/bench-running; empty for none), BENCH_DURABLE_DIR (the
#     SQLite files' directory), CARGO_TARGET_DIR (/work/target-bench),
#     AXUM_BACKGROUND_PG_URL
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CRATE_DIR="$(dirname "$BENCH_DIR")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
ROUNDS="${ROUNDS:-3}"
N="${N:-5000}"
# A batch of 5,000 takes 0.3 s on SQLite, where one slow fsync moves the
# figure by 20%: batches are measured on more jobs.
BATCH_N="${BATCH_N:-20000}"
BACKENDS="${BACKENDS:-sqlite pg}"
MODES="${MODES:-enqueue batch e2e defaults}"
SIDES="${SIDES:-crate river}" # add river-wrapped for the diagnostic (see the example)
IDLE_MIN_PCT="${IDLE_MIN_PCT:-85}"
IDLE_WAIT_S="${IDLE_WAIT_S:-20}"
QUIET_BUDGET_S="${QUIET_BUDGET_S:-150}" # all the waits for quiet together, to bound the run
START_QUIET_S="${START_QUIET_S:-120}"   # a first wait, once the marker is up
MARKER="${BENCH_MARKER-/tmp/bench-running}" # empty: no marker (trial runs)
BIN="$CARGO_TARGET_DIR/release/examples/bench_durable"

log() { printf '[durable %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The share of the machine left idle over `$1` seconds (from /proc/stat).
machine_idle_pct() {
    local a b
    a=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    echo "$a $b" | awk '{ d = $4 - $2; if (d <= 0) d = 1; printf "%d\n", 100 * ($3 - $1) / d }'
}

waited=0
wait_for_quiet() {
    local start=$SECONDS deadline=$((SECONDS + IDLE_WAIT_S)) idle
    while :; do
        idle=$(machine_idle_pct 1)
        if [ "$idle" -ge "$IDLE_MIN_PCT" ] || [ "$SECONDS" -ge "$deadline" ] ||
            [ $((waited + SECONDS - start)) -ge "$QUIET_BUDGET_S" ]; then
            waited=$((waited + SECONDS - start))
            QUIET_IDLE=$idle # not echoed: a subshell would lose `waited`
            return 0
        fi
        sleep 1
    done
}

log "building examples/bench_durable.rs (release, --features durable) in $CARGO_TARGET_DIR"
(cd "$CRATE_DIR" && cargo build --quiet --release --features durable --example bench_durable)

case " $BACKENDS " in
*" pg "*)
    if [ -z "${AXUM_BACKGROUND_PG_URL:-}" ]; then
        AXUM_BACKGROUND_PG_URL="$("$CRATE_DIR/.ci/postgres.sh" | tail -n1)"
    fi
    export AXUM_BACKGROUND_PG_URL
    ;;
esac

RESULTS="$BENCH_DIR/results/durable-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
{
    echo "command: ROUNDS=$ROUNDS N=$N BATCH_N=$BATCH_N BACKENDS=\"$BACKENDS\" MODES=\"$MODES\" SIDES=\"$SIDES\" bench/durable.sh"
    echo "source: $(git -C "$CRATE_DIR" describe --always --dirty 2>/dev/null || echo unknown)," \
        "src/ files changed from it: $(git -C "$CRATE_DIR" status --short -- src | wc -l)," \
        "src/ hash $(cd "$CRATE_DIR" && find src -type f | sort | xargs sha256sum | sha256sum | cut -c1-12)"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel: $(uname -sr)"
    echo "rustc: $(rustc --version)"
    echo "riverqueue: $(grep -A1 '^name = "riverqueue"$' "$CRATE_DIR/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
    echo "sqlite dir: ${BENCH_DURABLE_DIR:-$(dirname "$(mktemp -u)")} ($(df -T "${BENCH_DURABLE_DIR:-/tmp}" | awk 'NR == 2 { print $2 }'))"
    if [ -n "${AXUM_BACKGROUND_PG_URL:-}" ]; then
        echo "postgres: $(psql "$AXUM_BACKGROUND_PG_URL" -XAtc 'SHOW server_version' 2>/dev/null ||
            ls -d /usr/lib/postgresql/*/ 2>/dev/null | tail -n1)"
    fi
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS/machine.txt"
cat "$RESULTS/machine.txt" >&2

# Others avoid loading the machine while this file exists.
if [ -n "$MARKER" ]; then
    if [ -e "$MARKER" ]; then
        log "$MARKER exists (another benchmark?): waiting up to 5 min for it to go"
        for _ in $(seq 300); do [ -e "$MARKER" ] || break; sleep 1; done
    fi
    if [ -e "$MARKER" ]; then
        # Another benchmark still holds it: leave it to its owner.
        log "$MARKER still there: measuring anyway (expect a loaded machine)"
    else
        echo $$ >"$MARKER"
        trap 'rm -f "$MARKER"' EXIT
    fi
fi

# run_one SIDE BACKEND MODE ROUND
run_one() {
    local side="$1" backend="$2" mode="$3" round="$4" idle line
    wait_for_quiet
    idle=$QUIET_IDLE
    local n=$N
    if [ "$mode" = batch ]; then n=$BATCH_N; fi
    line=$("$BIN" "$side" "$backend" "$mode" "$n" 2>>"$RESULTS/stderr.log" | sed -n 's/^RESULT //p' || true)
    if [ -z "$line" ]; then
        log "FAILED: $side $backend $mode (round $round): see $RESULTS/stderr.log"
        line="{\"side\": \"$side\", \"backend\": \"$backend\", \"mode\": \"$mode\", \"failed\": true}"
    fi
    line=$(echo "$line" | python3 -c '
import json, sys
r = json.load(sys.stdin)
r["round"] = int(sys.argv[1]); r["idle_before_pct"] = int(sys.argv[2])
print(json.dumps(r))' "$round" "$idle")
    echo "$line" >>"$RESULTS/raw.jsonl"
    log "round $round  $(echo "$line" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if r.get("failed"): print(r["side"], r["backend"], r["mode"], "FAILED"); sys.exit()
print("%14s %6s %7s %9.0f/s  own CPU %.0f us/job  others %.0f%%" % (r["side"], r["backend"], r["mode"], r["rate"], r["cpu_us_per_job"], r["others_pct"]))')"
}

started=$SECONDS
# The marker is up: give others' running work up to START_QUIET_S to end.
while [ $((SECONDS - started)) -lt "$START_QUIET_S" ] &&
    [ "$(machine_idle_pct 3)" -lt "$IDLE_MIN_PCT" ]; do :; done
log "machine $(machine_idle_pct 1)% idle after $((SECONDS - started)) s; measuring"
for round in $(seq "$ROUNDS"); do
    for backend in $BACKENDS; do
        for mode in $MODES; do
            if [ "$mode" = defaults ]; then
                run_one crate-defaults "$backend" e2e "$round"
                continue
            fi
            # Rotated each round: A B, B A (or A B C, B C A, C A B).
            read -r -a sides <<<"$SIDES"
            shift_by=$(((round - 1) % ${#sides[@]}))
            for side in "${sides[@]:shift_by}" "${sides[@]:0:shift_by}"; do
                run_one "$side" "$backend" "$mode" "$round"
            done
        done
    done
done
echo "elapsed: $((SECONDS - started)) s (of which waiting for a quiet machine: $waited s between runs); load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"

python3 - "$RESULTS" >"$RESULTS/summary.md" <<'PY'
import json, statistics, sys
from pathlib import Path

results = Path(sys.argv[1])
rows = [json.loads(l) for l in (results / "raw.jsonl").read_text().splitlines() if l.strip()]
machine = (results / "machine.txt").read_text()

def runs(side, backend, mode):
    return [r for r in rows if r["side"] == side and r["backend"] == backend and r["mode"] == mode]

def med(rs, key):
    values = [r[key] for r in rs if not r.get("failed") and r.get(key) is not None]
    return statistics.median(values) if values else None

def fmt(x, digits=0):
    return "—" if x is None else f"{x:,.{digits}f}"

print("```")
print(machine.strip())
print("```")
print()
print("Medians of the rounds (each round runs every row, crate and river back to back);")
print("per-round: the median of each round's crate / river (and each round's), which a")
print("tenant loading some rounds moves less. The goals are judged on the ratio of the medians.")
print("Rate: jobs/s (enqueue rows: inserts/s). CPU: this process's CPU µs per job;")
print("pg: Postgres's CPU µs per job. Others: the rest of the machine's load during the")
print("timed window, median (max) of the rounds, % of both cores.")
print()
print("| backend | row | crate | river | crate / river | per-round crate / river | goal | crate CPU µs/job | river CPU µs/job | pg CPU µs/job crate / river | others % crate / river | failed |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
labels = {
    "enqueue": "enqueue, one by one, 32 callers (`schedule` / `insert`)",
    "batch": "enqueue, batch of 1,000 (`schedule_many` / `insert_many`)",
    "e2e": "end-to-end, 16 workers, same settings",
    "defaults": "end-to-end, crate defaults (`DurableStore::sqlite`/`postgres`)",
}
verdicts = []
backends = sorted({r["backend"] for r in rows}, key=lambda b: ["sqlite", "pg"].index(b) if b in ("sqlite", "pg") else 9)
for backend in backends:
    for mode in ["enqueue", "batch", "e2e", "defaults"]:
        crate_side = "crate-defaults" if mode == "defaults" else "crate"
        run_mode = "e2e" if mode == "defaults" else mode
        c, r = runs(crate_side, backend, run_mode), runs("river", backend, run_mode)
        if not c:
            continue
        cr, rr = med(c, "rate"), med(r, "rate")
        ratio = cr / rr if cr and rr else None
        # Each round's crate against the same round's river (run back to
        # back): steadier than the ratio of the medians when another tenant
        # loads some rounds.
        paired = [x["rate"] / y["rate"] for x in c for y in r
                  if x["round"] == y["round"] and not x.get("failed") and not y.get("failed")]
        paired_ratio = statistics.median(paired) if paired else None
        goal = "≥ 90%"
        ok = ratio is not None and ratio >= 0.9
        if mode == "defaults":
            goal = "≥ 1,000/s"
            ok = cr is not None and cr >= 1000
        others = lambda rs: f"{fmt(med(rs, 'others_pct'))} ({fmt(max([x.get('others_pct', 0) for x in rs], default=None))})"
        failed = sum(1 for x in c + r if x.get("failed"))
        pg = f"{fmt(med(c, 'pg_cpu_us_per_job'))} / {fmt(med(r, 'pg_cpu_us_per_job'))}" if backend == "pg" else "—"
        verdict = "met" if ok else "NOT met"
        verdicts.append((backend, mode, verdict))
        print(f"| {backend} | {labels[mode]} | {fmt(cr)} | {fmt(rr)} | {fmt(100 * ratio if ratio else None)}% | {fmt(100 * paired_ratio if paired_ratio else None)}% ({', '.join(fmt(100 * x) for x in paired)}) | {goal}: **{verdict}** | "
              f"{fmt(med(c, 'cpu_us_per_job'))} | {fmt(med(r, 'cpu_us_per_job'))} | {pg} | {others(c)} / {others(r)} | {failed} |")
print()
print("This process's CPU per job, split (medians; /proc/self/stat, in 10 ms ticks), its")
print("threads' context switches per job (/proc/self/task/*/status), and Postgres's")
print("transactions per job in the fresh database (pg_stat_database, setup included):")
print()
print("| backend | mode | user µs crate / river | system µs crate / river | switches crate / river | pg transactions crate / river |")
print("|---|---|---|---|---|---|")
for backend in backends:
    for mode in ["enqueue", "batch", "e2e"]:
        c, r = runs("crate", backend, mode), runs("river", backend, mode)
        if c and r and med(c, "user_us_per_job") is not None:
            print(f"| {backend} | {mode} | {fmt(med(c, 'user_us_per_job'))} / {fmt(med(r, 'user_us_per_job'))} | "
                  f"{fmt(med(c, 'sys_us_per_job'))} / {fmt(med(r, 'sys_us_per_job'))} | "
                  f"{fmt(med(c, 'switches_per_job'), 2)} / {fmt(med(r, 'switches_per_job'), 2)} | "
                  f"{fmt(med(c, 'pg_xacts_per_job'), 2)} / {fmt(med(r, 'pg_xacts_per_job'), 2)} |")

wrapped = [r for r in rows if r["side"] == "river-wrapped"]
if wrapped:
    print()
    print("Diagnostic: River used directly with the crate's stored job format (`{\"task\": {..}}`,")
    print("decoded in the worker): what of the gap is the format, what is the crate's code.")
    print()
    print("| backend | mode | crate | river-wrapped | river | crate / river-wrapped | river-wrapped / river | CPU µs/job crate / wrapped / river |")
    print("|---|---|---|---|---|---|---|---|")
    for backend in backends:
        for mode in ["enqueue", "batch", "e2e"]:
            c, w, r = runs("crate", backend, mode), runs("river-wrapped", backend, mode), runs("river", backend, mode)
            if not w:
                continue
            cr, wr, rr = med(c, "rate"), med(w, "rate"), med(r, "rate")
            pct = lambda a, b: fmt(100 * a / b if a and b else None) + "%"
            print(f"| {backend} | {mode} | {fmt(cr)} | {fmt(wr)} | {fmt(rr)} | {pct(cr, wr)} | {pct(wr, rr)} | "
                  f"{fmt(med(c, 'cpu_us_per_job'))} / {fmt(med(w, 'cpu_us_per_job'))} / {fmt(med(r, 'cpu_us_per_job'))} |")

e2e = [r for r in rows if r["mode"] == "e2e" and not r.get("failed")]
odd = [r for r in e2e if r["ran"] != r["n"]]
print()
print(f"End-to-end runs whose job count was not exactly N when the last job ran: {len(odd)} of {len(e2e)}"
      + "".join(f"; {r['side']} {r['backend']} round {r['round']}: {r['ran']} of {r['n']}" for r in odd) + ".")
print()
print("Per round (rate):")
print()
print("| backend | side | mode | " + " | ".join(f"round {i}" for i in sorted({r['round'] for r in rows})) + " |")
print("|---|---|---|" + "---|" * len({r['round'] for r in rows}))
for backend in backends:
    for mode in ["enqueue", "batch", "e2e"]:
        for side in ["crate", "river", "river-wrapped", "crate-defaults"]:
            rs = sorted(runs(side, backend, mode), key=lambda x: x["round"])
            if rs:
                print(f"| {backend} | {side} | {mode} | " + " | ".join("FAILED" if x.get("failed") else fmt(x["rate"]) for x in rs) + " |")
PY
cat "$RESULTS/summary.md"
log "results in $RESULTS (elapsed $((SECONDS - started)) s)"
