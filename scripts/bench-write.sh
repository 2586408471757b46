#!/usr/bin/env bash
# Write side, side by side: strata's FUSE union (over the imported image, and as
# strata-overlayfs over the overlay-format layer directories) beside
# fuse-overlayfs and kernel overlayfs, each mounted read-write over the same image
# layers, in one run.
#
#   scripts/bench-write.sh [--quick] [--runs N] [--files N] [--creates N] [--dirs N]
#                          [--fsync none|syncfs|own] [--uppers DIR] [--layers N]
#                          [--raw FILE] [--strata BINARY] OUTDIR
#
# OUTDIR is an output of scripts/make-test-image.py (its oci-5/ and overlay-5/, or
# with --layers N its oci-N/ and overlay-N/: 5 by default, 20 for the 20-layer one).
# Run it as an unprivileged user; as root it copies the strata binary to
# a fresh /tmp/strata-bench-bin.XXXXXX and re-executes itself as the user strata-demo (or
# $STRATA_BENCH_USER). Run it as the user who built OUTDIR: the files to append
# to must be writable by root of a user namespace, so their owner must be the
# caller (kernel overlayfs and fuse-overlayfs show the overlay-5 files with their
# owners on the host).
#
# What it does:
#  1. imports OUTDIR/oci-5 (oci-N) into a fresh store, in a temporary directory
#     on the filesystem of OUTDIR; the uppers go there too, or under --uppers DIR;
#  2. inside one `unshare -Urm --pid`, so that every mount and every daemon dies
#     with it, picks in the lower view (kernel overlayfs over the layers, no
#     upper) --files regular files with one link to append to, and as many
#     others to delete, at random with a fixed seed;
#  3. after one untimed warm-up run of each candidate (checked like the
#     others; it also brings the lower files into the page cache for all),
#     for each run (--runs, default 10) and each candidate, alternated in a
#     rotating order, mounts over a fresh empty upper U (work dir U.work):
#       strata          strata --root STORE mount --upper U test5 M
#       strata-overlayfs  strata-overlayfs -o lowerdir=L4:...:L0,upperdir=U,workdir=U.work M
#       fuse-overlayfs  fuse-overlayfs -o lowerdir=L4:...:L0,upperdir=U,workdir=U.work M
#       kernel-overlay  mount -t overlay overlay -o lowerdir=L4:...:L0,upperdir=U,
#                       workdir=U.work,userxattr M
#     and times three steps, each on its own:
#       1. append one byte to the --files lower files (default 1000): copy-up
#       2. create --creates small files (default 5000, 100 bytes) in --dirs new
#          directories (default 50)
#       3. delete the other --files lower files: whiteouts
#     After each step, untimed, it checks the step through the mount (the
#     appended files have their new size and byte, the created ones are all
#     there, the deleted ones gone, the mount holds the expected number of
#     entries) and fails, non-zero, if a candidate got anything wrong. After
#     the unmount it counts what the upper holds in overlayfs's format (a
#     warning only). After the first run it compares each candidate's tree
#     with kernel overlayfs's (warnings only);
#  4. prints a markdown table: per step, median (min-max) seconds of each
#     candidate, the ratios strata/kernel-overlay, strata/fuse-overlayfs,
#     strata-overlayfs/kernel-overlay, strata-overlayfs/fuse-overlayfs and
#     fuse-overlayfs/kernel-overlay, and the machine and the filesystem of the
#     uppers. --raw FILE keeps every timing (TSV).
#
# fsync: nothing in the workload calls fsync. --fsync says what the candidates
# and the script sync, the same for all:
#   none    (default) no candidate fsyncs on its own: kernel overlayfs and strata
#           are mounted with `volatile` (without it, each fsyncs every file it
#           copies up), fuse-overlayfs and strata-overlayfs with fsync=0 (1.10
#           never fsyncs a copy-up; strata-overlayfs takes it as volatile). After each
#           step, outside its time, `sync -f M; sync -f U` writes back the
#           mount and the uppers' filesystem, so no step pays for another's
#           write-back.
#   syncfs  the same, but those two syncs are part of each step's time: the
#           time to get the step onto the disk (noisy on a shared machine: it
#           writes back whatever else is dirty on that filesystem).
#   own     each candidate's own policy: no volatile, no fsync=0 (so kernel
#           overlayfs, strata and strata-overlayfs fsync each copied-up file);
#           the syncs as with none.
#
# The uppers are never removed during a run (at the end only): on ext4 without
# a journal, as here, mass creates are several times slower for a minute or so
# after mass deletes, for every candidate. A previous run's cleanup can still
# slow the first runs of the next one: leave a minute between runs.
#
# When `strata mount --help` has no --upper (strata's write side has not
# landed), strata's column says unavailable and the other two still run.
#
# --quick builds the small synthetic image (make-test-image.py --small) in a
# temporary directory instead of using OUTDIR, with 300 files to append to and
# to delete, 1000 to create in 10 dirs, and 3 runs: for CI, about a minute.
# Its timings are printed, never asserted; its checks fail as in a full run.
#
# The strata binary is target/release/strata of this checkout (cargo build
# --release), or --strata BINARY, or $STRATA; strata-overlayfs is the one beside
# it (when it is missing, that candidate is skipped, with a note).
set -Eeuo pipefail

