#!/usr/bin/env bash
# Read side, side by side: strata's FUSE union beside fuse-overlayfs, kernel
# overlayfs and a native flat copy, all over the same image layers, in one run.
#
#   scripts/bench-lower.sh [--quick] [--runs N] [--raw FILE] [--strata BINARY] OUTDIR
#
# OUTDIR is an output of scripts/make-test-image.py (its oci-20/ and overlay-20/).
# Run it as an unprivileged user; as root it copies the strata binary to
# /tmp/strata-bench-bin and re-executes itself as the user strata-demo (or
# $STRATA_BENCH_USER), which must be able to read OUTDIR. Kernel overlayfs and
# fuse-overlayfs read the overlay-20 files with the caller's rights, so run it as
# the user who built OUTDIR when some of its files (etc/shadow, root/) are private.
#
# What it does:
#  1. imports OUTDIR/oci-20 into a fresh store, in a temporary directory on the
#     filesystem of OUTDIR (the flat copy goes there too);
#  2. inside one `unshare -Urm --pid`, so that every mount and every daemon dies
#     with it, mounts over the same 20 layers:
#       strata          strata mount test20 M
#       fuse-overlayfs  fuse-overlayfs -o lowerdir=L19:...:L0 M   (read-only)
#       kernel-overlay  mount -t overlay -o lowerdir=L19:...:L0,userxattr M
#       native          a bind mount of `cp -a` of the kernel overlay's view
#     and compares the trees (names, types, modes, owners, sizes, nlink, mtimes,
#     symlink targets, file contents, xattrs, hardlink groups) against the kernel
#     overlay's, warning about any difference (timing goes on);
#  3. times, alternating the candidates run by run (their order rotates), --runs
#     times each (default 10):
#       stat walk, warm                 find M -xdev -printf '%i %s\n' >/dev/null
#       read all, warm                  tar -C M -cf - . | cat >/dev/null
#       stat walk, first after mount    the same on a fresh mount
#       read all, first after mount     the same on another fresh mount
#       mount (until it answers)        the remount before each "first" workload
#     Warm means after one warm-up walk and read of the same mount. Caches cannot
#     be dropped unprivileged: "first after mount" is the first walk on a new
#     mount, with the backing files (layer trees, overlay dirs) in the page cache
#     and dentry cache; for native it is a fresh bind mount of warm files.
#  4. prints a markdown table of medians (min-max) in seconds, with the ratios
#     strata/kernel-overlay, strata/fuse-overlayfs, fuse-overlayfs/kernel-overlay,
#     and the machine. --raw FILE keeps every timing (TSV).
#
# --quick builds the small synthetic image (make-test-image.py --small) in a
# temporary directory instead of using OUTDIR, and runs 3 times: for CI, under a
# minute. Its timings are printed, never asserted.
#
# The strata binary is target/release/strata of this checkout (cargo build
# --release), or --strata BINARY, or $STRATA.
set -Eeuo pipefail

self=$(realpath "$0")
here=$(dirname "$self")
repo=$(dirname "$here")
prog=bench-lower

die() { echo "$prog: error: $*" >&2; exit 1; }
warn() { echo "$prog: warning: $*" >&2; }
note() { echo "$prog: $*" >&2; }
usage() { sed -n '2,/^set -Eeuo/p' "$self" | sed -e '$d' -e 's/^# \{0,1\}//'; }

CANDIDATES=(strata fuse-overlayfs kernel-overlay native)
# Say where an unexpected failure happened, before set -e exits.
trap 'echo "$prog: error: failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

