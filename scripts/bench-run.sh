#!/usr/bin/env bash
# Container start time: `strata run IMAGE true` beside `ch-run ROOTFS -- true`
# (Charliecloud) and `bwrap ... true` (bubblewrap), on the same root filesystem,
# as an unprivileged user. strata mounts its union filesystem over the image's
# layers and enters user, mount, pid, uts and ipc namespaces; ch-run and bwrap get
# the image as a flat directory (umoci unpack --rootless of the same OCI image),
# bwrap with the same namespaces, ch-run with its own (user and mount).
#
#   scripts/bench-run.sh [--quick] [--runs N] [--raw FILE] [--strata BINARY] [LAYOUT[:REF]]
#
# LAYOUT is an OCI image layout whose image has /bin/true (default: the project's
# busybox image, built by scripts/make-default-image.py into the work directory).
# The candidates alternate run by run in a rotating order after one warm-up each;
# the table gives median seconds (min–max) and the ratios of medians;
# strata-single is strata with --userns=single (no newuidmap/newgidmap). --quick: 3
# runs (CI runs it so the script never rots; its timings are printed, never
# asserted). --raw FILE keeps every timing (TSV: workload, candidate, run, start,
# end). As root it re-executes itself as strata-demo or $STRATA_BENCH_USER.
#
# Needs: python3, umoci, bwrap (bubblewrap), ch-run (charliecloud-runtime); a
# candidate whose tool is missing is reported as unavailable.
set -Eeuo pipefail
self=$(realpath "$0")
prog=bench-run
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$self")/bench-common.sh"

quick=0 runs= layout=
orig_args=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift ;;
        --runs=*) runs=${1#--runs=} ;;
        --strata) [ $# -ge 2 ] || die "--strata needs a binary"; strata=$2; shift ;;
        --raw) [ $# -ge 2 ] || die "--raw needs a file"; raw=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$layout" ] || die "one LAYOUT only"; layout=$1 ;;
    esac
    shift
done
[ -n "$runs" ] || { if [ "$quick" = 1 ]; then runs=3; else runs=20; fi; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number, not '$runs'"
[ -x "$strata" ] || die "no strata binary at $strata: run cargo build --release in $repo, or give --strata BINARY"
outdir=$layout
bench_drop_root make-default-image.py ocilayout.py
for tool in python3 umoci; do command -v "$tool" >/dev/null || die "$tool is missing"; done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-$prog.XXXXXX")
bench_install_cleanup
if [ -z "$layout" ]; then
    python3 "$here/make-default-image.py" "$work/img" >/dev/null
    layout=$work/img:latest
fi
case $layout in *:*) ;; *) layout=$layout:latest ;; esac
store=$work/store
"$strata" --root "$store" import -q "oci:$layout" bench:run >/dev/null
umoci unpack --rootless --image "$layout" "$work/bundle" >/dev/null 2>&1 ||
    die "umoci unpack --rootless --image $layout failed"
rootfs=$work/bundle/rootfs
[ -e "$rootfs/bin/true" ] || die "the image has no /bin/true"

# strata-single: --userns=single, one id mapped directly, without the setuid
# newuidmap/newgidmap that the default's subordinate range needs.
candidates=(strata strata-single)
unavailable=()
if command -v bwrap >/dev/null; then candidates+=(bwrap); else unavailable+=("bwrap=not installed (Debian: bubblewrap)"); fi
if command -v ch-run >/dev/null; then candidates+=(ch-run); else unavailable+=("ch-run=not installed (Debian: charliecloud-runtime)"); fi

start() {
    case $1 in
        strata) "$strata" --root "$store" run bench:run /bin/true ;;
        strata-single) "$strata" --root "$store" run --userns=single bench:run /bin/true ;;
        bwrap) bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts \
                   --bind "$rootfs" / --proc /proc --dev /dev --chdir / /bin/true ;;
        ch-run) ch-run "$rootfs" -- /bin/true ;;
    esac
}

times=$work/times
: >"$times"
for c in "${candidates[@]}"; do start "$c" >/dev/null || die "$c could not run /bin/true"; done
for r in $(seq "$runs"); do
    bench_rotate "$r" "${candidates[@]}"
    for c in "${bench_order[@]}"; do
        t0=$(date +%s.%N)
        start "$c" >/dev/null
        t1=$(date +%s.%N)
        printf 'container start\t%s\t%s\t%s\t%s\n' "$c" "$r" "$t0" "$t1" >>"$times"
    done
done
[ -z "$raw" ] || cp "$times" "$raw"

python3 - "$times" "$(bench_machine)" "$(bench_fs "$store")" "$("$strata" --version)" "${unavailable[@]}" <<'PY'
import collections, statistics, sys
times, machine, fs, version, *unavailable = sys.argv[1:]
samples = collections.defaultdict(list)
for line in open(times):
    _, c, _, t0, t1 = line.split("\t")
    samples[c].append(float(t1) - float(t0))
med = {c: statistics.median(v) for c, v in samples.items()}
print("## Container start: `true` in a new container\n")
print(f"- machine: {machine}")
print(f"- store and rootfs on: {fs}")
print(f"- {version}")
for u in unavailable:
    c, _, why = u.partition("=")
    print(f"- {c}: not measured: {why}")
print()
print("| candidate | median s (min–max) | strata / candidate |")
print("|---|---:|---:|")
for c, v in samples.items():
    print(f"| {c} | {med[c]:.4f} ({min(v):.4f}–{max(v):.4f}) | {med['strata'] / med[c]:.2f}x |")
print(f"\n{len(samples['strata'])} runs each, alternating, after one warm-up each.")
PY
