#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time.
#
# Usage: scripts/fuzz.sh [SECONDS]   (default 60 seconds per target)
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the -Z flags it needs
# (sanitizer, coverage instrumentation). Each target starts from fuzz/seeds/<target>/ plus the
# corpus it grew on earlier runs in fuzz/corpus/<target>/ (not checked in). A crash is saved in
# fuzz/artifacts/<target>/ and stops the script with a non-zero status.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]  (a positive whole number of seconds per target)" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd "$root/fuzz"
mapfile -t targets < <(cargo fuzz list)
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "no fuzz targets found in $root/fuzz" >&2
    exit 1
fi
for target in "${targets[@]}"; do
    corpus="$root/fuzz/corpus/$target"
    mkdir -p "$corpus"
    # Checked-in seeds (valid streams and handshakes) are read but never written to.
    seeds=()
    if [[ -d "$root/fuzz/seeds/$target" ]]; then
        seeds=("$root/fuzz/seeds/$target")
    fi
    echo "==> fuzzing $target for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds"
done
echo "==> all targets ran ${seconds}s without a crash"