# --------------------------------------------------------------------------
# The inner part: runs as root of a new user, mount and pid namespace.
# --------------------------------------------------------------------------
inner() {
    # Globals, not locals: the EXIT trap runs after this function returns.
    work=$BL_WORK strata=$BL_STRATA image=$BL_IMAGE runs=$BL_RUNS
    layers=$BL_LAYERS lowers=$BL_LOWERS times=$BL_WORK/times.tsv
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

    # The process serving a FUSE mount: its last argument is the mount point.
    daemon_pid() {
        local want=$1 p last
        for p in /proc/[0-9]*; do
            [ -r "$p/cmdline" ] || continue
            last=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | tail -n 1) || continue
            if [ "$last" = "$want" ]; then echo "${p#/proc/}"; return 0; fi
        done
        return 1
    }

    declare -gA DPID=()
    mount_c() {
        local c=$1 m=$work/mnt/$1
        case $c in
            strata) "$strata" --root "$work/store" mount "$image" "$m" ;;
            # Debian's 1.10 says "unknown argument ignored: lazytime" on every mount.
            fuse-overlayfs) fuse-overlayfs -o "lowerdir=$lowers" "$m" 2>"$work/fuse-overlayfs.err" ||
                { cat "$work/fuse-overlayfs.err" >&2; return 1; } ;;
            kernel-overlay) mount -t overlay overlay -o "lowerdir=$lowers,userxattr" "$m" ;;
            native) mount --bind "$work/flat" "$m" ;;
        esac
    }
    # Unmounts and waits for the daemon to be gone, so that the next
    # measurement does not share the CPUs with a dying one.
    umount_c() {
        local c=$1 m=$work/mnt/$1 pid=${DPID[$1]:-} i
        case $c in
            strata) "$strata" umount "$m" ;;
            *) umount "$m" ;;
        esac
        if [ -n "$pid" ]; then
            for i in $(seq 500); do [ -d "/proc/$pid" ] || break; sleep 0.01; done
            [ -d "/proc/$pid" ] && echo "$prog: warning: the $c daemon $pid outlived its mount" >&2
            DPID[$c]=
        fi
        return 0
    }
    # Mounts candidate $1, records the time to $times under workload $2, run $3.
    timed_mount() {
        local c=$1 t0 t1
        t0=$EPOCHREALTIME
        mount_c "$c" || { echo "$prog: error: mounting $c failed" >&2; exit 1; }
        t1=$EPOCHREALTIME
        mountpoint -q "$work/mnt/$c" || { echo "$prog: error: $c is not mounted" >&2; exit 1; }
        case $c in strata|fuse-overlayfs) DPID[$c]=$(daemon_pid "$work/mnt/$c" || true) ;; esac
        [ -z "${2:-}" ] || printf '%s\t%s\t%s\t%s\t%s\n' "$2" "$c" "$3" "$t0" "$t1" >>"$times"
    }
    walk() { find "$work/mnt/$1" -xdev -printf '%i %s\n' >/dev/null; }
    readall() { tar -C "$work/mnt/$1" -cf - . | cat >/dev/null; }
    timed() {  # workload candidate run command...
        local w=$1 c=$2 r=$3 t0 t1
        shift 3
        t0=$EPOCHREALTIME
        "$@" "$c"
        t1=$EPOCHREALTIME
        printf '%s\t%s\t%s\t%s\t%s\n' "$w" "$c" "$r" "$t0" "$t1" >>"$times"
    }
    # The tree as seen through mount point $1, one line per entry, then one per
    # regular file with its md5.
    listing() {
        (cd "$1" && find . -mindepth 1 -xdev \
            \( -type d -printf '%P\t%y\t%m\t%U:%G\tmtime=%T@\n' \) -o \
            \( -type l -printf '%P\t%y\t%m\t%U:%G\tmtime=%T@\t-> %l\n' \) -o \
            \( -type f -printf '%P\t%y\t%m\t%U:%G\tmtime=%T@\tsize=%s\tnlink=%n\n' \) -o \
            -printf '%P\t%y\t%m\t%U:%G\tmtime=%T@\tnlink=%n\n' | LC_ALL=C sort) >"$2.tree"
        (cd "$1" && find . -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0r md5sum) >"$2.md5"
        python3 "$BL_REPORT" extras "$1" >"$2.extra"
    }

    # Every layer file must be readable here, or the candidates would not read
    # the same bytes.
    local unreadable
    unreadable=$(find "${BL_LAYER_DIRS[@]}" ! -type c ! -type l ! -readable -print 2>&1 | head -n 5 || true)
    if [ -n "$unreadable" ]; then
        echo "$prog: error: some layer files are not readable by $BL_USER inside the" \
             "namespace (run as the owner of $BL_OUTDIR, $(stat -c %U "$BL_OUTDIR"); as root: STRATA_BENCH_USER=$(stat -c %U "$BL_OUTDIR")):" >&2
        echo "$unreadable" | sed 's/^/  /' >&2
        exit 1
    fi

    mkdir -p "$work/mnt"/{strata,fuse-overlayfs,kernel-overlay,native} "$work/flat"
    local c
    for c in strata fuse-overlayfs kernel-overlay; do timed_mount "$c"; done
    note "making the native flat copy (cp -a of the kernel overlay's view)"
    cp -a "$work/mnt/kernel-overlay/." "$work/flat/"
    timed_mount native

    note "comparing the trees with kernel overlayfs's ($layers layers)"
    for c in "${CANDIDATES[@]}"; do listing "$work/mnt/$c" "$work/cmp-$c"; done
    for c in strata fuse-overlayfs native; do
        python3 "$BL_REPORT" compare "$c" "$work/cmp-$c" kernel-overlay "$work/cmp-kernel-overlay" \
            | tee -a "$work/differences.txt" >&2
    done

    note "warm-up: one walk and one read of each mount"
    for c in "${CANDIDATES[@]}"; do walk "$c"; readall "$c"; done

    local r i n=${#CANDIDATES[@]} order
    note "warm: $runs runs of each"
    for r in $(seq "$runs"); do
        order=()
        for i in $(seq 0 $((n - 1))); do order+=("${CANDIDATES[$(((i + r) % n))]}"); done
        for c in "${order[@]}"; do
            timed "stat walk, warm" "$c" "$r" walk
            timed "read all, warm" "$c" "$r" readall
        done
        printf '.' >&2
    done
    echo >&2
    note "first after mount: $runs runs of each (a fresh mount before each walk and each read)"
    for r in $(seq "$runs"); do
        order=()
        for i in $(seq 0 $((n - 1))); do order+=("${CANDIDATES[$(((i + r) % n))]}"); done
        for c in "${order[@]}"; do
            umount_c "$c"; timed_mount "$c" "mount (until it answers)" "$r"
            timed "stat walk, first after mount" "$c" "$r" walk
            umount_c "$c"; timed_mount "$c" "mount (until it answers)" "$r"
            timed "read all, first after mount" "$c" "$r" readall
        done
        printf '.' >&2
    done
    echo >&2
    # The daemons' memory after all that, for the record.
    for c in strata fuse-overlayfs; do
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
quick=0 runs= raw= strata=${STRATA:-$repo/target/release/strata} outdir=
orig_args=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift ;;
        --runs=*) runs=${1#--runs=} ;;
        --raw) [ $# -ge 2 ] || die "--raw needs a file"; raw=$2; shift ;;
        --strata) [ $# -ge 2 ] || die "--strata needs a binary"; strata=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$outdir" ] || die "one OUTDIR only"; outdir=$1 ;;
    esac
    shift
done
[ -n "$runs" ] || { if [ $quick = 1 ]; then runs=3; else runs=10; fi; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number, not '$runs'"
[ $quick = 1 ] || [ -n "$outdir" ] || die "usage: $prog [--quick] [--runs N] OUTDIR_OF_TEST_IMAGE (see --help)"
[ -x "$strata" ] || die "no strata binary at $strata: run cargo build --release in $repo, or give --strata BINARY"

if [ "$(id -u)" -eq 0 ]; then
    user=${STRATA_BENCH_USER:-strata-demo}
    id "$user" >/dev/null 2>&1 || die "running as root, and there is no user $user to run as (set STRATA_BENCH_USER)"
    bin=/tmp/strata-bench-bin
    report_src=$here/bench_lower_report.py
    install -d -m 755 "$bin"
    install -p -m 755 "$strata" "$bin/strata"
    note "running as root: re-executing as $user with $bin/strata"
    args=()
    skip=0
    for a in "${orig_args[@]}"; do   # drop any --strata, and make paths absolute
        if [ $skip = 1 ]; then skip=0; continue; fi
        case $a in --strata) skip=1; continue ;; esac
        args+=("$a")
    done
    [ -z "$outdir" ] || { for i in "${!args[@]}"; do [ "${args[$i]}" != "$outdir" ] || args[i]=$(realpath "$outdir"); done; }
    # The checkout may sit where the user cannot read (/root is 0700): run copies.
    install -d -m 755 "$bin/scripts"
    install -m 644 "$self" "$report_src" "$here/make-test-image.py" "$here/ocilayout.py" "$bin/scripts/"
    exec setpriv --reuid="$user" --regid="$user" --init-groups --reset-env \
        bash "$bin/scripts/$(basename "$self")" "${args[@]}" --strata "$bin/strata"
fi

for tool in unshare fuse-overlayfs mount umount mountpoint find tar md5sum python3 setpriv; do
    command -v "$tool" >/dev/null || case $tool in
        fuse-overlayfs) die "fuse-overlayfs is not installed (Debian: apt-get install fuse-overlayfs)" ;;
        unshare|mount|umount|mountpoint|setpriv) die "$tool is missing (Debian: apt-get install util-linux)" ;;
        *) die "$tool is missing" ;;
    esac
