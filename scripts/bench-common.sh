# shellcheck shell=bash
# What scripts/bench-lower.sh and scripts/bench-write.sh share: sourced by them
# after they set $self (their own realpath) and $prog; not a script of its own.
#
# Outside the namespace: messages, the common options, dropping from root to the
# benchmark user (re-executing copies of the scripts), host checks, the work
# directory and its cleanup, the test image's layers, the strata import, the
# `unshare -Urm --pid` that runs the script's inner part, and the machine
# description. Inside it: finding a FUSE daemon, waiting for it to go, the
# rotating order of the candidates, and tree listings for comparisons.

here=$(dirname "$self")
repo=$(dirname "$here")

die() { echo "$prog: error: $*" >&2; exit 1; }
warn() { echo "$prog: warning: $*" >&2; }
note() { echo "$prog: $*" >&2; }
# The script's header comment, from line 2 to the `set -Eeuo` line.
usage() { sed -n '2,/^set -Eeuo/p' "$self" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# Say where an unexpected failure happened, before set -e exits.
trap 'echo "$prog: error: failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

# --------------------------------------------------------------------------
# Options: --quick, --runs N, --raw FILE, --strata BINARY, -h, and one OUTDIR;
# --layers N too in a script that set $layers (its default) before parsing.
# A script takes more by defining bench_option, called with the remaining
# arguments at an unknown option: it sets bench_took to how many it used (0:
# not its option).
# --------------------------------------------------------------------------
quick=0 runs= raw= strata=${STRATA:-$repo/target/release/strata} outdir=
orig_args=()
bench_took=0
bench_parse_args() {
    orig_args=("$@")
    while [ $# -gt 0 ]; do
        case $1 in
            --quick) quick=1 ;;
            --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift ;;
            --runs=*) runs=${1#--runs=} ;;
            --raw) [ $# -ge 2 ] || die "--raw needs a file"; raw=$2; shift ;;
            --strata) [ $# -ge 2 ] || die "--strata needs a binary"; strata=$2; shift ;;
            --layers|--layers=*)
                [ -n "${layers+set}" ] || die "unknown option $1 (see --help)"
                if [ "$1" = --layers ]; then
                    [ $# -ge 2 ] || die "--layers needs a number"; layers=$2; shift
                else
                    layers=${1#--layers=}
                fi ;;
            -h|--help) usage; exit 0 ;;
            -*)
                bench_took=0
                if declare -F bench_option >/dev/null; then bench_option "$@"; fi
                [ "$bench_took" -gt 0 ] || die "unknown option $1 (see --help)"
                shift "$bench_took"
                continue ;;
            *) [ -z "$outdir" ] || die "one OUTDIR only"; outdir=$1 ;;
        esac
        shift
    done
    [ -n "$runs" ] || { if [ "$quick" = 1 ]; then runs=3; else runs=10; fi; }
    [[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number, not '$runs'"
    [ -z "${layers+set}" ] || [[ $layers =~ ^[1-9][0-9]*$ ]] ||
        die "--layers takes a positive number, not '$layers'"
    [ "$quick" = 1 ] || [ -n "$outdir" ] ||
        die "usage: $prog [--quick] [--runs N] OUTDIR_OF_TEST_IMAGE (see --help)"
    [ -x "$strata" ] ||
        die "no strata binary at $strata: run cargo build --release in $repo, or give --strata BINARY"
    return 0
}

# strata-overlayfs, the drop-in for fuse-overlayfs, is looked for beside the
# strata binary (the same cargo build makes both): its path, or nothing.
bench_sofs_path() {
    local p
    p=$(dirname "$strata")/strata-overlayfs
    [ -x "$p" ] && echo "$p"
    return 0
}

# As root: copy the strata binary (and strata-overlayfs beside it, when there)
# to a fresh /tmp/strata-bench-bin.XXXXXX (its own per run: two benchmarks at once
# must not run each other's binaries), and re-execute a copy of the script (with this file
# and the FILES given, from scripts/) as strata-demo or $STRATA_BENCH_USER. The
# checkout may sit where that user cannot read (/root is 0700). Returns at once
# when not root.
bench_drop_root() {
    [ "$(id -u)" -eq 0 ] || return 0
    local user=${STRATA_BENCH_USER:-strata-demo} bin a i skip=0 args=() f sofs
    id "$user" >/dev/null 2>&1 || die "running as root, and there is no user $user to run as (set STRATA_BENCH_USER)"
    bin=$(mktemp -d /tmp/strata-bench-bin.XXXXXX)
    chmod 755 "$bin"
    install -p -m 755 "$strata" "$bin/strata"
    sofs=$(bench_sofs_path)
    [ -z "$sofs" ] || install -p -m 755 "$sofs" "$bin/strata-overlayfs"
    note "running as root: re-executing as $user with $bin/strata"
    for a in "${orig_args[@]}"; do   # drop any --strata, and make paths absolute
        if [ $skip = 1 ]; then skip=0; continue; fi
        case $a in --strata) skip=1; continue ;; esac
        args+=("$a")
    done
    [ -z "$outdir" ] || { for i in "${!args[@]}"; do [ "${args[$i]}" != "$outdir" ] || args[i]=$(realpath "$outdir"); done; }
    install -d -m 755 "$bin/scripts"
    # The copy removes it on exit (bench_cleanup): the user must own it.
    chown -R "$user:" "$bin"
    install -m 644 "$self" "$here/bench-common.sh" "$bin/scripts/"
    for f in "$@"; do install -m 644 "$here/$f" "$bin/scripts/"; done
    # The copies cannot say which checkout they came from: tell them.
    exec setpriv --reuid="$user" --regid="$user" --init-groups --reset-env \
        env BENCH_CHECKOUT="$(bench_checkout)" BENCH_STRATA_FROM="$(realpath "$strata")" BENCH_BIN_DIR="$bin" \
        bash "$bin/scripts/$(basename "$self")" "${args[@]}" --strata "$bin/strata"
}

