#!/usr/bin/env python3
"""Atomic read-modify-writes a task or a request executes, counted exactly.

    bench/locked.py

Each locked instruction (`lock`-prefixed, or `xchg` with memory: atomic adds,
compare-and-swaps, `SeqCst` stores, reference counts, lock acquisitions)
costs tens of cycles even uncontended, and a cache miss when another core
wrote the line last; callgrind counts it as one instruction like any other.
This counts them: it runs examples/cost_probe.rs under
`valgrind --tool=callgrind --dump-instr=yes` at two sizes, finds the locked
instructions of the probe's binary with `objdump`, and prints the difference
of their executions per task (per request for the request variants), the
crate against its bare twin, with the functions that execute the crate's.
Only the probe's own code is counted (tokio, axum and the crate; not libc).
"""

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PROBE = os.path.join(TARGET, "release", "examples", "cost_probe")

# (label, bare variant, crate variant, units of the small and the large run,
# what one unit is): the sizes are bench/callgrind.sh's.
RUNS = [
    ("async task", "bare", "crate", (20000, 100000), "task"),
    ("sync task", "bare-sync", "crate-sync", (2000, 10000), "task"),
    ("request, 1 task", "bare-immediate", "crate-immediate", (6000, 30000), "request"),
    ("request, 3 tasks", "bare-phases", "crate-phases", (6000, 30000), "request"),
]


def locked_addresses(binary):
    """Addresses of the binary's locked instructions."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary],
        capture_output=True, text=True, check=True,
    ).stdout
    found = set()
    for line in listing.splitlines():
        match = re.match(r"^\s*([0-9a-f]+):\s+(lock |xchg)", line)
        if match:
            found.add(int(match.group(1), 16))
    return found


def executions(profile):
    """Executions of each (address, function) of the probe's binary in a
    callgrind profile written with --dump-instr=yes (positions: instr)."""
    counts = collections.Counter()
    names = {"fn": {}, "ob": {}}
    function = obj = None
    address = 0
    call_cost_next = False
    with open(profile) as lines:
        for line in lines:
            line = line.rstrip("\n")
            named = re.match(r"^(c?)(fn|ob)=\((\d+)\)(?: (.*))?$", line)
            if named:
                called, kind, number, name = named.groups()
                table = names[kind]
                if name:
                    table[number] = name
                if not called:
                    if kind == "fn":
                        function = table.get(number, number)
                    else:
                        obj = table.get(number, number)
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                call_cost_next = True
                continue
            cost = re.match(r"^(0x[0-9a-f]+|[+-]\d+|\*)\s+\S+\s+(\d+)$", line)
            if not cost:
                continue
            position = cost.group(1)
            if position.startswith("0x"):
                address = int(position, 16)
            elif position != "*":
                address += int(position)
            if call_cost_next:
                call_cost_next = False
                continue
            if obj and obj.endswith("cost_probe"):
                counts[(address, function)] += int(cost.group(2))
    return counts


def per_unit(variant, sizes, locked, scratch):
    """Locked instructions a unit of `variant`, in total and by function."""
    runs = []
    for size in sizes:
        profile = os.path.join(scratch, f"{variant}.{size}")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-instr=yes",
             f"--callgrind-out-file={profile}", PROBE, variant, "none", str(size)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )
        runs.append(executions(profile))
    small, large = runs
    units = sizes[1] - sizes[0]
    if variant.endswith("phases"):
        units //= 3  # the probe counts tasks; three make a request
    by_function = collections.Counter()
    for key in set(small) | set(large):
        if key[0] in locked:
            by_function[key[1]] += (large[key] - small[key]) / units
    return sum(by_function.values()), by_function


def main():
    missing = [tool for tool in ("valgrind", "objdump") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {' '.join(missing)}; install as root: "
              "apt-get install -y valgrind binutils", file=sys.stderr)
        return 1
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "--example", "cost_probe"],
        cwd=ROOT, check=True,
    )
    locked = locked_addresses(PROBE)
    with tempfile.TemporaryDirectory() as scratch:
        print(f"{'locked instructions':<30} {'bare':>8} {'crate':>8} {'extra':>8}")
        details = []
        for label, bare, crate, sizes, unit in RUNS:
            bare_total, _ = per_unit(bare, sizes, locked, scratch)
            crate_total, functions = per_unit(crate, sizes, locked, scratch)
            print(f"{label + ' (a ' + unit + ')':<30} {bare_total:8.1f} {crate_total:8.1f} "
                  f"{crate_total - bare_total:+8.1f}")
            details.append((label, functions))
        for label, functions in details:
            print(f"\n{label}: the crate variant's, by function (tokio's and axum's included)")
            for function, count in functions.most_common():
                if count >= 0.5:
                    print(f"  {count:5.1f}  {function[:110]}")
    print("\ncommand: bench/locked.py (valgrind --tool=callgrind --dump-instr=yes on "
          "examples/cost_probe.rs at two sizes, objdump for the locked instructions)")


if __name__ == "__main__":
    sys.exit(main())
