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
