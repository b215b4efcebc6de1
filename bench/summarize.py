#!/usr/bin/env python3
"""Summarises a results directory of bench/run.sh (`load`) or
bench/shutdown_burst.sh (`burst`) as Markdown tables.

    python3 bench/summarize.py load  bench/results/load-YYYYmmdd-HHMMSS
    python3 bench/summarize.py burst bench/results/burst-YYYYmmdd-HHMMSS

Load: per run, requests/s, p50/p99, server CPU µs per request, peak RSS, the
rest of the machine's load, and completed vs expected tasks; then per endpoint
the medians over the rounds and the ratios crate/bare and crate/fastapi, and
the goals of BENCH.md. Requests/s medians are taken over the "quiet" rounds
(the rest of the machine used at most QUIET_PCT percent of it) when there are
any, else over all rounds (marked *). Standard library only.
"""

import json
import re
import statistics
import sys
from pathlib import Path

TICKS_PER_SECOND = 100  # getconf CLK_TCK
QUIET_PCT = 10.0
TASKS_PER_REQUEST = {"noop": 0, "immediate": 1, "phases": 3, "blocking": 1}
SERVERS = ["crate", "bare", "layered", "fastapi"]
# BENCH.md: crate / bare CPU and req/s within 3% (noop) or 10% (the rest).
BARE_GOAL = {"noop": 1.03, "immediate": 1.10, "phases": 1.10, "blocking": 1.10}
FASTAPI_GOAL = 20.0


def read_env(path):
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


def to_us(value, unit):
    return float(value) * {"us": 1.0, "ms": 1e3, "s": 1e6}[unit]


