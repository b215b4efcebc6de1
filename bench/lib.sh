# Shared by bench/run.sh and bench/shutdown_burst.sh (sourced, not run):
# installs what the load benches need, builds and writes the servers, starts
# and stops them, and reads /proc.
#
# The servers, same endpoints (see examples/bench_server.rs):
#   crate    examples/bench_server.rs  axum + axum-background
#   bare     examples/bench_bare.rs    axum + plain tokio::spawn / spawn_blocking (the floor)
#   layered  bench_bare with LAYER=watch: bare under a layer that only wraps each
#            response body (what axum charges any layer that watches the response's
#            end; not run unless named in SERVERS)
#   fastapi  bench/fastapi_app.py      FastAPI + fastapi-tasks under uvicorn (1 worker, uvloop, httptools)

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CRATE_DIR="$(dirname "$BENCH_DIR")"
VENV="$BENCH_DIR/.venv"
TARGET_DIR="${CARGO_TARGET_DIR:-$CRATE_DIR/target}"
CRATE_BIN="$TARGET_DIR/release/examples/bench_server"
BARE_BIN="$TARGET_DIR/release/examples/bench_bare"
CRATE_PORT="${CRATE_PORT:-3101}"
BARE_PORT="${BARE_PORT:-3102}"
FASTAPI_PORT="${FASTAPI_PORT:-3103}"
LAYERED_PORT="${LAYERED_PORT:-3104}"
# The fastapi-tasks version BENCH.md measured.
FASTAPI_TASKS_VERSION="${FASTAPI_TASKS_VERSION:-0.1.0}"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "wrk is missing; install it as root: apt-get install -y wrk"
        exit 1
    fi
    log "installing wrk (Debian package)"
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
}

# fastapi-tasks 0.1.0 requires only fastapi>=0.128.0 (which brings starlette,
# pydantic and anyio); uvicorn runs it, with uvloop and httptools as
# `uvicorn[standard]` would install them.
ensure_venv() {
    if [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" -c 'import fastapi_tasks, uvicorn, uvloop, httptools' 2>/dev/null; then
        return 0
    fi
    log "creating $VENV with fastapi-tasks==$FASTAPI_TASKS_VERSION, uvicorn, uvloop, httptools"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "fastapi-tasks==$FASTAPI_TASKS_VERSION" uvicorn uvloop httptools
}

build_servers() {
    log "building the Rust servers (release)"
    (cd "$CRATE_DIR" && cargo build --quiet --release --example bench_server --example bench_bare)
}

# The fastapi-tasks peer of examples/bench_server.rs.
write_fastapi_app() {
    cat >"$BENCH_DIR/fastapi_app.py" <<'PY'
"""The fastapi-tasks peer of examples/bench_server.rs (written by bench/lib.sh).

Same endpoints: /noop, /immediate (tasks.schedule), /phases (tasks.schedule,
tasks.after_route.schedule, tasks.after_response.schedule), /blocking (a sync
def task: fastapi-tasks runs it in Starlette's thread pool), /stats, and
/burst for bench/shutdown_burst.sh. When the lifespan has ended (fastapi-tasks'
task group has exited: what was going to run has run) it prints
`SHUTDOWN {"scheduled": ..., "counter": ...}`. (Not at exit: uvicorn re-raises
SIGTERM once it has shut down, so atexit handlers never run.)

Run: uvicorn fastapi_app:app --port 3103 --loop uvloop --http httptools
"""

import json
import threading
import time
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi_tasks import Tasks, add_tasks

app = FastAPI()
add_tasks(app)

# Sync tasks run on worker threads: the counter takes a lock.
_lock = threading.Lock()
_completed = 0
_burst_scheduled = 0


def bump() -> None:
    global _completed
    with _lock:
        _completed += 1


async def bump_async() -> None:
    bump()


@app.get("/noop", response_class=PlainTextResponse)
async def noop() -> str:
    return "ok"


@app.get("/immediate", response_class=PlainTextResponse)
async def immediate(tasks: Tasks) -> str:
    tasks.schedule(bump_async)
    return "ok"


@app.get("/phases", response_class=PlainTextResponse)
async def phases(tasks: Tasks) -> str:
    tasks.schedule(bump_async)
    tasks.after_route.schedule(bump_async)
    tasks.after_response.schedule(bump_async)
    return "ok"


@app.get("/blocking", response_class=PlainTextResponse)
async def blocking(tasks: Tasks) -> str:
    tasks.schedule(bump)
    return "ok"


@app.get("/stats")
async def stats() -> dict:
    return {"completed": _completed}


async def sleepy(seconds: float) -> None:
    await anyio.sleep(seconds)
    bump()


def sleepy_sync(seconds: float) -> None:
    time.sleep(seconds)
    bump()


@app.get("/burst", response_class=PlainTextResponse)
async def burst(tasks: Tasks) -> str:
    global _burst_scheduled
    with _lock:
        _burst_scheduled += 3
    tasks.schedule(sleepy, 0.1)
    tasks.task(shield=True).schedule(sleepy, 0.05)
    tasks.after_response.schedule(sleepy_sync, 0.05)
    return "ok"


def _report_after(lifespan):
    @asynccontextmanager
    async def wrapped(app):
        async with lifespan(app) as state:
            yield state
        line = json.dumps({"scheduled": _burst_scheduled, "counter": _completed})
        print("SHUTDOWN " + line, flush=True)

    return wrapped


# Around fastapi-tasks' lifespan (add_tasks put it in place), so this runs last.
app.router.lifespan_context = _report_after(app.router.lifespan_context)
PY
}

# start_server NAME LOGFILE: starts it in the background, sets SERVER_PID and
# SERVER_URL, waits until /stats answers.
start_server() {
    local name="$1" logfile="$2"
    case "$name" in
    crate)
        PORT="$CRATE_PORT" "$CRATE_BIN" >"$logfile" 2>&1 &
        SERVER_URL="http://127.0.0.1:$CRATE_PORT"
        ;;
    bare)
        PORT="$BARE_PORT" "$BARE_BIN" >"$logfile" 2>&1 &
        SERVER_URL="http://127.0.0.1:$BARE_PORT"
        ;;
    layered)
        LAYER=watch PORT="$LAYERED_PORT" "$BARE_BIN" >"$logfile" 2>&1 &
        SERVER_URL="http://127.0.0.1:$LAYERED_PORT"
        ;;
    fastapi)
        (cd "$BENCH_DIR" && exec "$VENV/bin/python" -m uvicorn fastapi_app:app \
            --host 127.0.0.1 --port "$FASTAPI_PORT" --loop uvloop --http httptools \
            --log-level warning --no-access-log) >"$logfile" 2>&1 &
        SERVER_URL="http://127.0.0.1:$FASTAPI_PORT"
        ;;
    *)
        log "unknown server $name"
        exit 1
        ;;
    esac
    SERVER_PID=$!
    local tries=0
    until curl -sf "$SERVER_URL/stats" >/dev/null 2>&1; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name exited at start-up; its log:"
            cat "$logfile" >&2
            exit 1
        fi
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ]; then
            log "$name did not answer within 30 s"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
            exit 1
        fi
        sleep 0.1
    done
}

