#!/usr/bin/env bash
# The lock-holder-preemption experiment of papers/0004-0006 and the mutex paper:
# `app=lockbench` at --smp 4 on the build machine's 2 cores, for the kernel's
# default lock (the lock-free mutex, bounded owner-aware spinning) and the
# variants named in VARIANTS, over the (threads, work) configurations in CONFIGS,
# REPS times. Rounds go variant by variant within a repetition, so host load drifts
# over all of them alike. Prints one line per run:
#   rep variant threads work result
# where result is acquisitions per emulated ms, or "DNF" (not finished within the
# timeout) or "FAIL" (any other failure).
#
# Usage: tools/lockbench-sweep.sh [REPS]   (default 3)
# Environment: TARGET (lockbench.target: lock, the default, heap or pages; with heap
#              the variants to compare are "default heap-locked"),
#              VARIANTS (default "default lock-spin"; also "lfmutex-strict"),
#              CONFIGS (default "1:0 4:0 16:0 4:30 4:200 16:200"; 1-thread runs
#              use --smp 1), ACQUISITIONS (20000), TIMEOUT (60 s).
set -uo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
variants=${VARIANTS:-"default lock-spin"}
configs=${CONFIGS:-"1:0 4:0 16:0 4:30 4:200 16:200"}
acquisitions=${ACQUISITIONS:-20000}
timeout=${TIMEOUT:-60}
target=${TARGET:-lock}
for rep in $(seq 1 "$reps"); do
    for variant in $variants; do
        features=()
        [ "$variant" != default ] && features=(--features "$variant")
        for config in $configs; do
            threads=${config%%:*}
            work=${config##*:}
            smp=4
            [ "$threads" = 1 ] && smp=1
            output=$(cargo xtask run --release --smp "$smp" --timeout "$timeout" "${features[@]}" -- \
                app=lockbench lockbench.threads="$threads" \
                lockbench.acquisitions="$acquisitions" lockbench.work="$work" \
                lockbench.target="$target" </dev/null 2>&1)
            result=$(printf '%s\n' "$output" | sed -n 's/.*throughput_per_ms=\([0-9]*\).*/\1/p' | tail -n 1)
            if [ -z "$result" ]; then
                if printf '%s\n' "$output" | grep -qi "time limit"; then
                    result=DNF
                else
                    result=FAIL
                fi
            fi
            echo "$rep $variant $threads $work $result"
        done
    done
done