def parse_wrk(text):
    out = {"requests": 0, "seconds": float("nan"), "rps": float("nan"), "errors": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", text)
    if m:
        out["requests"] = int(m.group(1))
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
        out["seconds"] = float(m.group(2)) * scale
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        out[f"p{pct}_us"] = to_us(m.group(1), m.group(2)) if m else float("nan")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["errors"] += int(m.group(1))
    return out


def median(values):
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def fmt(value, digits=1):
    if value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def load_run(dir_path):
    env = read_env(dir_path / "run.env")
    wrk = parse_wrk((dir_path / "wrk.txt").read_text())
    warm = parse_wrk((dir_path / "warmup.txt").read_text())
    endpoint = env["endpoint"]
    run = {
        "server": env["server"],
        "endpoint": endpoint,
        "round": int(env["round"]),
        "idle_before_pct": float(env.get("idle_before_pct") or "nan"),
        **wrk,
    }
    ticks = int(env["cpu_ticks_after"]) - int(env["cpu_ticks_before"])
    server_cpu_s = ticks / TICKS_PER_SECOND
    run["cpu_us_per_req"] = (
        server_cpu_s * 1e6 / wrk["requests"] if wrk["requests"] else float("nan")
    )
    busy0, total0 = map(int, env["machine_before"].split())
    busy1, total1 = map(int, env["machine_after"].split())
    wrk_user, wrk_sys = map(float, env["wrk_cpu"].split()[:2])
    machine_s = (total1 - total0) / TICKS_PER_SECOND
    busy_s = (busy1 - busy0) / TICKS_PER_SECOND
    other = busy_s - server_cpu_s - wrk_user - wrk_sys
    run["other_pct"] = max(0.0, 100.0 * other / machine_s) if machine_s else float("nan")
    run["hwm_mib"] = int(env["hwm_kib"]) / 1024.0
    per_request = TASKS_PER_REQUEST.get(endpoint, 0)
    expected = (warm["requests"] + wrk["requests"]) * per_request
    completed = int(env["completed_final"]) - int(env["completed_initial"])
    # wrk counts only the responses it received: a request still in flight
    # when a wrk run stops was handled (its tasks ran) but not counted.
    slack = 2 * int(re.search(r"(\d+) connections", (dir_path / "wrk.txt").read_text()).group(1)) * per_request
    run["expected"] = expected
    run["completed"] = completed
    run["lost"] = max(0, expected - completed)
    run["tasks_ok"] = expected <= completed <= expected + slack
    problems = []
    if not run["tasks_ok"]:
        problems.append(f"completed {completed} vs expected {expected}..{expected + slack}")
    stats = json.loads(env["stats"]) if env.get("stats") else {}
    background = stats.get("background")
    if background:
        ended = sum(background[k] for k in ("completed", "failed", "panicked", "timed_out", "cancelled", "rejected"))
        if background["scheduled"] != background["completed"] or ended != background["scheduled"]:
            problems.append(f"crate stats {background}")
        if background["completed"] != stats["completed"]:
            problems.append(f"counter {stats['completed']} != crate's completed {background['completed']}")
    shutdown = json.loads(env["shutdown"]) if env.get("shutdown") else None
    if run["server"] == "crate":
        problems += check_crate_shutdown(shutdown)
    run["problems"] = problems
    return run


def check_crate_shutdown(shutdown):
    """The invariants of the crate's shutdown line; returns the problems."""
    if not shutdown:
        return ["no SHUTDOWN line"]
    problems = []
    stats = shutdown["stats"]
    ended = sum(stats[k] for k in ("completed", "failed", "panicked", "timed_out", "cancelled", "rejected"))
    if stats["queued"] or stats["running"]:
        problems.append(f"queued {stats['queued']} running {stats['running']} after shutdown")
    if stats["scheduled"] != ended + stats["queued"] + stats["running"]:
        problems.append(f"scheduled {stats['scheduled']} != ended {ended}")
    report = shutdown["report"]
    # The in-flight count was read just before shutdown began: tasks may end in
    # between, so the report may cover fewer, never more.
    covered = report["completed"] + report["cancelled"] + report["overdue"]
    if covered > shutdown["in_flight_before_shutdown"]:
        problems.append(f"report covers {covered}, more than the {shutdown['in_flight_before_shutdown']} in flight")
    # Only shutdown cancels in these servers: every cancellation is in the report.
    if stats["cancelled"] != report["cancelled"] + report["overdue"]:
        problems.append(f"stats.cancelled {stats['cancelled']} != report cancelled + overdue {report['cancelled'] + report['overdue']}")
    if shutdown["counter"] != stats["completed"]:
        problems.append(f"counter {shutdown['counter']} != stats.completed {stats['completed']}")
    return problems


def summarize_load(results):
    runs = [load_run(p.parent) for p in sorted(results.glob("*/run.env"))]
    endpoints = [e for e in TASKS_PER_REQUEST if any(r["endpoint"] == e for r in runs)]
    print(f"# Load benchmark: {results.name}\n")
    machine = results / "machine.txt"
    if machine.exists():
        print("```")
        print(machine.read_text().rstrip())
        print("```\n")

    print("## Every run\n")
    print("| endpoint | server | round | req/s | p50 µs | p99 µs | CPU µs/req | peak RSS MiB | rest of machine % | completed / expected tasks | errors | problems |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (endpoints.index(r["endpoint"]), r["round"], SERVERS.index(r["server"]))):
        print(
            f"| /{r['endpoint']} | {r['server']} | {r['round']} | {fmt(r['rps'], 0)} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} "
            f"| {fmt(r['cpu_us_per_req'], 2)} | {fmt(r['hwm_mib'])} | {fmt(r['other_pct'], 0)} "
            f"| {r['completed']} / {r['expected']} | {r['errors']} | {'; '.join(r['problems']) or '-'} |"
        )

    print("\n## Medians\n")
    print(f"req/s: median of the quiet rounds (rest of the machine ≤ {QUIET_PCT:.0f}%), * = no quiet round, median of all.\n")
    print("| endpoint | server | req/s | p50 µs | p99 µs | CPU µs/req | peak RSS MiB | lost tasks |")
    print("|---|---|---|---|---|---|---|---|")
    medians = {}
    for endpoint in endpoints:
        for server in SERVERS:
            mine = [r for r in runs if r["endpoint"] == endpoint and r["server"] == server]
            if not mine:
                continue
            quiet = [r for r in mine if r["other_pct"] <= QUIET_PCT]
            m = {
                "rps": median([r["rps"] for r in (quiet or mine)]),
                "rps_all_noisy": not quiet,
                "p50": median([r["p50_us"] for r in mine]),
                "p99": median([r["p99_us"] for r in mine]),
                "cpu": median([r["cpu_us_per_req"] for r in mine]),
                "hwm": median([r["hwm_mib"] for r in mine]),
                "lost": sum(r["lost"] for r in mine),
                "by_round": {r["round"]: r for r in mine},
            }
            medians[(endpoint, server)] = m
            star = "*" if m["rps_all_noisy"] else ""
            print(
                f"| /{endpoint} | {server} | {fmt(m['rps'], 0)}{star} | {fmt(m['p50'])} | {fmt(m['p99'])} "
                f"| {fmt(m['cpu'], 2)} | {fmt(m['hwm'])} | {m['lost']} |"
            )

    print("\n## Ratios and goals\n")
    print("CPU ratio: ratio of the median CPU µs/req (in brackets: median of the per-round ratios, crate and bare run back to back).\n")
    print("The layered floor: bare under a layer that only wraps each response body, against bare (what axum charges any such layer; run when SERVERS names `layered`).\n")
    print("| endpoint | CPU µs/req crate/bare | goal | req/s crate/bare | goal | req/s crate/fastapi | goal ≥ 20× | CPU layered/bare | lost tasks (all servers) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for endpoint in endpoints:
        c = medians.get((endpoint, "crate"))
        b = medians.get((endpoint, "bare"))
        f = medians.get((endpoint, "fastapi"))
        layered = medians.get((endpoint, "layered"))
        goal = BARE_GOAL[endpoint]
        cpu_ratio = rps_ratio = fastapi_ratio = round_ratio = floor_ratio = float("nan")
        if layered and b:
            floor_ratio = layered["cpu"] / b["cpu"]
        if c and b:
            cpu_ratio = c["cpu"] / b["cpu"]
            rps_ratio = c["rps"] / b["rps"]
            round_ratio = median(
                [c["by_round"][k]["cpu_us_per_req"] / b["by_round"][k]["cpu_us_per_req"] for k in c["by_round"] if k in b["by_round"]]
            )
        if c and f:
            fastapi_ratio = c["rps"] / f["rps"]
        lost = sum(m["lost"] for (e, _), m in medians.items() if e == endpoint)

        def verdict(ok):
            return "n/a" if ok is None else ("MET" if ok else "NOT MET")

        cpu_ok = None if cpu_ratio != cpu_ratio else cpu_ratio <= goal
        rps_ok = None if rps_ratio != rps_ratio else rps_ratio >= 1 / goal
        fastapi_ok = None if fastapi_ratio != fastapi_ratio else fastapi_ratio >= FASTAPI_GOAL
        print(
            f"| /{endpoint} | {fmt(cpu_ratio, 3)} ({fmt(round_ratio, 3)}) | ≤ {goal:.2f}: {verdict(cpu_ok)} "
            f"| {fmt(rps_ratio, 3)} | ≥ {1 / goal:.3f}: {verdict(rps_ok)} "
            f"| {fmt(fastapi_ratio, 1)}× | {verdict(fastapi_ok)} | {fmt(floor_ratio, 3)} | {lost} |"
        )
    problems = [(r["endpoint"], r["server"], r["round"], p) for r in runs for p in r["problems"]]
    print()
    if problems:
        print("Problems:")
        for endpoint, server, round_, problem in problems:
            print(f"- /{endpoint} {server} round {round_}: {problem}")
    else:
        print("No problems: every run completed its expected tasks; every crate shutdown report balanced.")


def summarize_burst(results):
    print(f"# Shutdown after a burst: {results.name}\n")
    machine = results / "machine.txt"
    if machine.exists():
        print("```")
        print(machine.read_text().rstrip())
        print("```\n")
    print("| server | round | responses | tasks scheduled | completed | reported not completed (cancelled / overdue / other) | vanished | exit after SIGTERM s | check |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_ok = True
    for path in sorted(results.glob("*/run.env"), key=lambda p: (read_env(p)["round"], SERVERS.index(read_env(p)["server"]))):
        env = read_env(path)
        wrk = parse_wrk((path.parent / "wrk.txt").read_text())
        shutdown = json.loads(env["shutdown"]) if env.get("shutdown") else None
        server = env["server"]
        if not shutdown:
            print(f"| {server} | {env['round']} | {wrk['requests']} | ? | ? | ? | ? | {env['exit_seconds']} | no SHUTDOWN line |")
            all_ok = all_ok and server != "crate"
            continue
        if server == "crate":
            stats = shutdown["stats"]
            report = shutdown["report"]
            scheduled = stats["scheduled"]
            completed = stats["completed"]
            not_completed = stats["failed"] + stats["panicked"] + stats["timed_out"] + stats["cancelled"] + stats["rejected"]
            vanished = scheduled - completed - not_completed - stats["queued"] - stats["running"]
            problems = check_crate_shutdown(shutdown)
            if scheduled < 3 * wrk["requests"]:
                problems.append(f"scheduled {scheduled} < 3 x {wrk['requests']} responses")
            check = "; ".join(problems) or "OK: every task completed or reported"
            all_ok = all_ok and not problems
            detail = f"{not_completed} (report: {report['completed']} completed, {report['cancelled']} cancelled, {report['overdue']} overdue, {shutdown['in_flight_before_shutdown']} in flight just before; shutdown {shutdown['shutdown_ms']:.0f} ms)"
        else:
            scheduled = shutdown["scheduled"]
            completed = shutdown["counter"]
            vanished = scheduled - completed
            detail = "0 (no report)"
            pct = 100.0 * vanished / scheduled if scheduled else 0.0
            check = f"{pct:.1f}% of the scheduled tasks vanished silently"
        print(f"| {server} | {env['round']} | {wrk['requests']} | {scheduled} | {completed} | {detail} | {vanished} | {env['exit_seconds']} | {check} |")
    print()
    print("crate: " + ("every task completed or reported in every round" if all_ok else "PROBLEMS above"))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("load", "burst"):
        sys.exit(__doc__)
    results = Path(sys.argv[2])
    if sys.argv[1] == "load":
        summarize_load(results)
    else:
        summarize_burst(results)


if __name__ == "__main__":
    main()
