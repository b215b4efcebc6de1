#!/usr/bin/env bash
# Instructions per task (BENCHMARKS.md, "Current figures" and "Metrics on"),
# counted by valgrind's callgrind, which is repeatable whatever else the
# machine is doing.
#
#   bench/callgrind.sh
#
# Runs examples/cost_probe.rs at N = 20,000 and N = 100,000 trivial tasks and
# prints (Ir(100k) - Ir(20k)) / 80,000, counting only what runs inside the
# runtime's `block_on` (start-up, the runtime's build and the recorder's
# install are left out), for: bare tokio::spawn; the crate without features;
# then, from examples/cost_probe_options.rs, a plain task against a delayed,
# a unique and a flow-controlled one (one binary, so that they compare);
# the crate without blocking detection (what the detector costs);
# the crate with `metrics` and no recorder; the crate with `metrics` and
# metrics-exporter-prometheus installed; then sync tasks against
# spawn_blocking, and requests through a router against their bare twins:
# scheduling nothing (the layer alone), extracting `Tasks` only, one task,
# one task per phase (three tokio::spawn), one sync task (the probe's
# bare-/crate- noop, extract, immediate, phases and request-sync); and the
# floor under any layer on a route (identity-noop, watch-noop).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "valgrind is missing; install it as root: apt-get install -y valgrind" >&2
        exit 1
    fi
    apt-get install -y valgrind >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y valgrind >/dev/null; }
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
target="${CARGO_TARGET_DIR:-target}"

build() { # feature-args... -> copies the probe to $out/probe-$label
    local label="$1"
    shift
    cargo build --quiet --release --example cost_probe "$@"
    cp "$target/release/examples/cost_probe" "$out/probe-$label"
}
build off
build metrics --features metrics

# Instructions inside block_on for one run: label binary variant recorder N.
# The first `block_on` of the inclusive listing is the outermost one (which of
# tokio's it is named after depends on what the build inlined).
instructions() {
    local file="$out/$1.$5.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$file" "$out/probe-$2" "$3" "$4" "$5" >/dev/null 2>&1
    callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$file" |
        awk '!found && /::block_on \[/ { gsub(",", "", $1); print $1; found = 1 }'
}

printf '%-44s %12s %12s\n' configuration "Ir/task" "vs crate"
base=""
while read -r label binary variant recorder; do
    small="$(instructions "$label" "$binary" "$variant" "$recorder" 20000)"
    large="$(instructions "$label" "$binary" "$variant" "$recorder" 100000)"
    per_task="$(( (large - small) / 80000 ))"
    [ "$label" = crate ] && base="$per_task"
    ratio="-"
    [ -n "$base" ] && ratio="$(awk -v a="$per_task" -v b="$base" 'BEGIN { printf "%.3fx", a / b }')"
    printf '%-44s %12s %12s\n' "$label" "$per_task" "$ratio"
done <<'RUNS'
bare off bare none
crate off crate none
crate,no-blocking-detection off crate-undetected none
crate+metrics,no-recorder metrics crate none
crate+metrics,prometheus metrics crate prometheus
RUNS
# The options, each against a plain task of the same binary.
cargo build --quiet --release --example cost_probe_options
cp "$target/release/examples/cost_probe_options" "$out/options"
options() { # variant N -> instructions inside block_on
    local file="$out/options.$1.$2.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$file" "$out/options" "$1" "$2" >/dev/null 2>&1
    callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$file" |
        awk '!found && /::block_on \[/ { gsub(",", "", $1); print $1; found = 1 }'
}
plain=""
for variant in plain delayed unique flow rate; do
    per_task="$(( ($(options "$variant" 100000) - $(options "$variant" 20000)) / 80000 ))"
    [ "$variant" = plain ] && plain="$per_task"
    printf '%-44s %12s %12s\n' "options: $variant" "$per_task" \
        "$(awk -v a="$per_task" -v b="$plain" 'BEGIN { printf "%.3fx", a / b }')"
done

# Sync tasks (their work runs on blocking-pool threads, so every thread's
# instructions count) and requests (one task per phase, through a router).
everything() { # binary variant N -> instructions of the whole run, all threads
    local file="$out/$2.$3.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$file" "$out/probe-$1" "$2" none "$3" >/dev/null 2>&1
    callgrind_annotate --auto=no --threshold=100 "$file" |
        awk '!found && /PROGRAM TOTALS/ { gsub(",", "", $1); print $1; found = 1 }'
}
base=""
for variant in bare-sync crate-sync; do
    per_task="$(( ($(everything off "$variant" 10000) - $(everything off "$variant" 2000)) / 8000 ))"
    [ -z "$base" ] && base="$per_task"
    printf '%-44s %12s %12s\n' "$variant (all threads, per task)" "$per_task" \
        "$(awk -v a="$per_task" -v b="$base" 'BEGIN { printf "%.3fx", a / b }')"
done
# Requests: pairs of variant, tasks per request (noop: N counts requests).
requests() { # bare-variant crate-variant tasks-per-request label
    local base="" variant per_request
    for variant in "$1" "$2"; do
        per_request="$(( ($(everything off "$variant" 30000) - $(everything off "$variant" 6000)) \
            * ${3/#0/1} / 24000 ))"
        [ -z "$base" ] && base="$per_request"
        printf '%-44s %12s %12s\n' "$variant ($4)" "$per_request" \
            "$(awk -v a="$per_request" -v b="$base" 'BEGIN { printf "%.3fx", a / b }')"
    done
}
requests bare-noop crate-noop 0 "per request, no task"
# The floor under any layer: bare under one that does nothing, and under one
# that only passes the response body on (`bench/run.sh`'s `layered`).
requests bare-noop identity-noop 0 "per request, an empty layer"
requests bare-noop watch-noop 0 "per request, a body-wrapping layer"
requests bare-extract crate-extract 0 "per request, Tasks, no task"
requests bare-immediate crate-immediate 1 "per request, 1 task"
requests bare-phases crate-phases 3 "per request, 3 tasks"
requests bare-request-sync crate-request-sync 1 "per request, 1 sync task"
echo "command: bench/callgrind.sh (valgrind --tool=callgrind, inside block_on, (N=100k - N=20k) / 80k;"
echo "  sync: whole run, (N=10k - N=2k) / 8k; requests: whole run, (N=30k - N=6k) per request)"
