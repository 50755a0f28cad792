#!/bin/sh
# Runs every BUILD_DIR/fuzz_* libFuzzer binary for SECONDS seconds on a work copy of its
# seed corpus (tests/fuzz/corpus/<name>/ -> tests/fuzz/corpus-work/<name>/, git-ignored),
# with tests/fuzz/<name>.dict when there is one. Crash inputs land in
# tests/fuzz/corpus-work/<name>-crashes/. Exits non-zero if any fuzzer failed.
#   usage: tests/fuzz/run.sh BUILD_DIR SECONDS
set -u
if [ $# -ne 2 ]; then
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
fi
build=$(cd "$1" && pwd) || exit 2
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
work="$here/corpus-work"
mkdir -p "$work"

found=0
failed=""
for bin in "$build"/fuzz_*; do
    [ -x "$bin" ] && [ -f "$bin" ] || continue
    found=1
    name=${bin##*/fuzz_}
    corpus="$work/$name"
    crashes="$work/$name-crashes"
    rm -rf "$corpus"
    mkdir -p "$corpus" "$crashes"
    if [ -d "$here/corpus/$name" ]; then
        cp -R "$here/corpus/$name/." "$corpus/"
    fi
    set -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$crashes/"
    if [ -f "$here/$name.dict" ]; then
        set -- "$@" -dict="$here/$name.dict"
    fi
    echo "== fuzz_$name for ${seconds}s (corpus $corpus)"
    if ! "$bin" "$@" "$corpus"; then
        echo "== fuzz_$name FAILED: inputs in $crashes/" >&2
        failed="$failed $name"
    fi
done

if [ $found -eq 0 ]; then
    echo "no fuzz_* binary in $build" >&2
    exit 2
fi
if [ -n "$failed" ]; then
    echo "fuzzers failed:$failed" >&2
    exit 1
fi
echo "all fuzzers ran ${seconds}s without a crash"
