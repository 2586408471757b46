#!/usr/bin/env bash
# Import time of an OCI layout: `strata import` beside `umoci unpack --rootless`,
# alternated run by run on the same filesystem, medians and ratio printed.
# Run it as an unprivileged user (as root it drops to strata-demo).
#
#   scripts/bench-import.sh OCI_LAYOUT [RUNS] [STRATA_BINARY]
set -euo pipefail
layout=$(realpath "$1"); runs=${2:-9}; strata=${3:-$(dirname "$(realpath "$0")")/../target/release/strata}
if [ "$(id -u)" -eq 0 ]; then
    bin=/tmp/strata-bench-bin; install -d -m 755 "$bin"; install -m 755 "$strata" "$bin/strata"
    # The checkout may sit where the user cannot read (/root is 0700): run a copy.
    install -m 644 "$(realpath "$0")" "$bin/bench-import.sh"
    exec setpriv --reuid=strata-demo --regid=strata-demo --init-groups --reset-env \
        bash "$bin/bench-import.sh" "$layout" "$runs" "$bin/strata"
fi
work=$(mktemp -d /var/tmp/strata-bench-import.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
for _ in $(seq "$runs"); do
    rm -rf "$work/store" "$work/bundle"; sync
    t0=$(now); "$strata" --root "$work/store" import -q "oci:$layout:latest" >/dev/null; t1=$(now)
    sync
    umoci unpack --rootless --image "$layout:latest" "$work/bundle" >/dev/null 2>&1; t2=$(now)
    echo "strata $(echo "$t1 - $t0" | bc)"
    echo "umoci $(echo "$t2 - $t1" | bc)"
done > "$work/times"
python3 - "$work/times" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tool, secs = line.split()
    runs[tool].append(float(secs))
for tool, t in runs.items():
    print(f"{tool:7} median {statistics.median(t):.2f} s  (min {min(t):.2f}, max {max(t):.2f}, n={len(t)})")
print(f"strata/umoci: {statistics.median(runs['strata']) / statistics.median(runs['umoci']):.2f}")
PY