self=$(realpath "$0")
prog=bench-write
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$self")/bench-common.sh"

PAYLOAD_SIZE=100

# --------------------------------------------------------------------------
# The inner part: runs as root of a new user, mount and pid namespace.
# --------------------------------------------------------------------------
inner() {
    # Globals, not locals: the EXIT trap runs after this function returns.
    work=$BW_WORK strata=$BW_STRATA image=$BW_IMAGE runs=$BW_RUNS lowers=$BW_LOWERS
    uppers=$BW_UPPERS fsync=$BW_FSYNC sofs=$BW_SOFS nfiles=$BW_FILES ncreates=$BW_CREATES ndirs=$BW_DIRS
    times=$work/times.tsv report=$here/bench_write_report.py sel=$work/sel
    read -r -a cands <<<"$BW_CANDIDATES"
    cd "$work"
    umask 022

    inner_cleanup() {
        local c
        for c in "${cands[@]}" lower; do
            mountpoint -q "$work/mnt/$c" 2>/dev/null && umount_c "$c" 2>/dev/null || true
        done
    }
    trap inner_cleanup EXIT

    local fo_opts= ko_opts= so_opts=()
    case $fsync in none|syncfs) fo_opts=,fsync=0 ko_opts=,volatile so_opts=(--volatile) ;; esac

    declare -gA DPID=()
    mount_c() {  # candidate upper
        local c=$1 m=$work/mnt/$1 u=$2
        case $c in
            strata) "$strata" --root "$work/store" mount "${so_opts[@]}" --upper "$u" "$image" "$m" ;;
            # The same options for both, fsync=0 with --fsync none or syncfs.
            strata-overlayfs|fuse-overlayfs)
                local program=fuse-overlayfs
                [ "$c" = fuse-overlayfs ] || program=$sofs
                bench_mount_overlayfs "$program" "lowerdir=$lowers,upperdir=$u,workdir=$u.work$fo_opts" "$m" ;;
            kernel-overlay)
                mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$u,workdir=$u.work,userxattr$ko_opts" "$m" ;;
        esac
    }
    umount_c() { bench_umount "$1" "$work/mnt/$1"; }
    # Mounts candidate $1 over upper $2; with a run number $3, records the time.
    timed_mount() {
        local c=$1 u=$2 t0 t1
        # strata makes U.work itself when it is missing; the others need it.
        mkdir "$u"
        [ "$c" = strata ] || mkdir "$u.work"
        t0=$EPOCHREALTIME
        mount_c "$c" "$u" || die "mounting $c over the upper $u failed"
        t1=$EPOCHREALTIME
        mountpoint -q "$work/mnt/$c" || die "$c is not mounted"
        [ "$c" = kernel-overlay ] || DPID[$c]=$(bench_daemon_pid "$work/mnt/$c" || true)
        [ -z "${3:-}" ] || printf 'mount\t%s\t%s\t%s\t%s\n' "$c" "$3" "$t0" "$t1" >>"$times"
    }
    # Writes back what the mount $1 and the uppers' filesystem ($2) hold dirty.
    sync_all() { sync -f "$1" && sync -f "$2"; }

    bench_check_readable "${BW_LAYER_DIRS[@]}"
    mkdir -p "$work/mnt/lower" "$uppers"
    local c
    for c in "${cands[@]}"; do mkdir -p "$work/mnt/$c"; done

    # The files, picked in the lower view: kernel overlayfs without an upper.
    mount -t overlay overlay -o "lowerdir=$lowers,userxattr" "$work/mnt/lower"
    note "choosing the files: $(python3 "$report" select "$work/mnt/lower" "$nfiles" "$ndirs" "$sel")"
    umount "$work/mnt/lower"
    local -a app_rel del_rel dir_rel new_rel
    mapfile -t app_rel < <(cut -f1 "$sel.append")
    mapfile -t del_rel <"$sel.delete"
    local d i j per=$((ncreates / ndirs))
    for i in $(seq 0 $((ndirs - 1))); do
        d=$(printf 'bench-w%02d' "$i")
        dir_rel+=("$d")
        for ((j = 0; j < per; j++)); do new_rel+=("$(printf '%s/f%04d' "$d" "$j")"); done
    done
    local payload
    payload=$(head -c "$PAYLOAD_SIZE" /dev/zero | tr '\0' y)

    # One step: runs "$@" with stderr to a file, timed (with the syncs for
    # --fsync syncfs), then the syncs (otherwise), then the check. Run 0 (the
    # warm-up) is not recorded.
    step() {  # name candidate run upper check-args -- command...
        local s=$1 c=$2 r=$3 u=$4 m=$work/mnt/$2 t0 t1 rc=0 checkargs=() label=$3
        [ "$r" != 0 ] || label="0 (the warm-up)"
        shift 4
        while [ "$1" != -- ]; do checkargs+=("$1"); shift; done
        shift
        t0=$EPOCHREALTIME
        "$@" 2>"$work/step.err" || rc=$?
        [ "$fsync" != syncfs ] || sync_all "$m" "$u" || rc=$?
        t1=$EPOCHREALTIME
        [ "$fsync" = syncfs ] || sync_all "$m" "$u" || rc=$?
        if [ $rc != 0 ]; then
            sed -n '1,5p' "$work/step.err" >&2
            die "$c, run $label: step '$s' failed (status $rc; $(wc -l <"$work/step.err") error lines)"
        fi
        [ "$r" = 0 ] || printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$c" "$r" "$t0" "$t1" >>"$times"
        python3 "$report" check "$s" "$m" "$sel" "${checkargs[@]}" >&2 ||
            die "$c, run $label: the check after step '$s' failed (above): the mount did not do what it was asked"
    }
    # The three workloads. Paths are made before the clock starts; bash
    # builtins, so no process per file.
    do_append() {
        local p fail=0
        for p in "${app_paths[@]}"; do printf x >>"$p" || fail=$((fail + 1)); done
        [ $fail = 0 ] || { echo "$fail appends failed" >&2; return 1; }
    }
    do_create() {
        local p fail=0
        mkdir -- "${dir_paths[@]}" || return 1
        for p in "${new_paths[@]}"; do printf '%s' "$payload" >"$p" || fail=$((fail + 1)); done
        [ $fail = 0 ] || { echo "$fail creates failed" >&2; return 1; }
    }
    do_delete() { rm -- "${del_paths[@]}"; }
    # Sets the paths of candidate $1's mount for the three steps.
    paths_for() {
        local m=$work/mnt/$1
        app_paths=("${app_rel[@]/#/$m/}") new_paths=("${new_rel[@]/#/$m/}")
        dir_paths=("${dir_rel[@]/#/$m/}") del_paths=("${del_rel[@]/#/$m/}")
    }

    # A warm-up run of each candidate, untimed, checked like the others: it
    # shows that each mounts read-write and does the steps before any timing,
    # brings the lower files into the page cache for all, and counts each
    # one's entries before any change (strata shows device nodes that the
    # overlay-format layers lack).
    declare -gA BEFORE=()
    for c in "${cands[@]}"; do
        u=$uppers/warmup-$c
        timed_mount "$c" "$u"
        BEFORE[$c]=$(python3 "$report" count "$work/mnt/$c")
        paths_for "$c"
        step append "$c" 0 "$u" -- do_append
        step create "$c" 0 "$u" --dirs "$ndirs" --creates "$ncreates" --size "$PAYLOAD_SIZE" -- do_create
        step delete "$c" 0 "$u" --total $((BEFORE[$c] + ndirs + ncreates - nfiles)) -- do_delete
        umount_c "$c"
        [ -f "$u/${new_rel[0]}" ] || die "$c: a file created through the mount is not in its upper"
    done
    note "warm-up run done; entries before the changes: $(for c in "${cands[@]}"; do printf '%s %s; ' "$c" "${BEFORE[$c]}"; done)"

    local r m
    note "$runs runs of each of ${cands[*]} (--fsync $fsync)"
    for r in $(seq "$runs"); do
        bench_rotate "$r" "${cands[@]}"
        for c in "${bench_order[@]}"; do
            m=$work/mnt/$c u=$uppers/$c-$r
            paths_for "$c"
            timed_mount "$c" "$u" "$r"
            step append "$c" "$r" "$u" -- do_append
            step create "$c" "$r" "$u" --dirs "$ndirs" --creates "$ncreates" --size "$PAYLOAD_SIZE" -- do_create
            step delete "$c" "$r" "$u" --total $((BEFORE[$c] + ndirs + ncreates - nfiles)) -- do_delete
            if [ "$r" = 1 ]; then BENCH_LISTING_MTIME=0 bench_listing "$m" "$work/cmp-$c"; fi
            if [ "$r" = "$runs" ] && [ -n "${DPID[$c]:-}" ] && [ -r "/proc/${DPID[$c]}/status" ]; then
                printf '%s\t%s\n' "$c" "$(awk '/^VmHWM/ {print $2 " " $3}' "/proc/${DPID[$c]}/status")" >>"$work/rss.tsv"
            fi
            umount_c "$c"
            python3 "$report" check-upper "$c" "$u" "$sel" --dirs "$ndirs" --creates "$ncreates" >>"$work/uppers.tsv"
        done
        printf '.' >&2
    done
    echo >&2
    for c in "${cands[@]}"; do
        [ "$c" != kernel-overlay ] || continue
        python3 "$here/bench_lower_report.py" compare "$c" "$work/cmp-$c" kernel-overlay "$work/cmp-kernel-overlay" \
            | tee -a "$work/differences.txt" >&2
    done
    grep -v "	ok	" "$work/uppers.tsv" | sed "s/^/$prog: warning: upper: /" >&2 || true
    return 0
}

