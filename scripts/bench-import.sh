#!/usr/bin/env bash
# Import time, side by side: `strata import` of an OCI layout into a fresh store
# beside `umoci unpack --rootless` of the same layout into a fresh bundle, on one
# filesystem, alternated run by run.
#
#   scripts/bench-import.sh [--quick] [--runs N] [--layers N] [--raw FILE] [--strata BINARY] OUTDIR
#
# OUTDIR is an output of scripts/make-test-image.py; the image is its oci-N/
# (--layers N, 5 by default). Both start from nothing each run (the store or the
# bundle removed, then `sync` untimed) and end with every layer unpacked on disk:
# strata into its content-addressed layer store, umoci into one rootfs. Neither
# fsyncs inside the timed part unless it does so itself (strata fsyncs what it
# commits to the store; umoci does not). After each run both results are checked:
# the image is in strata's store, and umoci's bundle has its rootfs.
#
# --quick: the small synthetic image in a temporary directory, 3 runs (CI runs it
# so the script never rots; timings printed, never asserted). --raw FILE keeps
# every timing (TSV: workload, candidate, run, start, end). As root it
# re-executes itself as strata-demo or $STRATA_BENCH_USER.
set -Eeuo pipefail
self=$(realpath "$0")
prog=bench-import
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$self")/bench-common.sh"

layers=5
bench_parse_args "$@"
bench_drop_root make-test-image.py ocilayout.py
command -v umoci >/dev/null || die "umoci is missing (Debian: apt-get install umoci)"

bench_install_cleanup
bench_setup_image "$layers"
times=$work/times.tsv
: >"$times"

import_strata() { "$strata" --root "$work/store" import -q "oci:$layout:latest" bench:import >/dev/null; }
import_umoci() { umoci unpack --rootless --image "$layout:latest" "$work/bundle" >/dev/null 2>"$work/umoci.err"; }
check() {
    "$strata" --root "$work/store" images | grep -q 'bench' ||
        die "strata import left no image bench:import in the store"
    [ -d "$work/bundle/rootfs/usr" ] || { cat "$work/umoci.err" >&2; die "umoci unpack left no rootfs"; }
}
# Removes candidate $1's output (strata's store or umoci's bundle), untimed.
fresh() {
    local d=$work/store
    [ "$1" = strata ] || d=$work/bundle
    chmod -R u+rwX "$d" 2>/dev/null || true
    rm -rf "$d"
    sync
}

for r in $(seq "$runs"); do
    bench_rotate "$r" strata umoci
    for c in "${bench_order[@]}"; do
        fresh "$c"
        t0=$EPOCHREALTIME
        "import_$c" || die "$c: the import failed"
        t1=$EPOCHREALTIME
        printf 'import\t%s\t%s\t%s\t%s\n' "$c" "$r" "$t0" "$t1" >>"$times"
    done
    check
    printf '.' >&2
done
echo >&2
[ -z "$raw" ] || cp "$times" "$raw"

python3 - "$times" "$(bench_machine)" "$(bench_fs "$work")" "$layout ($nlayers layers, $(du -sb "$layout/blobs" | cut -f1) bytes of blobs)" \
    "$("$strata" --version), $(umoci --version)" <<'PY'
import collections, statistics, sys
times, machine, fs, image, versions = sys.argv[1:]
samples = collections.defaultdict(list)
for line in open(times):
    _, c, _, t0, t1 = line.rstrip("\n").split("\t")
    samples[c].append(float(t1) - float(t0))
med = {c: statistics.median(v) for c, v in samples.items()}
print("## Import: strata import beside umoci unpack --rootless\n")
print(f"- machine: {machine}\n- filesystem: {fs}\n- image: {image}\n- versions: {versions}\n")
print("| candidate | median s (min–max) | strata / candidate |")
print("|---|---:|---:|")
for c, v in sorted(samples.items(), key=lambda kv: kv[0] != "strata"):
    print(f"| {c} | {med[c]:.3f} ({min(v):.3f}–{max(v):.3f}) | {med['strata'] / med[c]:.2f}x |")
print(f"\n{len(samples['strata'])} runs each, alternating; each from an empty store or bundle.")
PY