# stop_server [TIMEOUT_S]: SIGTERM (graceful shutdown), wait for the exit;
# SIGKILL past the timeout (default 60 s). Returns the exit status.
stop_server() {
    local timeout="${1:-60}" waited=0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
        if [ "$waited" -gt $((timeout * 10)) ]; then
            log "server $SERVER_PID still running ${timeout}s after SIGTERM: SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    done
    local status=0
    wait "$SERVER_PID" 2>/dev/null || status=$?
    return "$status"
}

# utime + stime of a process, in clock ticks (fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised command name).
proc_cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# Peak resident set size of a process, in KiB.
proc_hwm_kib() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

# "BUSY TOTAL" ticks of the whole machine, from /proc/stat's first line.
machine_ticks() {
    awk '/^cpu / { total = $2+$3+$4+$5+$6+$7+$8+$9; print total - $5 - $6, total; exit }' /proc/stat
}

# Idle share of the machine over SECONDS (default 1), in percent.
machine_idle_pct() {
    local a b
    a=$(machine_ticks)
    sleep "${1:-1}"
    b=$(machine_ticks)
    echo "$a $b" | awk '{ busy = $3 - $1; total = $4 - $2; if (total == 0) print 100; else printf "%.0f\n", 100 * (total - busy) / total }'
}

# Waits (up to IDLE_WAIT_S, default 60) until the machine is at least
# IDLE_MIN_PCT (default 85) percent idle over a second; prints the last reading.
wait_for_quiet() {
    local deadline=$((SECONDS + ${IDLE_WAIT_S:-60})) idle
    while :; do
        idle=$(machine_idle_pct 1)
        if [ "$idle" -ge "${IDLE_MIN_PCT:-85}" ] || [ "$SECONDS" -ge "$deadline" ]; then
            echo "$idle"
            return 0
        fi
        log "machine only ${idle}% idle (other tenants); waiting"
        sleep 2
    done
}

# The `completed` counter a server's /stats reports.
server_completed() {
    curl -sf "$SERVER_URL/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["completed"])'
}

# Polls /stats until the counter has not moved for 0.6 s (or 30 s pass);
# prints the final count.
settle_completed() {
    local last current same=0 deadline=$((SECONDS + 30))
    last=$(server_completed)
    while [ "$same" -lt 3 ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
        current=$(server_completed)
        if [ "$current" = "$last" ]; then
            same=$((same + 1))
        else
            same=0
            last="$current"
        fi
    done
    echo "$last"
}

describe_machine() {
    local source
    source=$(git -C "$CRATE_DIR" describe --always --dirty 2>/dev/null ||
        echo "${BENCH_SOURCE:-unknown (not a git checkout; set BENCH_SOURCE)}")
    echo "source: $source"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel: $(uname -sr)"
    echo "rustc: $(rustc --version)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "python: $("$VENV/bin/python" --version 2>&1)"
    "$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null |
        grep -iE '^(fastapi|fastapi-tasks|starlette|uvicorn|uvloop|httptools|anyio)==' | sed 's/^/pip: /'
}

setup_all() {
    ensure_wrk
    ensure_venv
    build_servers
    write_fastapi_app
}