done
[ -r /dev/fuse ] && [ -w /dev/fuse ] || die "/dev/fuse is not accessible to $(id -un) (needs mode 0666 or a group)"
unshare -Urm true 2>/dev/null || die "unshare -Urm fails: unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=1, or user.max_user_namespaces)"
"$strata" mount --help >/dev/null 2>&1 || die "$strata has no 'mount' command: rebuild it (cargo build --release)"
report=$here/bench_lower_report.py
[ -r "$report" ] || die "missing $report"

# The work directory: on the filesystem of OUTDIR, so that the store, the flat
# copy and the overlay layers share one filesystem.
pick_workdir() {
    local ref=$1 dev d
    dev=$(stat -c %d "$ref")
    for d in "${TMPDIR:-}" /var/tmp /tmp "$(dirname "$ref")" "${HOME:-}"; do
        [ -n "$d" ] && [ -d "$d" ] && [ -w "$d" ] || continue
        [ "$(stat -c %d "$d")" = "$dev" ] || continue
        echo "$d"; return 0
    done
    warn "no writable directory on the filesystem of $ref; using ${TMPDIR:-/var/tmp}"
    echo "${TMPDIR:-/var/tmp}"
}

work=
upid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$upid" ] && kill -0 "$upid" 2>/dev/null; then
        # unshare --fork ignores SIGTERM and SIGINT, and the namespace's init
        # ignores what it has no handler for: SIGKILL unshare, and --kill-child
        # kills that init, and with it every process and mount of the namespace.
        kill -KILL "$upid" 2>/dev/null || true
        wait "$upid" 2>/dev/null || true
    fi
    if [ -n "$work" ] && [ -d "$work" ]; then
        chmod -R u+rwX "$work" 2>/dev/null || true
        rm -rf "$work" || warn "could not remove all of $work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [ $quick = 1 ]; then
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-bench-lower.XXXXXX")
    note "--quick: building the small synthetic test image in $work/img"
    python3 "$here/make-test-image.py" --small "$work/img" >"$work/make-test-image.log" 2>&1 ||
        { cat "$work/make-test-image.log" >&2; die "make-test-image.py --small failed"; }
    outdir=$work/img