if [ "${1:-}" = --_inner ]; then
    shift
    read -r -a BW_LAYER_DIRS <<<"${BW_LOWERS//:/ }"
    inner
    exit 0
fi

# --------------------------------------------------------------------------
# The outer part.
# --------------------------------------------------------------------------
files= creates= dirs= fsync=none uppers_parent= layers=5
# Options of this script beyond bench-common.sh's.
bench_option() {
    local v
    case $1 in
        --files|--creates|--dirs|--fsync|--uppers)
            [ $# -ge 2 ] || die "$1 needs a value"; v=$2; bench_took=2 ;;
        --files=*|--creates=*|--dirs=*|--fsync=*|--uppers=*) v=${1#*=}; bench_took=1 ;;
        *) return 0 ;;
    esac
    case $1 in
        --files*) files=$v ;;
        --creates*) creates=$v ;;
        --dirs*) dirs=$v ;;
        --fsync*) fsync=$v ;;
        --uppers*) uppers_parent=$v ;;
    esac
}
bench_parse_args "$@"
if [ "$quick" = 1 ]; then : "${files:=300}" "${creates:=1000}" "${dirs:=10}"; fi
: "${files:=1000}" "${creates:=5000}" "${dirs:=50}"
for v in "$files" "$creates" "$dirs"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "--files, --creates and --dirs take positive numbers, not '$v'"
done
[ $((creates % dirs)) = 0 ] || die "--creates ($creates) must be a multiple of --dirs ($dirs)"
[ "$dirs" -le 100 ] || die "--dirs: at most 100"
case $fsync in none|syncfs|own) ;; *) die "--fsync takes none, syncfs or own, not '$fsync'" ;; esac
[ -z "$uppers_parent" ] || uppers_parent=$(realpath "$uppers_parent")
bench_drop_root bench_lower_report.py bench_write_report.py make-test-image.py ocilayout.py
bench_check_host unshare fuse-overlayfs mount umount mountpoint find md5sum python3 setpriv sync df findmnt
if [ -n "$uppers_parent" ]; then
    [ -d "$uppers_parent" ] && [ -w "$uppers_parent" ] || die "--uppers $uppers_parent is not a writable directory"
