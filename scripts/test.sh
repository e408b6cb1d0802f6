#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, starts real
# RabbitMQ, MariaDB and Redis on private loopback ports (ctest fixtures call
# scripts/infra.sh), runs every unit and integration test, and stops the
# servers again, also when a test fails or the run is interrupted.
#
# Stages (each its own build directory and its own servers):
#   1. RelWithDebInfo build: all tests.
#   2. AddressSanitizer + UndefinedBehaviorSanitizer build: all tests.
#   3. libFuzzer smoke run of every fuzz target (clang-14, ASan+UBSan).
# Set IM_TEST_SANITIZE=0 or IM_TEST_FUZZ=0 to skip a stage while iterating,
# IM_FUZZ_SECONDS to change the fuzz time per target (default 30).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${IM_TEST_BUILD_ROOT:-$repo}
total_pass=0
total_fail=0
failed_stages=()
state_dirs=()

cleanup() {
    # ctest's cleanup fixture normally stops the servers; this catches an
    # interrupted ctest.
    for d in "${state_dirs[@]}"; do
        IM_STATE_DIR=$d "$repo/scripts/infra.sh" down >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$repo/scripts/deps.sh" || { echo "test.sh: installing dependencies failed" >&2; exit 1; }

# run_stage NAME BUILD_DIR CTEST_REGEX [cmake options...]: build, then run the
# tests whose names match CTEST_REGEX; tallies the results.
run_stage() {
    local name=$1 build=$2 regex=$3 log
    shift 3
    echo "=== stage: $name ($build)"
    state_dirs+=("$build/test-infra")
    if ! "$repo/scripts/build.sh" "$build" "$@"; then
        echo "=== stage $name: BUILD FAILED"
        failed_stages+=("$name(build)")
        total_fail=$((total_fail + 1))
        return
    fi
    log=$(mktemp)
    (cd "$build" && ctest --output-on-failure --timeout 600 -R "$regex") 2>&1 | tee "$log"
    # ctest's summary: "100% tests passed, 0 tests failed out of 12"
    local line pass fail all
    line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)
    if [ -z "$line" ]; then
        echo "=== stage $name: ctest printed no summary"
        failed_stages+=("$name(ctest)")
        total_fail=$((total_fail + 1))
    else
        fail=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
        all=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
        pass=$((all - fail))
        total_pass=$((total_pass + pass))
        total_fail=$((total_fail + fail))
        [ "$fail" -eq 0 ] || failed_stages+=("$name")
    fi
    rm -f "$log"
}

run_stage default "$out/build" .
if [ "${IM_TEST_SANITIZE:-1}" != 0 ]; then
    run_stage asan-ubsan "$out/build-asan" . -DIM_ASAN=ON -DIM_UBSAN=ON
fi
if [ "${IM_TEST_FUZZ:-1}" != 0 ]; then
    CC=clang-14 run_stage fuzz "$out/build-fuzz" "^fuzz\\." -DIM_FUZZ=ON -DIM_ASAN=ON -DIM_UBSAN=ON \
        -DIM_FUZZ_SECONDS="${IM_FUZZ_SECONDS:-30}"
fi

echo
if [ ${#failed_stages[@]} -gt 0 ]; then
    echo "failed stages: ${failed_stages[*]}"
fi
echo "total: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
