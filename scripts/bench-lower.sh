#!/usr/bin/env bash
# Read side, side by side: strata's FUSE union (over the imported image, and as
# strata-overlayfs over the overlay-format layer directories) beside
# fuse-overlayfs, kernel overlayfs and a native flat copy, all over the same
# image layers, in one run.
#
#   scripts/bench-lower.sh [--quick] [--runs N] [--layers N] [--raw FILE] [--strata BINARY] OUTDIR
#
# OUTDIR is an output of scripts/make-test-image.py: its oci-N/ and overlay-N/
# with --layers N (20 by default; make-test-image.py also makes 5).
# Run it as an unprivileged user; as root it copies the strata binary to
# a fresh /tmp/strata-bench-bin.XXXXXX and re-executes itself as the user strata-demo (or
# $STRATA_BENCH_USER), which must be able to read OUTDIR. Kernel overlayfs and
# fuse-overlayfs read the overlay-20 files with the caller's rights, so run it as
# the user who built OUTDIR when some of its files (etc/shadow, root/) are private.
#
# What it does:
#  1. imports OUTDIR/oci-N into a fresh store, in a temporary directory on the
#     filesystem of OUTDIR (the flat copy goes there too);
#  2. inside one `unshare -Urm --pid`, so that every mount and every daemon dies
#     with it, mounts over the same N layers (read-only, no upper):
#       strata          strata mount testN M
#       strata-overlayfs  strata-overlayfs -o lowerdir=L(N-1):...:L0 M
#       fuse-overlayfs  fuse-overlayfs -o lowerdir=L(N-1):...:L0 M
#       kernel-overlay  mount -t overlay -o lowerdir=L(N-1):...:L0,userxattr M
#       native          a bind mount of `cp -a` of the kernel overlay's view
#     and compares the trees (names, types, modes, owners, sizes, nlink, mtimes,
#     symlink targets, file contents, xattrs, hardlink groups) against the kernel
#     overlay's, warning about any difference (timing goes on);
#  3. times, alternating the candidates run by run (their order rotates), --runs
#     times each (default 10):
#       stat walk, warm                 find M -xdev -printf '%i %s\n' >/dev/null
#       read all, warm                  tar -C M -cf - . | cat >/dev/null
#       python imports, warm            chroot M python3 -I -B -c 'import json,
#                                         email, asyncio, http.client'
#       stat walk, first after mount    the same on a fresh mount
#       read all, first after mount     the same on another fresh mount
#       python imports, first after mount  the same on another fresh mount
#       mount (until it answers)        the remount before each "first" workload
#     The python workloads need a python3 that runs in the image (the Debian
#     test image has one; --quick's synthetic image does not, and says so).
#     Warm means after one warm-up walk and read of the same mount. Caches cannot
#     be dropped unprivileged: "first after mount" is the first walk on a new
#     mount, with the backing files (layer trees, overlay dirs) in the page cache
#     and dentry cache; for native it is a fresh bind mount of warm files.
#  4. prints a markdown table of medians (min-max) in seconds, with the ratios
#     strata/kernel-overlay, strata/fuse-overlayfs, strata-overlayfs/kernel-overlay,
#     strata-overlayfs/fuse-overlayfs, fuse-overlayfs/kernel-overlay, and the
#     machine. --raw FILE keeps every timing (TSV).
#
# --quick builds the small synthetic image (make-test-image.py --small) in a
# temporary directory instead of using OUTDIR, and runs 3 times: for CI, under a
# minute. Its timings are printed, never asserted.
#
# The strata binary is target/release/strata of this checkout (cargo build
# --release), or --strata BINARY, or $STRATA; strata-overlayfs is the one beside
# it (when it is missing, that candidate is skipped, with a note).
set -Eeuo pipefail

self=$(realpath "$0")
prog=bench-lower
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$self")/bench-common.sh"