fi

cands=()
unavailable=()
if "$strata" mount --help 2>/dev/null | grep -q -e '--upper'; then
    cands+=(strata)
else
    why="\`$strata mount --help\` has no --upper: strata's write side has not landed in this build"
    warn "strata: skipped: $why"
    unavailable+=(--unavailable "strata=$why")
fi
bench_add_sofs cands unavailable
cands+=(fuse-overlayfs kernel-overlay)

bench_install_cleanup
bench_setup_image "$layers"
import_note="not imported (strata not measured)"
if [ "${cands[0]}" = strata ]; then
    bench_import
    import_note="strata import of oci-$nlayers: $import_secs s (once, not part of the table)"
fi
if [ -n "$uppers_parent" ]; then
    uppers=$(mktemp -d "$uppers_parent/strata-bench-write-uppers.XXXXXX")
    bench_rm+=("$uppers")
else
    uppers=$work/uppers
    mkdir "$uppers"
fi
uppers_fs=$(bench_fs "$uppers")
uppers_df=$(df -T "$uppers" | awk 'NR == 2 {print $1 " " $2 ", mounted on " $7 ", " int($5 / 1048576) " GB free"}')
note "the uppers of all candidates: $uppers, on $uppers_fs ($uppers_df)"

export BW_WORK=$work BW_STRATA=$strata BW_IMAGE=${image:-} BW_RUNS=$runs BW_LOWERS=$lowers \
    BW_UPPERS=$uppers BW_FSYNC=$fsync BW_FILES=$files BW_CREATES=$creates BW_DIRS=$dirs \
    BW_SOFS=$sofs BW_CANDIDATES="${cands[*]}" BENCH_OUTDIR=$outdir BENCH_USER=$(id -un)
