#!/usr/bin/env bash
# Installs what the tests need beyond Rust, if it is missing: python3, libfuse2 and fusepy for
# the fsyncgate test's failing filesystem (scripts/failfs.py), and openssl, which the TLS
# tests make their certificates with. Called by .ci/run before the
# tests (the test installs nothing: without these it prints SKIPPED and passes); run it by hand
# before `cargo test` elsewhere. Safe to rerun. Needs root (apt) on a machine that lacks them.
set -euo pipefail

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" > /dev/null
}

if ! command -v python3 > /dev/null; then
  echo "ci-deps: installing python3" >&2
  apt_install python3
fi
if ! ldconfig -p | grep -q 'libfuse\.so\.2'; then
  echo "ci-deps: installing libfuse2" >&2
  apt_install libfuse2
fi
if ! python3 -c 'import fuse' 2> /dev/null; then
  echo "ci-deps: installing fusepy" >&2
  # pip where it may install; Debian's package where pip is refused (PEP 668) or absent.
  python3 -m pip install --quiet 'fusepy==3.0.1' 2> /dev/null || apt_install python3-fusepy
  python3 -c 'import fuse'
fi
if ! command -v openssl > /dev/null; then
  echo "ci-deps: installing openssl" >&2
  apt_install openssl
fi
