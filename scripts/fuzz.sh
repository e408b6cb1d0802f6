#!/usr/bin/env bash
# fuzz.sh - long fuzzing runs, outside CI (CI runs each target for
# IM_FUZZ_SECONDS, 30 s by default, in scripts/test.sh's fuzz stage).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 600 s, every target
#
# Builds build-fuzz/ (clang-14, libFuzzer, ASan+UBSan) and runs each target
# for SECONDS with its seeds and dictionary; new inputs collect under
# build-fuzz/tests/fuzz/fuzz_<name>.work/corpus, crashes under .../artifacts.
# Exits non-zero if any target crashed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^im_add_fuzzer(\([a-z_]*\).*/\1/p' "$repo/tests/fuzz/CMakeLists.txt")
fi
"$repo/scripts/deps.sh"
CC=clang-14 cmake -S "$repo" -B "$repo/build-fuzz" -DIM_FUZZ=ON -DIM_ASAN=ON -DIM_UBSAN=ON \
    -DIM_FUZZ_SECONDS="$seconds" >/dev/null
cmake --build "$repo/build-fuzz" -j"$(nproc)" >/dev/null
failed=()
for t in "${targets[@]}"; do
    echo "fuzz: $t for ${seconds}s"
    if ! (cd "$repo/build-fuzz" && ctest --output-on-failure -R "^fuzz\.$t\$" --timeout $((seconds + 300))); then
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]} (inputs in build-fuzz/tests/fuzz/*/artifacts)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets clean"