bench_run_inner

[ -z "$raw" ] || cp "$work/times.tsv" "$raw"
case $fsync in
    none) fsync_note="nothing fsynced inside the steps: kernel overlayfs and strata mounted with volatile (else each fsyncs each copied-up file), fuse-overlayfs and strata-overlayfs with fsync=0; after each step, untimed, \`sync -f M; sync -f U\`" ;;
    syncfs) fsync_note="kernel overlayfs and strata mounted with volatile, fuse-overlayfs and strata-overlayfs with fsync=0; each step's time includes \`sync -f M; sync -f U\` (syncfs of the mount, then of the uppers' filesystem)" ;;
    own) fsync_note="each candidate's own: kernel overlayfs fsyncs each copied-up file, strata and strata-overlayfs also fsync each copied-up file, fuse-overlayfs (fsync=1 by default) does not; after each step, untimed, \`sync -f M; sync -f U\`" ;;
esac

python3 "$here/bench_write_report.py" table "$work/times.tsv" \
    --files "$files" --creates "$creates" --dirs "$dirs" \
    --meta "command=scripts/bench-write.sh $(printf '%q ' "${orig_args[@]}")" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "machine=$(bench_machine)" \
    --meta "uppers=on $uppers_fs ($uppers_df), all candidates; lowers on $(bench_fs "$outdir")" \
    --meta "fsync (--fsync $fsync)=$fsync_note" \
    --meta "image=$outdir/oci-$nlayers and overlay-$nlayers: $nlayers layers$([ "$quick" = 1 ] && echo ' (--quick: small synthetic image)')" \
    --meta "versions=$(bench_versions)" \
    --meta "import=$import_note" \
    "${unavailable[@]}" \
    --rss "$work/rss.tsv" --uppers "$work/uppers.tsv" --differences "$work/differences.txt"