# --------------------------------------------------------------------------
# The inner part: runs as root of a new user, mount and pid namespace.
# --------------------------------------------------------------------------
inner() {
    # Globals, not locals: the EXIT trap runs after this function returns.
    work=$BL_WORK strata=$BL_STRATA image=$BL_IMAGE runs=$BL_RUNS
    layers=$BL_LAYERS lowers=$BL_LOWERS sofs=$BL_SOFS times=$BL_WORK/times.tsv
    read -r -a CANDIDATES <<<"$BL_CANDIDATES"
    cd "$work"

    # Unmount in order on the way out; the pid namespace ends the daemons anyway
    # when this shell (its init) exits, and the mounts die with the namespace.
    inner_cleanup() {
        local c
        for c in "${CANDIDATES[@]}"; do
            mountpoint -q "$work/mnt/$c" 2>/dev/null && umount_c "$c" 2>/dev/null || true
        done
    }
    trap inner_cleanup EXIT

    declare -gA DPID=()
    mount_c() {
        local c=$1 m=$work/mnt/$1
        case $c in
            strata) "$strata" --root "$work/store" mount "$image" "$m" ;;
            strata-overlayfs) bench_mount_overlayfs "$sofs" "lowerdir=$lowers" "$m" ;;
            fuse-overlayfs) bench_mount_overlayfs fuse-overlayfs "lowerdir=$lowers" "$m" ;;
            kernel-overlay) mount -t overlay overlay -o "lowerdir=$lowers,userxattr" "$m" ;;
            native) mount --bind "$work/flat" "$m" ;;
        esac
    }
    umount_c() { bench_umount "$1" "$work/mnt/$1"; }
    # Mounts candidate $1, records the time to $times under workload $2, run $3.
    timed_mount() {
        local c=$1 t0 t1
        t0=$EPOCHREALTIME
        mount_c "$c" || { echo "$prog: error: mounting $c failed" >&2; exit 1; }
        t1=$EPOCHREALTIME
        mountpoint -q "$work/mnt/$c" || { echo "$prog: error: $c is not mounted" >&2; exit 1; }
        case $c in kernel-overlay|native) ;; *) DPID[$c]=$(bench_daemon_pid "$work/mnt/$c" || true) ;; esac
        [ -z "${2:-}" ] || printf '%s\t%s\t%s\t%s\t%s\n' "$2" "$c" "$3" "$t0" "$t1" >>"$times"
    }
    walk() { find "$work/mnt/$1" -xdev -printf '%i %s\n' >/dev/null; }
    readall() { tar -C "$work/mnt/$1" -cf - . | cat >/dev/null; }
    # -B: no bytecode written (native's copy is writable, the others are not);
    # -I: nothing from the caller's environment or home.
    pyimport() {
        "$chroot" "$work/mnt/$1" /usr/bin/env -i /usr/bin/python3 -I -B \
            -c 'import json, email, asyncio, http.client' >/dev/null
    }
    timed() {  # workload candidate run command...
        local w=$1 c=$2 r=$3 t0 t1
        shift 3
        t0=$EPOCHREALTIME
        "$@" "$c"
        t1=$EPOCHREALTIME
        printf '%s\t%s\t%s\t%s\t%s\n' "$w" "$c" "$r" "$t0" "$t1" >>"$times"
    }
    # Every layer file must be readable here, or the candidates would not read
    # the same bytes.
    bench_check_readable "${BL_LAYER_DIRS[@]}"

    local c
    for c in "${CANDIDATES[@]}"; do mkdir -p "$work/mnt/$c"; done
    mkdir -p "$work/flat"
    for c in "${CANDIDATES[@]}"; do [ "$c" = native ] || timed_mount "$c"; done
    note "making the native flat copy (cp -a of the kernel overlay's view)"
    cp -a "$work/mnt/kernel-overlay/." "$work/flat/"
    timed_mount native

    note "comparing the trees with kernel overlayfs's ($layers layers)"
    for c in "${CANDIDATES[@]}"; do bench_listing "$work/mnt/$c" "$work/cmp-$c"; done
    for c in "${CANDIDATES[@]}"; do
        [ "$c" != kernel-overlay ] || continue
        python3 "$BL_REPORT" compare "$c" "$work/cmp-$c" kernel-overlay "$work/cmp-kernel-overlay" \
            | tee -a "$work/differences.txt" >&2
    done

    # Python runs only where the image has a working one.
    local python=0 chroot
    chroot=$(command -v chroot || echo /usr/sbin/chroot)
    if pyimport kernel-overlay 2>"$work/python.err"; then
        python=1
    else
        printf '%s\n' "$(head -c 300 "$work/python.err" | tr '\n' ' ')" >"$work/python-unavailable"
        note "python imports: not measured: python3 does not run in the image (above)"
    fi

    note "warm-up: one walk and one read (and one python run) of each mount"
    for c in "${CANDIDATES[@]}"; do
        walk "$c"; readall "$c"
        [ $python = 0 ] || pyimport "$c" || { echo "$prog: error: python3 fails in $c's view" >&2; exit 1; }
    done

    local r
    note "warm: $runs runs of each"
    for r in $(seq "$runs"); do
        bench_rotate "$r" "${CANDIDATES[@]}"
        for c in "${bench_order[@]}"; do
            timed "stat walk, warm" "$c" "$r" walk
            timed "read all, warm" "$c" "$r" readall
            [ $python = 0 ] || timed "python imports, warm" "$c" "$r" pyimport
        done
        printf '.' >&2
    done
    echo >&2
    note "first after mount: $runs runs of each (a fresh mount before each walk and each read)"
    for r in $(seq "$runs"); do
        bench_rotate "$r" "${CANDIDATES[@]}"
        for c in "${bench_order[@]}"; do
            umount_c "$c"; timed_mount "$c" "mount (until it answers)" "$r"
            timed "stat walk, first after mount" "$c" "$r" walk
            umount_c "$c"; timed_mount "$c" "mount (until it answers)" "$r"
            timed "read all, first after mount" "$c" "$r" readall
            if [ $python = 1 ]; then
                umount_c "$c"; timed_mount "$c" "mount (until it answers)" "$r"
                timed "python imports, first after mount" "$c" "$r" pyimport
            fi
        done
        printf '.' >&2
    done
    echo >&2
    # The daemons' memory after all that, for the record.
    for c in "${CANDIDATES[@]}"; do
        [ -n "${DPID[$c]:-}" ] && [ -r "/proc/${DPID[$c]}/status" ] &&
            printf '%s\t%s\n' "$c" "$(awk '/^VmHWM/ {print $2 " " $3}' "/proc/${DPID[$c]}/status")" \
                >>"$work/rss.tsv"
    done
    return 0
}

