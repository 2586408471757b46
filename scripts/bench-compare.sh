#!/usr/bin/env bash
# The whole side-by-side comparison (issue #9): strata beside strata-overlayfs,
# fuse-overlayfs, kernel overlayfs and a native copy on the same image layers;
# container start beside bwrap and ch-run; import beside umoci. One summary table
# with the targets, a chart, and each part's own report.
#
#   scripts/bench-compare.sh [--quick] [--runs N] [--out DIR] [--strata BINARY] OUTDIR
#
# OUTDIR is an output of scripts/make-test-image.py (its 5- and 20-layer images,
# oci-N/ and overlay-N/). Run it as an unprivileged user who can read OUTDIR (its
# owner, when some of its files are private); as root it copies the binaries and
# scripts to a fresh /tmp/strata-bench-bin.XXXXXX and re-executes itself as strata-demo or
# $STRATA_BENCH_USER.
#
# The parts, each its own script, in this order (each alternates its candidates
# run by run, --runs times, 10 by default; container start 2x as many):
#   read-20   scripts/bench-lower.sh --layers 20: stat walk, read all and python
#             imports (chrooted into the view), warm and first after mount
#   read-5    the same on the 5-layer image
#   write-20  scripts/bench-write.sh --layers 20: copy-up of 1000 files, 5000
#             creates in 50 new dirs, 1000 deletes (nothing fsynced in the steps)
#   start     scripts/bench-run.sh OUTDIR/oci-20: `strata run IMAGE true` beside
#             bwrap and ch-run on the same rootfs (umoci unpack of that image)
#   import    scripts/bench-import.sh --layers 5: `strata import` beside `umoci
#             unpack --rootless`
# Everything goes to DIR (--out; default a new /var/tmp/strata-bench-compare.*):
# PART.md (the part's report), PART.tsv (every timing), summary.md (the summary
# table, then the parts' reports) and chart.png (the ratios of the summary; needs
# python3-matplotlib). The summary is printed at the end.
#
# --quick runs every part in its --quick mode (a small synthetic image, 3 runs,
# the busybox default image for container start): for CI, so the scripts never
# rot; no OUTDIR. Timings are printed, never asserted.
set -Eeuo pipefail
self=$(realpath "$0")
prog=bench-compare
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$self")/bench-common.sh"

out=
bench_option() {
    case $1 in
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; bench_took=2 ;;
        --out=*) out=${1#--out=}; bench_took=1 ;;
    esac
}
bench_parse_args "$@"
if [ "$(id -u)" -eq 0 ]; then
    # The parts run as the benchmark user: DIR must be theirs, and absolute.
    user=${STRATA_BENCH_USER:-strata-demo}
    [ -n "$out" ] || out=$(mktemp -d /var/tmp/strata-bench-compare.XXXXXX)
    out=$(realpath -m "$out")
    mkdir -p "$out"
    chown "$user:" "$out" 2>/dev/null || die "cannot give $out to $user"
    for i in "${!orig_args[@]}"; do   # the re-executed copy gets the absolute DIR
        case ${orig_args[$i]:-} in --out=*) unset 'orig_args[i]' ;; --out) unset 'orig_args[i]' 'orig_args[i+1]' ;; esac
    done
    orig_args=("${orig_args[@]}" --out "$out")
fi
bench_drop_root bench-lower.sh bench-write.sh bench-run.sh bench-import.sh \
    bench_lower_report.py bench_write_report.py bench_compare_report.py \
    make-test-image.py make-default-image.py ocilayout.py
bench_install_cleanup
[ -n "$out" ] || out=$(mktemp -d /var/tmp/strata-bench-compare.XXXXXX)
mkdir -p "$out"
out=$(realpath "$out")
[ -w "$out" ] || die "cannot write to $out"

sofs=$(bench_sofs_path)   # for bench_versions
common=(--strata "$strata" --runs "$runs")
[ "$quick" = 0 ] || common=(--strata "$strata" --quick)
image_args=()
[ "$quick" = 1 ] || image_args=("$(realpath "$outdir")")

# Runs part $1 (script $2 and its arguments): its report to $out/$1.md, its
# timings to $out/$1.tsv, progress on stderr.
part() {
    local name=$1 script=$2 started
    shift 2
    started=$(date +%s)
    note "part $name: $script $*"
    bash "$here/$script" --raw "$out/$name.tsv" "$@" >"$out/$name.md" ||
        die "part $name failed ($script; its output is in $out/$name.md)"
    note "part $name done in $(($(date +%s) - started)) s"
}

began=$(date -u '+%Y-%m-%d %H:%M UTC')
part read-20 bench-lower.sh "${common[@]}" --layers 20 "${image_args[@]}"
part read-5 bench-lower.sh "${common[@]}" --layers 5 "${image_args[@]}"
part write-20 bench-write.sh "${common[@]}" --layers 20 "${image_args[@]}"
if [ "$quick" = 1 ]; then
    part start bench-run.sh --strata "$strata" --quick
else
    part start bench-run.sh --strata "$strata" --runs $((2 * runs)) "$(realpath "$outdir")/oci-20:latest"
fi
part import bench-import.sh "${common[@]}" --layers 5 "${image_args[@]}"

rc=0
{
    echo "# strata beside its peers: $began"
    echo
    python3 "$here/bench_compare_report.py" \
        --read-20 "$out/read-20.tsv" --read-5 "$out/read-5.tsv" --write-20 "$out/write-20.tsv" \
        --start "$out/start.tsv" --import "$out/import.tsv" --chart "$out/chart.png" \
        --meta "command=scripts/bench-compare.sh $(printf '%q ' "${orig_args[@]}")" \
        --meta "date=$began to $(date -u '+%H:%M UTC')" \
        --meta "machine=$(bench_machine)" \
        --meta "image=$([ "$quick" = 1 ] && echo 'the small synthetic image (--quick)' || realpath "$outdir")" \
        --meta "versions=$(bench_versions)" || rc=$?
    for name in read-20 read-5 write-20 start import; do
        echo
        sed 's/^## /### /' "$out/$name.md"
    done
} >"$out/summary.md"
sed -n '1,/^Cells: median seconds (min/p' "$out/summary.md"
echo
note "every part's report: $out/summary.md; chart: $([ -f "$out/chart.png" ] && echo "$out/chart.png" || echo 'none (see above)')"
[ "$rc" = 0 ] || [ "$rc" = 2 ] || die "the summary failed (status $rc)"