# Sets sofs to strata-overlayfs beside $strata and adds it to the array named
# $1 (the candidates), or notes why it is skipped and adds
# "--unavailable strata-overlayfs=WHY" to the array named $2 (report options).
bench_add_sofs() {
    local -n cands_ref=$1 unavail_ref=$2
    local why
    sofs=$(bench_sofs_path)
    if [ -n "$sofs" ] && "$sofs" --version >/dev/null 2>&1; then
        cands_ref+=(strata-overlayfs)
        return 0
    fi
    if [ -n "$sofs" ]; then
        why="\`$sofs --version\` fails"
    else
        why="no strata-overlayfs beside ${BENCH_STRATA_FROM:-$strata} (cargo build --release makes it, src/bin/strata-overlayfs.rs)"
    fi
    note "strata-overlayfs: skipped: $why"
    unavail_ref+=(--unavailable "strata-overlayfs=$why")
    sofs=
}

# Dies unless the TOOLS, /dev/fuse and unprivileged user namespaces are there.
bench_check_host() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || case $tool in
            fuse-overlayfs) die "fuse-overlayfs is not installed (Debian: apt-get install fuse-overlayfs)" ;;
            unshare|mount|umount|mountpoint|setpriv|findmnt) die "$tool is missing (Debian: apt-get install util-linux)" ;;
            *) die "$tool is missing" ;;
        esac
    done
    [ -r /dev/fuse ] && [ -w /dev/fuse ] || die "/dev/fuse is not accessible to $(id -un) (needs mode 0666 or a group)"
    unshare -Urm true 2>/dev/null ||
        die "unshare -Urm fails: unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=1, or user.max_user_namespaces)"
}