else
    outdir=$(realpath "$outdir")
    [ -d "$outdir" ] || die "no directory $outdir"
    work=$(mktemp -d "$(pick_workdir "$outdir")/strata-bench-lower.XXXXXX")
fi
layout=$outdir/oci-20
ovl=$outdir/overlay-20
[ -f "$layout/index.json" ] || die "$layout is not an OCI layout: is $outdir an output of make-test-image.py?"
[ -d "$ovl/layer0" ] || die "no $ovl/layer0: is $outdir an output of make-test-image.py?"
nlayers=0
while [ -d "$ovl/layer$nlayers" ]; do nlayers=$((nlayers + 1)); done
lowers=
for i in $(seq $((nlayers - 1)) -1 0); do lowers+=${lowers:+:}$ovl/layer$i; done

image=test$nlayers
note "importing $layout into a fresh store in $work"
t0=$EPOCHREALTIME
"$strata" --root "$work/store" import -q "oci:$layout:latest" "$image" >/dev/null
t1=$EPOCHREALTIME
import_secs=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
note "import took $import_secs s"

export BL_WORK=$work BL_STRATA=$strata BL_IMAGE=$image BL_RUNS=$runs BL_LAYERS=$nlayers \
    BL_LOWERS=$lowers BL_REPORT=$report BL_OUTDIR=$outdir BL_USER=$(id -un)
# --pid --fork: every daemon started inside dies with the namespace's init;
# --kill-child: and that init dies with unshare.
unshare -Urm --pid --fork --mount-proc --kill-child bash "$self" --_inner &
upid=$!
wait "$upid" || die "the benchmark inside the namespace failed (see above)"
upid=

fs_stat=$(stat -f -c %T "$outdir")
fs_mnt=$(findmnt -n -o FSTYPE -T "$outdir" 2>/dev/null || true)
[ -n "$fs_mnt" ] && [ "$fs_mnt" != "$fs_stat" ] && fs="$fs_stat ($fs_mnt per findmnt)" || fs=$fs_stat
cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
fov=$(fuse-overlayfs --version 2>/dev/null | awk '/fuse-overlayfs/ {print $3; exit}' || true)
entries=$(wc -l <"$work/cmp-kernel-overlay.tree")
bytes=$(du -sb "$work/flat" | cut -f1)
[ -z "$raw" ] || cp "$work/times.tsv" "$raw"

python3 "$report" table "$work/times.tsv" \
    --meta "command=scripts/bench-lower.sh $(printf '%q ' "${orig_args[@]}")" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "machine=$(nproc) CPUs${cpu:+ ($cpu)}, kernel $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)" \
    --meta "filesystem of OUTDIR=$fs" \
    --meta "image=$outdir: $nlayers layers, $entries entries, $((bytes / 1000000)) MB$([ $quick = 1 ] && echo ' (--quick: small synthetic image)')" \
    --meta "versions=strata $("$strata" --version | awk '{print $2}') ($strata, built $(date -u -r "$strata" '+%Y-%m-%d %H:%M UTC'); checkout $repo at $(git -c safe.directory="$repo" -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')), fuse-overlayfs ${fov:-?}; run as $(id -un)" \
    --meta "import=strata import of oci-$nlayers: $import_secs s (once, not part of the table)" \
    ${work:+--rss "$work/rss.tsv"} \
    --differences "$work/differences.txt"
