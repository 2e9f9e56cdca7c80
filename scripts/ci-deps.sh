#!/usr/bin/env bash
# Installs what the tests need beyond Rust, if it is missing: libfuse2 and fusepy for the
# fsyncgate test's failing filesystem (scripts/failfs.py). Called by .ci/run; safe to rerun.
set -euo pipefail

if ! ldconfig -p | grep -q 'libfuse\.so\.2'; then
  echo "ci-deps: installing libfuse2" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse2 > /dev/null
fi
if ! python3 -c 'import fuse' 2> /dev/null; then
  echo "ci-deps: installing fusepy" >&2
  python3 -m pip install --quiet 'fusepy==3.0.1'
fi