# A writable directory on the filesystem of $1 (so that the store, the copies
# and the overlay layers share one filesystem).
bench_pick_workdir() {
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

# On exit: kill the namespace (if still running), remove $work and every
# directory in bench_rm. The outer part installs it (bench_install_cleanup).
work=
upid=
bench_rm=()
# The copy of the binaries that bench_drop_root made for this run: the script it
# re-executed removes it; the scripts that one runs must not.
bench_bin_dir=${BENCH_BIN_DIR:-}
unset BENCH_BIN_DIR
bench_cleanup() {
    local rc=$? d
    trap - EXIT INT TERM HUP
    if [ -n "$upid" ] && kill -0 "$upid" 2>/dev/null; then
        # unshare --fork ignores SIGTERM and SIGINT, and the namespace's init
        # ignores what it has no handler for: SIGKILL unshare, and --kill-child
        # kills that init, and with it every process and mount of the namespace.
        kill -KILL "$upid" 2>/dev/null || true
        wait "$upid" 2>/dev/null || true
    fi
    for d in "$work" "${bench_rm[@]}" "$bench_bin_dir"; do
        if [ -n "$d" ] && [ -d "$d" ]; then
            chmod -R u+rwX "$d" 2>/dev/null || true
            rm -rf "$d" || warn "could not remove all of $d"
        fi
    done
    exit "$rc"
}
bench_install_cleanup() {
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

# Makes $work (a fresh temporary directory named after $prog) and finds the
# test image's NLAYERS-layer form: sets outdir, layout (oci-N), ovl
# (overlay-N), nlayers, and lowers (ovl/layerN-1:...:ovl/layer0, top first).
# With --quick, builds the small synthetic image in $work/img first.
bench_setup_image() {
    local want=$1 i
    if [ "$quick" = 1 ]; then
        work=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-$prog.XXXXXX")
        note "--quick: building the small synthetic test image in $work/img"
        python3 "$here/make-test-image.py" --small "$work/img" >"$work/make-test-image.log" 2>&1 ||
            { cat "$work/make-test-image.log" >&2; die "make-test-image.py --small failed"; }
        outdir=$work/img
    else
        outdir=$(realpath "$outdir")
        [ -d "$outdir" ] || die "no directory $outdir"
        work=$(mktemp -d "$(bench_pick_workdir "$outdir")/strata-$prog.XXXXXX")
    fi
    layout=$outdir/oci-$want
    ovl=$outdir/overlay-$want
    [ -f "$layout/index.json" ] || die "$layout is not an OCI layout: is $outdir an output of make-test-image.py?"
    [ -d "$ovl/layer0" ] || die "no $ovl/layer0: is $outdir an output of make-test-image.py?"
    nlayers=0
    while [ -d "$ovl/layer$nlayers" ]; do nlayers=$((nlayers + 1)); done
    lowers=
    for i in $(seq $((nlayers - 1)) -1 0); do lowers+=${lowers:+:}$ovl/layer$i; done
}

# Imports $layout into a fresh store $work/store as test$nlayers: sets image
# and import_secs.
bench_import() {
    local t0 t1
    image=test$nlayers
    note "importing $layout into a fresh store in $work"
    t0=$EPOCHREALTIME
    "$strata" --root "$work/store" import -q "oci:$layout:latest" "$image" >/dev/null
    t1=$EPOCHREALTIME
    import_secs=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    note "import took $import_secs s"
}

# Runs "$self --_inner" as root of a new user, mount and pid namespace, and
# waits for it. --pid --fork: every daemon started inside dies with the
# namespace's init; --kill-child: and that init dies with unshare.
bench_run_inner() {
    unshare -Urm --pid --fork --mount-proc --kill-child bash "$self" --_inner &
    upid=$!
    wait "$upid" || die "the benchmark inside the namespace failed (see above)"
    upid=
}

# "ext4", or "fuseblk (ext4 per findmnt)" when they disagree: the filesystem of $1.
bench_fs() {
    local st mnt
    st=$(stat -f -c %T "$1")
    mnt=$(findmnt -n -o FSTYPE -T "$1" 2>/dev/null || true)
    if [ -n "$mnt" ] && [ "$mnt" != "$st" ]; then echo "$st ($mnt per findmnt)"; else echo "$st"; fi
}

# One line on the machine: CPUs, model, kernel, load.
bench_machine() {
    local cpu
    cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
    echo "$(nproc) CPUs${cpu:+ ($cpu)}, kernel $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
}

# "checkout DIR at COMMIT": where the scripts come from.
bench_checkout() {
    echo "checkout $repo at $(git -c safe.directory="$repo" -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
}

# Versions of strata (and where it came from), strata-overlayfs and fuse-overlayfs.
bench_versions() {
    local fov sov=
    fov=$(fuse-overlayfs --version 2>/dev/null | awk '/fuse-overlayfs/ {print $3; exit}' || true)
    [ -z "${sofs:-}" ] || sov=", strata-overlayfs $("$sofs" --version | awk '{print $2}') ($sofs)"
    echo "strata $("$strata" --version | awk '{print $2}') ($strata${BENCH_STRATA_FROM:+, a copy of $BENCH_STRATA_FROM}, built $(date -u -r "$strata" '+%Y-%m-%d %H:%M UTC'); ${BENCH_CHECKOUT:-$(bench_checkout)})$sov, fuse-overlayfs ${fov:-?}; run as $(id -un)"
}

# --------------------------------------------------------------------------
# Inside the namespace.
# --------------------------------------------------------------------------

# Mounts with fuse-overlayfs or strata-overlayfs (PROGRAM, its path): PROGRAM
# -o OPTIONS M, its stderr shown only when it fails (Debian's fuse-overlayfs
# 1.10 says "unknown argument ignored: lazytime" on every mount).
bench_mount_overlayfs() {
    local program=$1 opts=$2 m=$3 err
    err=$work/$(basename "$program").err
    "$program" -o "$opts" "$m" 2>"$err" || { cat "$err" >&2; return 1; }
}

# The process serving a FUSE mount: its last argument is the mount point.
bench_daemon_pid() {
    local want=$1 p last
    for p in /proc/[0-9]*; do
        [ -r "$p/cmdline" ] || continue
        last=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | tail -n 1) || continue
        if [ "$last" = "$want" ]; then echo "${p#/proc/}"; return 0; fi
    done
    return 1
}

# Waits (up to 5 s) for process PID, the daemon of candidate NAME, to be gone
# after its unmount, so that the next measurement does not share the CPUs with
# a dying one.
bench_wait_gone() {
    local pid=$1 name=$2 i
    [ -n "$pid" ] || return 0
    for i in $(seq 500); do [ -d "/proc/$pid" ] || break; sleep 0.01; done
    [ -d "/proc/$pid" ] && warn "the $name daemon $pid outlived its mount"
    return 0
}

# Unmounts candidate NAME from MOUNTPOINT (strata with `$strata umount`, the others
# with umount) and waits for its daemon, recorded in DPID[NAME], to be gone.
bench_umount() {
    local c=$1 m=$2
    case $c in
        strata) "$strata" umount "$m" ;;
        *) umount "$m" ;;
    esac
    bench_wait_gone "${DPID[$c]:-}" "$c"
    DPID[$c]=
}