if [ "${1:-}" = --_inner ]; then
    shift
    read -r -a BL_LAYER_DIRS <<<"${BL_LOWERS//:/ }"
    inner
    exit 0
fi

# --------------------------------------------------------------------------
# The outer part.
# --------------------------------------------------------------------------
layers=20
bench_parse_args "$@"
bench_drop_root bench_lower_report.py make-test-image.py ocilayout.py
bench_check_host unshare fuse-overlayfs mount umount mountpoint find tar md5sum python3 setpriv
"$strata" mount --help >/dev/null 2>&1 || die "$strata has no 'mount' command: rebuild it (cargo build --release)"
report=$here/bench_lower_report.py
[ -r "$report" ] || die "missing $report"
CANDIDATES=(strata)
unavailable=()
bench_add_sofs CANDIDATES unavailable
CANDIDATES+=(fuse-overlayfs kernel-overlay native)

# The work directory: on the filesystem of OUTDIR, so that the store, the flat
# copy and the overlay layers share one filesystem.
bench_install_cleanup
bench_setup_image "$layers"
bench_import

export BL_WORK=$work BL_STRATA=$strata BL_IMAGE=$image BL_RUNS=$runs BL_LAYERS=$nlayers \
    BL_LOWERS=$lowers BL_REPORT=$report BL_SOFS=$sofs BL_CANDIDATES="${CANDIDATES[*]}" BENCH_OUTDIR=$outdir BENCH_USER=$(id -un)
bench_run_inner

entries=$(wc -l <"$work/cmp-kernel-overlay.tree")
bytes=$(du -sb "$work/flat" | cut -f1)
[ -z "$raw" ] || cp "$work/times.tsv" "$raw"

python3 "$report" table "$work/times.tsv" \
    --meta "command=scripts/bench-lower.sh $(printf '%q ' "${orig_args[@]}")" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "machine=$(bench_machine)" \
    --meta "filesystem of OUTDIR=$(bench_fs "$outdir")" \
    --meta "image=$outdir: $nlayers layers, $entries entries, $((bytes / 1000000)) MB$([ $quick = 1 ] && echo ' (--quick: small synthetic image)')" \
    --meta "versions=$(bench_versions)" \
    --meta "import=strata import of oci-$nlayers: $import_secs s (once, not part of the table)" \
    "${unavailable[@]}" \
    ${work:+--rss "$work/rss.tsv"} \
    --python-unavailable "$work/python-unavailable" \
    --differences "$work/differences.txt"
