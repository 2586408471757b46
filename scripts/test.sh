#!/usr/bin/env bash
# The README's second command: the whole test suite. As root it first prepares the
# machine (packages, /dev/fuse, users); the tests themselves run strata as an
# unprivileged user.
#
#   sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    bash scripts/setup-host.sh strata-test
fi

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# Benches run once each in test mode, so they never rot.
cargo test --all-targets