# Sets bench_order to the CANDIDATES rotated by RUN (a number): run by run,
# each candidate takes each place in the order.
bench_order=()
bench_rotate() {
    local r=$1 i n
    shift
    local all=("$@")
    n=$#
    bench_order=()
    for i in $(seq 0 $((n - 1))); do bench_order+=("${all[$(((i + r) % n))]}"); done
}

# The tree as seen through mount point $1: PREFIX.tree, one line per entry
# (name, type, mode, owner, mtime unless BENCH_LISTING_MTIME=0, size and nlink
# of files, link targets); PREFIX.md5, one per regular file; PREFIX.extra,
# xattrs and hardlink groups (bench_lower_report.py extras).
bench_listing() {
    local mnt=$1 prefix=$2 t='\tmtime=%T@'
    [ "${BENCH_LISTING_MTIME:-1}" = 1 ] || t=
    (cd "$mnt" && find . -mindepth 1 -xdev \
        \( -type d -printf "%P\t%y\t%m\t%U:%G$t\n" \) -o \
        \( -type l -printf "%P\t%y\t%m\t%U:%G$t\t-> %l\n" \) -o \
        \( -type f -printf "%P\t%y\t%m\t%U:%G$t\tsize=%s\tnlink=%n\n" \) -o \
        -printf "%P\t%y\t%m\t%U:%G$t\tnlink=%n\n" | LC_ALL=C sort) >"$prefix.tree"
    (cd "$mnt" && find . -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0r md5sum) >"$prefix.md5"
    python3 "$here/bench_lower_report.py" extras "$mnt" >"$prefix.extra"
}

# Dies unless every file under the DIRS is readable here (or the candidates
# would not read the same bytes).
bench_check_readable() {
    local unreadable
    unreadable=$(find "$@" ! -type c ! -type l ! -readable -print 2>&1 | head -n 5 || true)
    [ -z "$unreadable" ] && return 0
    echo "$prog: error: some layer files are not readable by $BENCH_USER inside the" \
         "namespace (run as the owner of $BENCH_OUTDIR, $(stat -c %U "$BENCH_OUTDIR"); as root: STRATA_BENCH_USER=$(stat -c %U "$BENCH_OUTDIR")):" >&2
    echo "$unreadable" | sed 's/^/  /' >&2
    exit 1
}
