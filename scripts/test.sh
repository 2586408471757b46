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
# The side-by-side comparison (union filesystems, container start, import) on a
# small synthetic image, so the scripts never rot: timings printed, never asserted
# (bench-write's checks of each step and the parts' tree checks do fail it).
cargo build --release --quiet
STRATA_BENCH_USER=strata-test bash scripts/bench-compare.sh --quick
# Unit and integration tests, and every criterion bench once in test mode. Last, so
# that the test runner's summary closes the output.
cargo test --all-targets
