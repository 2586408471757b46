//! strata-overlayfs, the drop-in for fuse-overlayfs over plain directories (issue 6).
//!
//! The lower layers are described once (builder entries) and unpacked as
//! overlay-format directories by `support::overlay` (char 0/0 whiteouts,
//! `user.overlay.opaque=y`, `user.*` xattrs). Every script runs as the test user in
//! namespaces of its own (`support::mountns`), where strata-overlayfs, Debian's
//! fuse-overlayfs and kernel overlayfs (with `userxattr`) may all mount, and where the
//! end of the script takes every mount and daemon with it.
//!
//! - Read-only over the same lowers, the three show equal trees; strata-overlayfs also
//!   reads the lower formats only fuse-overlayfs knows (`.wh.NAME` files,
//!   `.wh..wh..opq`, `user.fuseoverlayfs.opaque`) and the owners of
//!   `user.containers.override_stat`.
//! - Read-write, the seeded random operations of `support::overlay::DIFFOPS_PY` run on
//!   strata-overlayfs and on kernel overlayfs, op by op; the upper strata-overlayfs
//!   wrote then reads the same in kernel overlayfs and in strata-overlayfs again.
//! - An upper fuse-overlayfs wrote reads in strata-overlayfs as in fuse-overlayfs, and
//!   the other way round; with `xattr_permissions=2` too (owners and modes in
//!   `user.fuseoverlayfs.override_stat`); `xattr_permissions=1` is refused at mount
//!   without CAP_SYS_ADMIN, saying why.
//! - `mount -t fuse.strata-overlayfs` through mount.fuse3, with the binary on PATH;
//!   without namespaces, through fusermount3; in the foreground with `-f`.
//! - A stack of 100 lower directories mounts and shows the union of its layers.
//! - Options: the ones fuse-overlayfs ignores are accepted, unknown ones and a missing
//!   or absent lowerdir refused, naming what is wrong.
//!
//! STRATA_OVERLAYFS_BIN runs it all against another binary (fuse-overlayfs, to check
//! the harness); STRATA_OVLBIN_SEEDS (`A-B` or `A,B,...`) picks the random sequences
//! and STRATA_OVLBIN_OPS their length.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;
use support::fsdiff::*;
use support::mountns::*;
use support::overlay::*;
use support::*;

// ---------------------------------------------------------------------------------
// The binary and the lowers

/// The binary under test.
fn ovl() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_OVERLAYFS_BIN") {
        return PathBuf::from(p);
    }
    overlayfs_bin()
        .unwrap_or_else(|| {
            panic!("no strata-overlayfs binary in this package (src/bin/strata-overlayfs.rs)")
        })
        .to_path_buf()
}

/// Three layers, bottom first, all owned by 0:0 (which the namespace maps).
fn layers() -> Vec<Vec<Entry>> {
    let bottom = vec![
        Entry::dir("etc"),
        Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        Entry::file("etc/hostname", "bottom\n").xattr("user.comment", "first"),
        Entry::file("etc/group", "root:x:0:\n"),
        Entry::dir("usr/bin"),
        Entry::file("usr/bin/tool", random_bytes(61, 50_000))
            .mode(0o755)
            .xattr("user.bin", [0u8, 7, 255]),
        Entry::hardlink("usr/bin/tool-alias", "usr/bin/tool"),
        Entry::symlink("usr/bin/sh", "tool"),
        Entry::file("usr/bin/su", "setuid").mode(0o4755),
        Entry::dir("usr/lib").xattr("user.dirattr", "lib"),
        Entry::file("usr/lib/libc.so", random_bytes(62, 9_000)),
        Entry::dir("usr/lib/old"),
        Entry::file("usr/lib/old/libold.so", "old"),
        Entry::dir("tmp").mode(0o1777),
        Entry::dir("var/lib/dpkg"),
        Entry::file("var/lib/dpkg/status", "Package: base\n").mode(0o600),
        Entry::dir("opt/gone"),
        Entry::file("opt/gone/child", "hidden by a whiteout above"),
        Entry::dir("srv/a/b/c"),
        Entry::file("srv/a/b/c/deep", "deep"),
        Entry::file("srv/a/top", "a"),
        Entry::dir("dev"),
        Entry::fifo("dev/initctl").mode(0o600),
        Entry::dir("emptydir").mode(0o700),
        Entry::file("empty", ""),
        Entry::file("big", random_bytes(63, 300_000)),
    ];
    let middle = vec![
        Entry::whiteout("etc/group"),
        Entry::file(
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/:/bin/sh\n",
        ),
        Entry::whiteout("opt/gone"),
        Entry::dir("usr/lib").mode(0o711),
        Entry::opaque("usr/lib"),
        Entry::file("usr/lib/libnew.so", random_bytes(64, 7_000)),
        Entry::file("srv/h1", "pair"),
        Entry::hardlink("srv/h2", "srv/h1"),
        Entry::fifo("srv/pipe"),
        Entry::symlink("srv/dangling", "/nowhere/at/all"),
        Entry::file("data/x", "x in the middle\n"),
        Entry::file("data/y", random_bytes(65, 2_000)),
        Entry::file("data/xa", "two xattrs")
            .xattr("user.one", "1")
            .xattr("user.two", "2"),
        Entry::file("data/sub/z", "below an opaque dir"),
    ];
    let top = vec![
        Entry::file("opt/gone/new", "after the whiteout"),
        Entry::file("etc/hostname", "top\n").xattr("user.comment", "second"),
        Entry::file("data/x", "x on top\n").mode(0o640),
        Entry::dir("data/sub").mode(0o750),
        Entry::opaque("data/sub"),
        Entry::file("data/sub/w", "in the opaque dir"),
        Entry::whiteout("never-was"),
        Entry::file("top-only", "top"),
    ];
    vec![bottom, middle, top]
}

fn setup(name: &str) -> (TestEnv, Lowers) {
    let env = TestEnv::new(name);
    let lowers = Lowers::prepare(&env, &layers(), "ovlbin:v1");
    (env, lowers)
}

/// Shell functions over the lowers' prelude (kmount, ...) for these tests.
const OVL_SH: &str = r#"
# prog strata|fuse: the binary of strata-overlayfs or fuse-overlayfs.
prog() { if [ "$1" = strata ]; then echo "$OVL"; else echo fuse-overlayfs; fi; }
# omount MNT [LOWERDIR [OPTIONS]]: strata-overlayfs read-only; it goes to the background.
omount() { mkdir -p "$1"; "$OVL" -o "lowerdir=${2:-$LOWERS}${3:+,$3}" "$1"; wait_mounted "$1"; }
# look kernel|fuse|strata OUT [LOWERDIR]: that one, read-only over LOWERDIR (by default
# the lowers), walked to $W/OUT, unmounted.
look() {
    m="$W/look-$1"
    mkdir -p "$m"
    if [ "$1" = kernel ]; then
        mount -t overlay overlay -o "lowerdir=${3:-$LOWERS},userxattr" "$m"
    else
        "$(prog "$1")" -o "lowerdir=${3:-$LOWERS}" "$m"
        wait_mounted "$m"
    fi
    walk "$m" > "$W/$2"
    umount "$m"
}
# rw_up PROG UPPER WORK MNT: PROG -f, read-write over the lowers (with the options
# in XOPT too, if any), in the background (its pid in PID); rw_down MNT unmounts it
# and waits for it to exit, with status 0.
rw_up() {
    mkdir -p "$2" "$3" "$4"
    "$1" -f -o "lowerdir=$LOWERS,upperdir=$2,workdir=$3${XOPT:+,$XOPT}" "$4" & PID=$!
    wait_mounted "$4"
}
rw_down() {
    umount "$1"
    i=0
    while [ -e /proc/$PID ] && ! grep -q '^State:.*zombie' /proc/$PID/status 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 1000 ] || { echo "pid $PID still runs 10 s after umount $1" >&2; kill -KILL $PID; break; }
        sleep 0.01
    done
    wait $PID || { echo "the daemon of $1 exited with status $?" >&2; return 1; }
}
"#;

/// Runs `script` after the lowers' prelude and OVL_SH in a namespace, traced, and
/// asserts that it succeeded.
fn run(env: &TestEnv, lowers: &Lowers, script: &str) -> Output {
    let full = format!(
        "{}\nOVL='{}'\n{OVL_SH}\nset -x\n{script}",
        lowers.prelude(true),
        ovl().display()
    );
    let out = ns_sh(env, &full, &[]);
    assert_ok_traced(&out);
    out
}

/// assert_ok, with the trace's polling loops left out.
#[track_caller]
fn assert_ok_traced(out: &Output) {
    if out.status.success() {
        return;
    }
    let polling = [
        "+ i=",
        "+ [ ",
        "+ sleep 0.01",
        "+ is_mounted ",
        "+ awk -v m=",
    ];
    let err = stderr(out);
    let trace: Vec<&str> = err
        .lines()
        .filter(|l| !polling.iter().any(|n| l.starts_with(n)))
        .collect();
    panic!(
        "the script failed: {:?}\n--- stdout ---\n{}\n--- stderr (traced) ---\n{}",
        out.status.code(),
        stdout(out),
        trace.join("\n")
    );
}

fn walked(env: &TestEnv, rel: &str) -> Tree {
    let text = fs::read_to_string(env.path(rel))
        .unwrap_or_else(|e| panic!("{}: {e}", env.path(rel).display()));
    if text.trim().is_empty() {
        return Tree::new();
    }
    parse_walk(&text)
}

/// Every difference between two walks: names, types, modes, sizes, contents, link
/// targets, `user.*` xattrs and hardlink groups (diff_trees), owners, device numbers
/// and the link counts of non-directories.
fn differences(a: &Tree, b: &Tree) -> Vec<String> {
    let checks = TreeChecks {
        modes: true,
        xattrs: true,
        link_groups: true,
    };
    let mut d = diff_trees(a, b, checks, |_| false);
    for (p, x) in a.iter().filter(|(p, _)| !p.is_empty()) {
        let Some(y) = b.get(p).filter(|y| y.kind == x.kind) else {
            continue;
        };
        if (x.uid, x.gid) != (y.uid, y.gid) {
            d.push(format!(
                "'{p}': owner: {}:{} vs {}:{}",
                x.uid, x.gid, y.uid, y.gid
            ));
        }
        if x.rdev != y.rdev {
            d.push(format!("'{p}': rdev: {:?} vs {:?}", x.rdev, y.rdev));
        }
        if x.list_error != y.list_error {
            d.push(format!(
                "'{p}': listing: {:?} vs {:?}",
                x.list_error, y.list_error
            ));
        }
        if x.kind != "d" && x.nlink != y.nlink {
            d.push(format!("'{p}': nlink: {} vs {}", x.nlink, y.nlink));
        }
    }
    d
}

/// Asserts that the walk `a` shows what the walk `b` shows; an empty walk fails.
#[track_caller]
fn assert_same(env: &TestEnv, a: &str, b: &str, what: &str) {
    let (ta, tb) = (walked(env, a), walked(env, b));
    assert!(
        ta.len() > 10 && tb.len() > 10,
        "{what}: a walk is (almost) empty: {a} has {} entries, {b} {}",
        ta.len(),
        tb.len()
    );
    assert_no_diffs(
        &format!("{what} ({a} first, {b} second)"),
        &differences(&ta, &tb),
    );
}

// ---------------------------------------------------------------------------------
// Read-only

/// strata-overlayfs, fuse-overlayfs and kernel overlayfs over the same lowers show
/// the same tree.
#[test]
fn three_implementations_show_the_same_tree() {
    let (env, lowers) = setup("ovlbin-three");
    run(
        &env,
        &lowers,
        r#"
look kernel kernel.jsonl
look fuse fuse.jsonl
look strata strata.jsonl
"#,
    );
    let kernel = walked(&env, "kernel.jsonl");
    for p in [
        "etc/passwd",
        "data/sub/w",
        "usr/lib/libnew.so",
        "opt/gone/new",
    ] {
        assert!(kernel.contains_key(p), "kernel overlayfs lacks {p}");
    }
    for p in [
        "etc/group",
        "data/sub/z",
        "usr/lib/old",
        "opt/gone/child",
        "never-was",
    ] {
        assert!(!kernel.contains_key(p), "kernel overlayfs shows {p}");
    }
    assert_same(
        &env,
        "fuse.jsonl",
        "kernel.jsonl",
        "fuse-overlayfs vs kernel overlayfs",
    );
    assert_same(
        &env,
        "strata.jsonl",
        "kernel.jsonl",
        "strata-overlayfs vs kernel overlayfs",
    );
}

/// Rewrites lower dirs (argv: DIR...) in place into the forms fuse-overlayfs and OCI
/// tars use: a char 0/0 whiteout becomes an empty `.wh.NAME` file, and of the
/// directories marked `user.overlay.opaque=y`, in turn, one gets a `.wh..wh..opq`
/// file instead and the next `user.fuseoverlayfs.opaque=y`. Prints what it did.
const REFORMAT_PY: &str = r#"
import os, stat, sys
turn = 0
for top in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(top):
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                os.unlink(p)
                open(os.path.join(dirpath, '.wh.' + n), 'x').close()
                print('whiteout file', p)
        try:
            os.getxattr(dirpath, 'user.overlay.opaque')
        except OSError:
            continue
        os.removexattr(dirpath, 'user.overlay.opaque')
        if turn % 2 == 0:
            open(os.path.join(dirpath, '.wh..wh..opq'), 'x').close()
            print('opaque file', dirpath)
        else:
            os.setxattr(dirpath, 'user.fuseoverlayfs.opaque', b'y')
            print('fuseoverlayfs.opaque', dirpath)
        turn += 1
"#;

/// Lowers in fuse-overlayfs's own forms (`.wh.` files, `.wh..wh..opq`,
/// `user.fuseoverlayfs.opaque`) show through strata-overlayfs what the kernel forms
/// show through kernel overlayfs.
#[test]
fn fuse_overlayfs_lower_formats_read_the_same() {
    let (env, lowers) = setup("ovlbin-formats");
    fs::write(env.path("tools/reformat.py"), REFORMAT_PY).unwrap();
    give_to_user(&env.path("tools/reformat.py"));
    let out = run(
        &env,
        &lowers,
        r#"
look kernel kernel.jsonl
ALT=
for l in $(echo "$LOWERS" | tr ':' ' '); do
    cp -a "$l" "$l.alt"
    ALT="$ALT${ALT:+:}$l.alt"
done
python3 "$T/reformat.py" $(echo "$ALT" | tr ':' ' ')
look fuse fuse.jsonl "$ALT"
look strata strata.jsonl "$ALT"
"#,
    );
    let done = stdout(&out);
    for form in ["whiteout file", "opaque file", "fuseoverlayfs.opaque"] {
        assert!(done.contains(form), "no lower has a {form}:\n{done}");
    }
    assert_same(
        &env,
        "fuse.jsonl",
        "kernel.jsonl",
        "fuse-overlayfs over the fuse forms vs kernel overlayfs",
    );
    assert_same(
        &env,
        "strata.jsonl",
        "kernel.jsonl",
        "strata-overlayfs over the fuse forms vs kernel overlayfs",
    );
}

/// Owners and modes of `user.containers.override_stat` in a lower show through
/// strata-overlayfs (with the test user's subordinate ids mapped).
#[test]
fn override_stat_owners_in_lowers_show() {
    let env = TestEnv::new("ovlbin-override");
    let script = r#"
mkdir -p "$W/l/d" "$W/m"
printf data > "$W/l/d/file"
printf plain > "$W/l/plain"
python3 -c '
import os, sys
os.setxattr(sys.argv[1] + "/d/file", "user.containers.override_stat", b"1000:1001:04750")
os.setxattr(sys.argv[1] + "/d", "user.containers.override_stat", b"33:44:0700")' "$W/l"
"$OVL" -o "lowerdir=$W/l" "$W/m"
wait_mounted "$W/m"
python3 -c '
import os, sys
for p in ("d", "d/file", "plain"):
    st = os.lstat(os.path.join(sys.argv[1], p))
    print(p, st.st_uid, st.st_gid, oct(st.st_mode & 0o7777))
names = sorted(os.listxattr(os.path.join(sys.argv[1], "d/file")))
print("xattrs", names)' "$W/m" > "$W/stat.txt"
umount "$W/m"
"#;
    let script = format!("OVL='{}'\n{script}", ovl().display());
    let Some((out, _)) = ns_sh_subids(&env, &script, &[]) else {
        eprintln!("skipped: the test user has no subordinate ids or no newuidmap");
        return;
    };
    assert_ok_traced(&out);
    let got = fs::read_to_string(env.path("stat.txt")).unwrap();
    assert_eq!(
        got, "d 33 44 0o700\nd/file 1000 1001 0o4750\nplain 0 0 0o644\nxattrs []\n",
        "owner, group and mode through strata-overlayfs (the override xattr must not show)"
    );
}

// ---------------------------------------------------------------------------------
// Read-write: random operations against kernel overlayfs

fn seeds() -> Vec<u64> {
    let spec = std::env::var("STRATA_OVLBIN_SEEDS").unwrap_or_else(|_| "1-12".into());
    let num = |s: &str| -> u64 { s.trim().parse().expect("STRATA_OVLBIN_SEEDS: numbers") };
    match spec.split_once('-') {
        Some((a, b)) => (num(a)..=num(b)).collect(),
        None => spec.split(',').map(num).collect(),
    }
}

fn nops() -> usize {
    std::env::var("STRATA_OVLBIN_OPS").map_or(60, |s| s.parse().expect("STRATA_OVLBIN_OPS"))
}

/// Per seed: strata-overlayfs (-f, upper u1) and kernel overlayfs (upper u2) under
/// the same random ops; both walked; then strata-overlayfs's upper under kernel
/// overlayfs (c) and under strata-overlayfs again (d).
const SEQUENCES_SH: &str = r#"
set +x
for seed in $SEEDS; do
    d="$W/seq$seed"
    mkdir -p "$d"
    : > "$d/errors"
    rw_up "$OVL" "$d/u1" "$d/w1" "$d/m1"
    kmount "$d/u2" "$d/w2" "$d/m2"
    python3 "$T/diffops.py" "$seed" "$NOPS" "$d/m1" "$d/m2" "$d/u2" > "$d/ops.jsonl" 2>> "$d/errors" ||
        echo "the op runner exited with $?" >> "$d/errors"
    timeout -s KILL 30 python3 "$T/walk.py" "$d/m1" > "$d/a.jsonl" 2>> "$d/errors" ||
        echo "the walk of strata-overlayfs failed" >> "$d/errors"
    walk "$d/m2" > "$d/b.jsonl"
    rw_down "$d/m1" 2>> "$d/errors" || echo "unmounting strata-overlayfs failed" >> "$d/errors"
    umount "$d/m2"
    walk "$d/u1" --no-hash > "$d/u1.jsonl"
    walk "$d/u2" --no-hash > "$d/u2.jsonl"
    kmount "$d/u1" "$d/w3" "$d/m3" ro
    walk "$d/m3" > "$d/c.jsonl" 2>> "$d/errors" ||
        echo "the walk of kernel overlayfs over strata-overlayfs's upper failed" >> "$d/errors"
    umount "$d/m3"
    rw_up "$OVL" "$d/u1" "$d/w1" "$d/m1"
    timeout -s KILL 30 python3 "$T/walk.py" "$d/m1" > "$d/d.jsonl" 2>> "$d/errors" ||
        echo "the walk of strata-overlayfs, mounted again, failed" >> "$d/errors"
    rw_down "$d/m1" 2>> "$d/errors" || echo "unmounting strata-overlayfs (again) failed" >> "$d/errors"
done
"#;

/// A kernel overlayfs walk with the st_ino of each non-directory its upper holds
/// taken from the upper (without `index`, two names of a copied-up inode may show two
/// numbers there; see tests/overlay_diff.rs).
fn with_upper_inodes(merged: Tree, upper: &Tree) -> Tree {
    merged
        .into_iter()
        .map(|(p, mut seen)| {
            match upper.get(&p) {
                Some(u) if seen.kind != "d" && u.kind == seen.kind => seen.ino = u.ino,
                _ => {}
            }
            (p, seen)
        })
        .collect()
}

/// What went wrong in one seed's sequence.
fn sequence_problems(env: &TestEnv, seed: u64) -> Vec<String> {
    let dir = format!("seq{seed}");
    let mut problems = Vec::new();
    let errors = fs::read_to_string(env.path(&format!("{dir}/errors"))).unwrap_or_default();
    if !errors.trim().is_empty() {
        problems.push(format!(
            "errors:\n      {}",
            errors.trim_end().replace('\n', "\n      ")
        ));
    }
    let log = fs::read_to_string(env.path(&format!("{dir}/ops.jsonl"))).unwrap_or_default();
    let ops: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    if ops.len() != nops() {
        problems.push(format!("{} of {} ops ran", ops.len(), nops()));
    }
    let differing: Vec<&Value> = ops
        .iter()
        .filter(|op| op["a"] != op["b"] || op["diffs"].as_array().is_some_and(|d| !d.is_empty()))
        .collect();
    if !differing.is_empty() {
        let shown: Vec<String> = differing.iter().take(6).map(|op| op.to_string()).collect();
        problems.push(format!(
            "{} op(s) differ (a: strata-overlayfs, b: kernel overlayfs; the first is the one to look at):\n      {}",
            differing.len(),
            shown.join("\n      ")
        ));
    }
    let seq_tree = |name: &str| walked(env, &format!("{dir}/{name}"));
    let (u1, u2) = (seq_tree("u1.jsonl"), seq_tree("u2.jsonl"));
    let kernel = with_upper_inodes(seq_tree("b.jsonl"), &u2);
    if kernel.len() < 30 {
        problems.push(format!(
            "kernel overlayfs's walk saw only {} entries",
            kernel.len()
        ));
    }
    let sides = [
        ("strata-overlayfs", seq_tree("a.jsonl")),
        (
            "kernel overlayfs over strata-overlayfs's upper",
            with_upper_inodes(seq_tree("c.jsonl"), &u1),
        ),
        (
            "strata-overlayfs mounted again over its upper",
            seq_tree("d.jsonl"),
        ),
    ];
    for (what, tree) in sides {
        let d = differences(&tree, &kernel);
        if !d.is_empty() {
            let shown: Vec<&str> = d.iter().take(25).map(String::as_str).collect();
            problems.push(format!(
                "final trees, {what} (first) vs kernel overlayfs: {} difference(s)\n      {}",
                d.len(),
                shown.join("\n      ")
            ));
        }
    }
    problems
}

/// The random-operation differential test of the write side, against strata-overlayfs.
#[test]
fn random_operations_match_kernel_overlayfs() {
    let (env, lowers) = setup("ovlbin-random");
    let seeds = seeds();
    for batch in seeds.chunks(6) {
        let list: Vec<String> = batch.iter().map(u64::to_string).collect();
        let script = format!(
            "SEEDS='{}'\nNOPS={}\n{SEQUENCES_SH}",
            list.join(" "),
            nops()
        );
        run(&env, &lowers, &script);
    }
    let reports: Vec<String> = seeds
        .iter()
        .filter_map(|&seed| {
            let p = sequence_problems(&env, seed);
            (!p.is_empty()).then(|| {
                format!(
                    "seed {seed} (again alone: STRATA_OVLBIN_SEEDS={seed}):\n  {}",
                    p.join("\n  ")
                )
            })
        })
        .collect();
    assert!(
        reports.is_empty(),
        "strata-overlayfs differs from kernel overlayfs in {} of {} sequence(s) (logs in {}/seqN):\n\n{}",
        reports.len(),
        seeds.len(),
        env.dir.display(),
        reports.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------
// Uppers written by one, read by the other

/// Changes through a mount (the working directory) that leave every upper form:
/// whiteouts of files and directories, opaque directories, copy-ups of data, modes
/// and xattrs, new nodes of each type, a hardlink, renames. Each failure is said.
const EDITS_SH: &str = r#"
e() { "$@" 2>> "$EDIT_LOG" || echo "edit failed: $*" >> "$EDIT_LOG"; }
e sh -c 'echo new > newfile'
e sh -c 'printf more >> etc/passwd'
e rm etc/hostname
e rm -r srv/a
e rm -r data/sub
e mkdir data/sub
e sh -c 'echo again > data/sub/again'
e rm -r usr/lib
e mkdir usr/lib
e touch usr/lib/fresh
e chmod 0600 big
e chmod 0700 var/lib
e python3 -c 'import os
os.setxattr("data/xa", "user.one", b"changed")
os.removexattr("data/xa", "user.two")
os.setxattr("etc", "user.dirx", b"d")'
e ln -s /nowhere newlink
e ln top-only top-link
e mkfifo newfifo
e mv data/y data/y-moved
e mkdir -p n1/n2/n3
e sh -c 'echo deep > n1/n2/n3/f'
e rmdir emptydir
e rm usr/bin/sh
e mkdir usr/bin/sh
"#;

/// Writes EDITS_SH to the tools dir.
fn install_edits(env: &TestEnv) {
    let p = env.path("tools/edits.sh");
    fs::write(&p, EDITS_SH).unwrap();
    give_to_user(&p);
}

/// WRITER (`strata` or `fuse`) makes an upper by the edits and a random sequence
/// (seed 31, ops drawn from kernel overlayfs beside it) and shows it (wrote.jsonl);
/// then READER reads that upper as the top lower (lower.jsonl) and as the upper
/// with a work dir of its own (upper.jsonl), and WRITER reads it again (again.jsonl).
const CROSS_SH: &str = r#"
rw_up "$(prog "$WRITER")" "$W/u" "$W/w" "$W/m"
kmount "$W/ku" "$W/kw" "$W/km"
(cd "$W/m" && EDIT_LOG="$W/edits.err" sh "$T/edits.sh")
(cd "$W/km" && EDIT_LOG=/dev/null sh "$T/edits.sh")
[ -n "$NO_RANDOM" ] || python3 "$T/diffops.py" 31 40 "$W/m" "$W/km" "$W/ku" > "$W/ops.jsonl"
walk "$W/m" > "$W/wrote.jsonl"
rw_down "$W/m"
umount "$W/km"
walk "$W/u" --no-hash > "$W/upper-itself.jsonl"
look "$READER" lower.jsonl "$W/u:$LOWERS"
rw_up "$(prog "$READER")" "$W/u" "$W/w2" "$W/r2"
walk "$W/r2" > "$W/upper.jsonl"
rw_down "$W/r2"
look "$WRITER" again.jsonl "$W/u:$LOWERS"
"#;

fn cross(name: &str, writer: &str, reader: &str) -> TestEnv {
    cross_with(name, writer, reader, "", true)
}

/// `cross`, both read-write mounts with the options `xopt` too; with `random` false,
/// the edits only.
fn cross_with(name: &str, writer: &str, reader: &str, xopt: &str, random: bool) -> TestEnv {
    let (env, lowers) = setup(name);
    install_edits(&env);
    let no_random = if random { "" } else { "1" };
    run(
        &env,
        &lowers,
        &format!(
            "WRITER={writer}\nREADER={reader}\nXOPT='{xopt}'\nNO_RANDOM={no_random}\n{CROSS_SH}"
        ),
    );
    let edits_err = fs::read_to_string(env.path("edits.err")).unwrap_or_default();
    assert!(
        edits_err.trim().is_empty(),
        "edits through the writer ({writer}) failed:\n{edits_err}"
    );
    let wrote = walked(&env, "wrote.jsonl");
    let shows = |p: &str| wrote.get(p).map(|s| s.kind.as_str());
    let want = [
        ("newfile", Some("f")),
        ("data/sub/again", Some("f")),
        ("data/sub/w", None),
        ("etc/hostname", None),
        ("srv/a", None),
        ("usr/lib/libnew.so", None),
        ("usr/lib/fresh", Some("f")),
        ("usr/bin/sh", Some("d")),
        ("n1/n2/n3/f", Some("f")),
    ];
    for (p, kind) in want {
        assert_eq!(shows(p), kind, "'{p}' after the edits through {writer}");
    }
    env
}

/// The forms found in an upper walked as a plain directory: (char 0/0 whiteouts,
/// `.wh.` files, directories marked opaque by an xattr, `.wh..wh..opq` files).
fn upper_forms(upper: &Tree) -> [usize; 4] {
    let name = |p: &str| p.rsplit('/').next().unwrap_or("").to_string();
    let count = |f: &dyn Fn(&str, &Seen) -> bool| upper.iter().filter(|(p, s)| f(p, s)).count();
    [
        count(&|_, s| s.kind == "c" && s.rdev == (0, 0)),
        count(&|p, s| s.kind == "f" && name(p).starts_with(".wh.") && name(p) != ".wh..wh..opq"),
        count(&|_, s| s.kind == "d" && s.xattrs.keys().any(|k| k.ends_with(".opaque"))),
        count(&|p, _| name(p) == ".wh..wh..opq"),
    ]
}

/// An upper fuse-overlayfs wrote reads in strata-overlayfs as in fuse-overlayfs.
#[test]
fn fuse_overlayfs_upper_reads_the_same_in_strata_overlayfs() {
    let env = cross("ovlbin-fuse-upper", "fuse", "strata");
    let [_, _, xattr_opaque, opq_files] = upper_forms(&walked(&env, "upper-itself.jsonl"));
    assert!(
        xattr_opaque > 0 || opq_files > 0,
        "fuse-overlayfs's upper has no opaque directory"
    );
    assert_same(
        &env,
        "again.jsonl",
        "wrote.jsonl",
        "fuse-overlayfs reading its own upper",
    );
    assert_same(
        &env,
        "lower.jsonl",
        "again.jsonl",
        "strata-overlayfs over fuse-overlayfs's upper as a lower, vs fuse-overlayfs",
    );
    assert_same(
        &env,
        "upper.jsonl",
        "again.jsonl",
        "strata-overlayfs over fuse-overlayfs's upper, vs fuse-overlayfs",
    );
}

/// An upper strata-overlayfs wrote reads in fuse-overlayfs as in strata-overlayfs.
#[test]
fn strata_overlayfs_upper_reads_the_same_in_fuse_overlayfs() {
    let env = cross("ovlbin-strata-upper", "strata", "fuse");
    let upper = walked(&env, "upper-itself.jsonl");
    let [char_whiteouts, _, xattr_opaque, _] = upper_forms(&upper);
    assert!(
        char_whiteouts > 0 && xattr_opaque > 0,
        "strata-overlayfs's upper lacks char 0/0 whiteouts ({char_whiteouts}) or opaque directories ({xattr_opaque})"
    );
    assert_same(
        &env,
        "lower.jsonl",
        "wrote.jsonl",
        "fuse-overlayfs over strata-overlayfs's upper as a lower, vs strata-overlayfs",
    );
    assert_same(
        &env,
        "upper.jsonl",
        "wrote.jsonl",
        "fuse-overlayfs over strata-overlayfs's upper, vs strata-overlayfs",
    );
    assert_same(
        &env,
        "again.jsonl",
        "wrote.jsonl",
        "strata-overlayfs reading its own upper as a lower",
    );
}

// ---------------------------------------------------------------------------------
// xattr_permissions: owners and modes in the upper's xattrs, as fuse-overlayfs keeps them

const USER_OVERRIDE: &str = "user.fuseoverlayfs.override_stat";

/// The regular files and directories of an upper walked as a plain directory that
/// lack `want` or carry `not`, the root included (fuse-overlayfs's readers of a
/// xattr_permissions upper fail with ENODATA on any without it). The `.wh..wh..opq`
/// files fuse-overlayfs makes are read as markers, not files, and are left out.
fn missing_overrides(upper: &Tree, want: &str, not: &str) -> Vec<String> {
    upper
        .iter()
        .filter(|(p, s)| (s.kind == "f" || s.kind == "d") && !p.ends_with(".wh..wh..opq"))
        .filter(|(_, s)| !s.xattrs.contains_key(want) || s.xattrs.contains_key(not))
        .map(|(p, s)| format!("'{p}': {:?}", s.xattrs.keys().collect::<Vec<_>>()))
        .collect()
}

/// An upper Debian's fuse-overlayfs wrote with xattr_permissions=2 (every owner and
/// mode in user.fuseoverlayfs.override_stat, the files themselves 0755 on disk)
/// reads in strata-overlayfs as in fuse-overlayfs: as the upper with the same option,
/// and as a lower without it (the mark on its root says which xattr its files carry).
/// The edits only: fuse-overlayfs 1.10 in this mode copies a fifo up as a regular
/// file (on a chmod of the random operations) that it then cannot stat itself (EIO).
#[test]
fn xattr_permissions_2_upper_of_fuse_overlayfs_reads_the_same_in_strata_overlayfs() {
    let env = cross_with(
        "ovlbin-xp2-fuse-upper",
        "fuse",
        "strata",
        "xattr_permissions=2",
        false,
    );
    let upper = walked(&env, "upper-itself.jsonl");
    let missing = missing_overrides(&upper, USER_OVERRIDE, "user.containers.override_stat");
    assert!(
        missing.is_empty(),
        "fuse-overlayfs's upper without {USER_OVERRIDE} (the harness is wrong):\n{}",
        missing.join("\n")
    );
    assert_same(
        &env,
        "again.jsonl",
        "wrote.jsonl",
        "fuse-overlayfs reading its own upper",
    );
    assert_same(
        &env,
        "lower.jsonl",
        "again.jsonl",
        "strata-overlayfs over fuse-overlayfs's xattr_permissions=2 upper as a lower, vs fuse-overlayfs",
    );
    assert_same(
        &env,
        "upper.jsonl",
        "again.jsonl",
        "strata-overlayfs (xattr_permissions=2) over fuse-overlayfs's upper, vs fuse-overlayfs",
    );
}

/// An upper strata-overlayfs wrote with xattr_permissions=2 carries the override on
/// every regular file and directory, its root marked, and reads in fuse-overlayfs
/// (with the same option, and as a lower) as in strata-overlayfs.
#[test]
fn xattr_permissions_2_upper_of_strata_overlayfs_reads_the_same_in_fuse_overlayfs() {
    let env = cross_with(
        "ovlbin-xp2-strata-upper",
        "strata",
        "fuse",
        "xattr_permissions=2",
        true,
    );
    let upper = walked(&env, "upper-itself.jsonl");
    let missing = missing_overrides(&upper, USER_OVERRIDE, "user.containers.override_stat");
    assert!(
        missing.is_empty(),
        "strata-overlayfs's upper has files without {USER_OVERRIDE}, or with the default xattr:\n{}",
        missing.join("\n")
    );
    assert_same(
        &env,
        "lower.jsonl",
        "wrote.jsonl",
        "fuse-overlayfs over strata-overlayfs's xattr_permissions=2 upper as a lower, vs strata-overlayfs",
    );
    assert_same(
        &env,
        "upper.jsonl",
        "wrote.jsonl",
        "fuse-overlayfs (xattr_permissions=2) over strata-overlayfs's upper, vs strata-overlayfs",
    );
    assert_same(
        &env,
        "again.jsonl",
        "wrote.jsonl",
        "strata-overlayfs reading its own upper as a lower",
    );
}

/// xattr_permissions=1 keeps owners in security.fuseoverlayfs.override_stat, which
/// needs CAP_SYS_ADMIN over the upper's filesystem: the test user in its own
/// namespace has it only over filesystems mounted there, so strata-overlayfs refuses
/// at mount, saying why, as fuse-overlayfs does (which fails there too).
#[test]
fn xattr_permissions_1_is_refused_at_mount_without_cap_sys_admin() {
    let (env, lowers) = setup("ovlbin-xp1");
    let script = r#"
mkdir -p "$W/u" "$W/w" "$W/m"
set +e
timeout -s KILL 20 "$OVL" -o "lowerdir=$LOWERS,upperdir=$W/u,workdir=$W/w,xattr_permissions=1" "$W/m" 2> "$W/strata.err"
echo $? > "$W/strata.status"
timeout -s KILL 20 fuse-overlayfs -o "lowerdir=$LOWERS,upperdir=$W/u,workdir=$W/w,xattr_permissions=1" "$W/m" 2> "$W/fuse.err"
echo $? > "$W/fuse.status"
set -e
if is_mounted "$W/m"; then echo mounted > "$W/mounted"; umount "$W/m"; fi
"#;
    run(&env, &lowers, script);
    let read = |n: &str| fs::read_to_string(env.path(n)).unwrap_or_default();
    assert_ne!(
        read("fuse.status").trim(),
        "0",
        "fuse-overlayfs wrote security.* here: the premise is wrong: {}",
        read("fuse.err")
    );
    assert_eq!(read("strata.status").trim(), "1", "{}", read("strata.err"));
    let err = read("strata.err");
    for needle in [
        "security.fuseoverlayfs.override_stat",
        "CAP_SYS_ADMIN",
        "xattr_permissions=2",
    ] {
        assert!(
            err.contains(needle),
            "the refusal does not say '{needle}': {err}"
        );
    }
    assert_eq!(
        err.matches("CAP_SYS_ADMIN").count(),
        1,
        "the reason is said once: {err}"
    );
    assert!(!env.path("mounted").exists(), "it mounted");
}

// ---------------------------------------------------------------------------------
// Ways to mount

/// `mount -t fuse.strata-overlayfs overlay MNT -o ...` runs mount.fuse3, which runs
/// `strata-overlayfs overlay MNT -o ...` from PATH: read-only, then read-write with
/// generic mount options in the string.
#[test]
fn mount_t_fuse_strata_overlayfs_through_mount_fuse3() {
    let (env, lowers) = setup("ovlbin-mount-t");
    run(
        &env,
        &lowers,
        r#"
mkdir -p "$W/bin" "$W/m" "$W/u" "$W/w"
cp "$OVL" "$W/bin/strata-overlayfs"
# mount(8) runs mount.fuse3 with no PATH at all, so its sh takes the default one:
# our directory goes over /usr/local/bin there, in this mount namespace only.
export PATH="$W/bin:$PATH"
mount --bind "$W/bin" /usr/local/bin
look kernel kernel.jsonl
mount -t fuse.strata-overlayfs overlay "$W/m" -o "lowerdir=$LOWERS"
wait_mounted "$W/m"
awk -v m="$W/m" '$5 == m { print }' /proc/self/mountinfo > "$W/mountinfo.txt"
walk "$W/m" > "$W/ro.jsonl"
if touch "$W/m/nope" 2> /dev/null; then echo "read-only mount took a new file" >&2; exit 1; fi
umount "$W/m"
wait_gone "$W/m"
mount -t fuse.strata-overlayfs overlay "$W/m" -o "rw,nodev,nosuid,noatime,lowerdir=$LOWERS,upperdir=$W/u,workdir=$W/w"
wait_mounted "$W/m"
echo written > "$W/m/through-mount"
rm "$W/m/top-only"
umount "$W/m"
wait_gone "$W/m"
cat "$W/u/through-mount" > "$W/upper-file.txt"
stat -c %F "$W/u/top-only" > "$W/upper-whiteout.txt"
"#,
    );
    let mountinfo = fs::read_to_string(env.path("mountinfo.txt")).unwrap();
    assert!(
        mountinfo.contains(" - fuse"),
        "no fuse mount on the mount point:\n{mountinfo}"
    );
    assert_same(
        &env,
        "ro.jsonl",
        "kernel.jsonl",
        "mount -t fuse.strata-overlayfs vs kernel overlayfs",
    );
    assert_eq!(
        fs::read_to_string(env.path("upper-file.txt")).unwrap(),
        "written\n"
    );
    assert_eq!(
        fs::read_to_string(env.path("upper-whiteout.txt"))
            .unwrap()
            .trim(),
        "character special file",
        "the upper's whiteout of a lower file"
    );
}

/// With `-f` it stays in the foreground while mounted and exits 0 after umount; `-d`
/// is accepted as well.
#[test]
fn foreground_runs_until_unmounted() {
    let (env, lowers) = setup("ovlbin-fg");
    run(
        &env,
        &lowers,
        r#"
mkdir -p "$W/m"
"$OVL" -f -d -o "lowerdir=$LOWERS" "$W/m" > /dev/null 2> "$W/debug.txt" & PID=$!
wait_mounted "$W/m"
cat "$W/m/top-only" > "$W/top.txt"
sleep 0.2
[ -e /proc/$PID ] && ! grep -q '^State:.*zombie' /proc/$PID/status || { echo "-f: the process left while mounted" >&2; exit 1; }
rw_down "$W/m"
"#,
    );
    assert_eq!(fs::read_to_string(env.path("top.txt")).unwrap(), "top");
}

/// Outside any namespace of its own, the test user mounts through fusermount3 and
/// unmounts with `fusermount3 -u`.
#[test]
fn fusermount3_mount_without_namespaces() {
    let (env, lowers) = setup("ovlbin-host");
    let mnt = env.mkdir("hm");
    let script = format!(
        r#"
"$OVL" -o "lowerdir={lowers}" "$1"
wait_mounted "$1"
walk "$1" > "$W/host.jsonl"
fusermount3 -u "$1"
wait_gone "$1"
"#,
        lowers = lowers.lowerdir()
    );
    let script = format!("OVL='{}'\n{script}", ovl().display());
    let out = host_sh(&env, &script, &[mnt.as_os_str()]);
    let still = host_mountpoints().contains(&mnt.display().to_string());
    if still {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .status();
    }
    assert_ok_traced(&out);
    assert!(
        !still,
        "{} was still mounted after the script",
        mnt.display()
    );
    run(&env, &lowers, "look kernel kernel.jsonl");
    // Owners differ on purpose: on the host the files show the test user's own uid.
    let (host, kernel) = (walked(&env, "host.jsonl"), walked(&env, "kernel.jsonl"));
    let checks = TreeChecks {
        modes: true,
        xattrs: true,
        link_groups: true,
    };
    assert!(host.len() > 10, "the host walk is (almost) empty");
    assert_no_diffs(
        "strata-overlayfs through fusermount3 vs kernel overlayfs",
        &diff_trees(&host, &kernel, checks, |_| false),
    );
}

// ---------------------------------------------------------------------------------
// Directories read as they are used

const DEEP: &str = "d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/d11/d12";

/// Bottom first: a deep tree; one file with names in three directories (one deep),
/// another whose second name a whiteout above hides; a directory whited out and
/// made again above; an opaque directory over older children.
fn lazy_layers() -> Vec<Vec<Entry>> {
    let bottom = vec![
        Entry::file(format!("{DEEP}/leaf"), "deep leaf"),
        Entry::file("x/a/one", "one node, three names"),
        Entry::hardlink("y/b/two", "x/a/one"),
        Entry::hardlink(format!("{DEEP}/three"), "x/a/one"),
        Entry::file("g/kept", "its other name is whited out"),
        Entry::hardlink("h/hidden", "g/kept"),
        Entry::file("w/gone/f", "under a whiteout"),
        Entry::file("o/sub/old", "under an opaque dir"),
        Entry::file("o/keep", "beside it"),
    ];
    let middle = vec![
        Entry::whiteout("h/hidden"),
        Entry::whiteout("w/gone"),
        Entry::dir("o/sub"),
        Entry::opaque("o/sub"),
        Entry::file("o/sub/new", "in the opaque dir"),
        Entry::file("d1/d2/d3/mid", "in the middle of the deep tree"),
    ];
    let top = vec![
        Entry::file("w/gone/again", "a directory again above its whiteout"),
        Entry::file(format!("{DEEP}/top"), "top"),
    ];
    vec![bottom, middle, top]
}

/// strata-overlayfs reads each lower directory when it is first used: whether a
/// tree is walked from the root or its deep names are looked up first, it shows
/// what kernel overlayfs shows, hardlinks across directories read at different
/// times and their link counts included. (Not compared with fuse-overlayfs here:
/// 1.10 counts only the names of a hardlinked lower file it has looked up.)
#[test]
fn directories_read_as_used_show_what_kernel_overlayfs_shows() {
    let env = TestEnv::new("ovlbin-lazy");
    let layers = lazy_layers();
    let lowers = Lowers::prepare(&env, &layers, "ovlbinlazy:v1");
    run(
        &env,
        &lowers,
        &format!(
            r#"
look kernel kernel.jsonl
look strata strata.jsonl
m="$W/by-name"
omount "$m"
cat "$m/{DEEP}/three" > /dev/null
stat -c %i "$m/y/b/two" "$m/x/a/one" "$m/{DEEP}/three" > "$W/inodes.txt"
stat -c %h "$m/g/kept" > "$W/kept-nlink.txt"
walk "$m" > "$W/strata-by-name.jsonl"
umount "$m"
"#
        ),
    );
    let kernel = walked(&env, "kernel.jsonl");
    assert!(kernel.contains_key(&format!("{DEEP}/three")) && kernel.contains_key("w/gone/again"));
    assert!(!kernel.contains_key("w/gone/f") && !kernel.contains_key("o/sub/old"));
    assert_same(
        &env,
        "strata.jsonl",
        "kernel.jsonl",
        "strata-overlayfs walked",
    );
    assert_same(
        &env,
        "strata-by-name.jsonl",
        "kernel.jsonl",
        "strata-overlayfs looked up by name, then walked",
    );
    let inodes = fs::read_to_string(env.path("inodes.txt")).unwrap();
    let inodes: Vec<&str> = inodes.lines().collect();
    assert!(
        inodes.len() == 3 && inodes.iter().all(|i| *i == inodes[0]),
        "the three names of one lower file are not one inode: {inodes:?}"
    );
    // As kernel overlayfs: the lower's own count, the whited-out name included.
    assert_eq!(
        fs::read_to_string(env.path("kept-nlink.txt")).unwrap(),
        "2\n"
    );
}

/// Mounting reads no lower directory but the roots: one that the namespace may not
/// read warns (and shows empty) when it is first used, not when the lowers mount.
#[test]
fn an_unreadable_lower_directory_warns_when_used_not_at_mount() {
    if !is_root() {
        eprintln!("skipped: only root can make a directory the test user's namespace cannot read");
        return;
    }
    let (env, lowers) = setup("ovlbin-lazy-locked");
    // Owned by the real root, which the test user's namespace does not map: its root
    // has no right to override the modes.
    let extra = env.path("extra");
    fs::create_dir_all(extra.join("locked")).unwrap();
    fs::write(extra.join("locked/secret"), "s").unwrap();
    fs::create_dir_all(extra.join("open")).unwrap();
    fs::write(extra.join("open/f"), "readable\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(extra.join("locked"), fs::Permissions::from_mode(0o700)).unwrap();
    run(
        &env,
        &lowers,
        r#"
mkdir -p "$W/m"
"$OVL" -f -o "lowerdir=$W/extra:$LOWERS" "$W/m" 2> "$W/daemon.err" & PID=$!
wait_mounted "$W/m"
cat "$W/m/open/f" "$W/m/top-only" > "$W/read.txt"
ls -d "$W/m/locked" > /dev/null
cp "$W/daemon.err" "$W/before.txt"
ls -A "$W/m/locked" > "$W/locked.txt"
cp "$W/daemon.err" "$W/after.txt"
rw_down "$W/m"
"#,
    );
    let read = |n: &str| fs::read_to_string(env.path(n)).unwrap();
    assert_eq!(read("read.txt"), "readable\ntop");
    assert_eq!(
        read("before.txt"),
        "",
        "the mount (or a lookup of the directory itself) read the locked directory"
    );
    assert_eq!(read("locked.txt"), "");
    let after = read("after.txt");
    assert!(
        after.contains("warning") && after.contains("locked") && after.contains("shows empty"),
        "no warning when the locked directory was listed: {after:?}"
    );
}

// ---------------------------------------------------------------------------------
// A deep stack

/// 100 layers, bottom first: layer i adds `fI`, `d/fI` and replaces `common`; every
/// third layer whites out the file of the layer just below it; every tenth a file of
/// `d` five layers down; layer 40 makes `d` opaque; layer 70 whites out the
/// directory `sub` of layer 10 and layer 80 makes it again.
fn hundred_layers() -> Vec<Vec<Entry>> {
    (0..100)
        .map(|i| {
            let mut l = vec![
                Entry::file(format!("f{i}"), format!("layer {i}\n")),
                Entry::file("common", format!("common {i}\n")).mode(0o600 + (i % 2) * 0o40),
                Entry::dir("d"),
                Entry::file(format!("d/f{i}"), format!("d {i}")),
            ];
            if i % 3 == 2 {
                l.push(Entry::whiteout(&format!("f{}", i - 1)));
            }
            if i % 10 == 9 {
                l.push(Entry::whiteout(&format!("d/f{}", i - 5)));
            }
            match i {
                40 => l.push(Entry::opaque("d")),
                10 | 80 => l.push(Entry::file("sub/inner", format!("sub of {i}"))),
                70 => l.push(Entry::whiteout("sub")),
                _ => {}
            }
            l
        })
        .collect()
}

#[test]
fn a_hundred_layer_stack_mounts() {
    let env = TestEnv::new("ovlbin-100");
    let layers = hundred_layers();
    let lowers = Lowers::prepare(&env, &layers, "ovlbin100:v1");
    run(
        &env,
        &lowers,
        r#"
look strata strata.jsonl
look fuse fuse.jsonl
"#,
    );
    let model = union_model(&layers);
    assert_eq!(model["common"].sha256, Some(sha256_hex(b"common 99\n")));
    assert!(
        model.contains_key("f99") && !model.contains_key("f97") && !model.contains_key("d/f39")
    );
    assert_eq!(model["sub/inner"].sha256, Some(sha256_hex(b"sub of 80")));
    let checks = Checks {
        ids_mapped_below: Some(1),
        mtimes: false,
        contents: true,
        links: false,
    };
    assert_no_diffs(
        "fuse-overlayfs over 100 layers vs the union of the layers",
        &diff_model(&walked(&env, "fuse.jsonl"), &model, checks),
    );
    assert_no_diffs(
        "strata-overlayfs over 100 layers vs the union of the layers",
        &diff_model(&walked(&env, "strata.jsonl"), &model, checks),
    );
}

// ---------------------------------------------------------------------------------
// Options

/// The options fuse-overlayfs takes and ignores, and generic mount options, are
/// accepted (read-only and read-write).
#[test]
fn ignored_options_are_accepted() {
    let (env, lowers) = setup("ovlbin-opts-ok");
    run(
        &env,
        &lowers,
        r#"
for opts in timeout=1 threaded=1 fast_ino=1 writeback=1 noxattrs=0 \
    rw,dev,suid,exec,atime ro,nodev,nosuid,noexec,noatime relatime,timeout=0,threaded=0; do
    omount "$W/m" "$LOWERS" "$opts"
    cat "$W/m/top-only" > /dev/null
    umount "$W/m"
    wait_gone "$W/m"
done
rw_up "$OVL" "$W/u" "$W/w" "$W/m"
echo x > "$W/m/x"
rw_down "$W/m"
mkdir -p "$W/m"
"$OVL" -o "lowerdir=$LOWERS,upperdir=$W/u,workdir=$W/w,timeout=1,threaded=1,fast_ino=1,writeback=1,rw,nodev,nosuid,noatime" "$W/m"
wait_mounted "$W/m"
echo y > "$W/m/y"
cat "$W/m/x" "$W/m/y" > "$W/xy.txt"
umount "$W/m"
"#,
    );
    assert_eq!(fs::read_to_string(env.path("xy.txt")).unwrap(), "x\ny\n");
}

#[test]
fn presentation_options_change_what_shows() {
    let (env, lowers) = setup("ovlbin-shown");
    run(
        &env,
        &lowers,
        r#"
show() { stat -c '%u:%g %h' "$W/m/etc/hostname" "$W/m/usr/bin"; }
omount "$W/m" "$LOWERS"
show > "$W/plain.txt"
umount "$W/m"; wait_gone "$W/m"
# Stored owner 0 is in no range: the overflow id, as the kernel shows unmapped ids.
omount "$W/m" "$LOWERS" "uidmapping=1:5:1,gidmapping=1:5:1,static_nlink"
show > "$W/mapped.txt"
umount "$W/m"; wait_gone "$W/m"
omount "$W/m" "$LOWERS" "uidmapping=1:5:1,squash_to_root,noxattrs=1"
show > "$W/squashed.txt"
python3 -c '
import os, sys
try:
    os.listxattr(sys.argv[1])
    print("listed")
except OSError as e:
    print(os.strerror(e.errno))' "$W/m/etc/hostname" > "$W/noxattrs.txt"
umount "$W/m"
"#,
    );
    let read = |n: &str| fs::read_to_string(env.path(n)).unwrap();
    let plain = read("plain.txt");
    let usr_bin_nlink = plain.lines().nth(1).unwrap().split(' ').nth(1).unwrap();
    assert_ne!(usr_bin_nlink, "1", "usr/bin has subdirectories? {plain}");
    assert!(
        plain.starts_with(
            "0:0 1
0:0 "
        ),
        "{plain}"
    );
    assert_eq!(
        read("mapped.txt"),
        "65534:65534 1
65534:65534 1
"
    );
    assert!(
        read("squashed.txt").starts_with(
            "0:0 1
0:0 "
        ),
        "{}",
        read("squashed.txt")
    );
    assert_eq!(read("noxattrs.txt").trim(), "Operation not supported");
}

/// uidmapping and gidmapping read as fuse-overlayfs reads them, STORED:SHOWN:COUNT
/// (podman's `--userns=keep-id` depends on it), compared with fuse-overlayfs itself
/// in a namespace with the test user's subordinate ids, where the shown ids exist;
/// podman's leading colon (`:0:7:1`) is taken too.
#[test]
fn id_mappings_show_as_in_fuse_overlayfs() {
    let env = TestEnv::new("ovlbin-idmap");
    let script = r#"
mkdir -p "$W/l/d" "$W/ms" "$W/mf"
printf data > "$W/l/d/file"
chown 9:9 "$W/l/d/file"
opts="lowerdir=$W/l,uidmapping=:0:7:1:9:3:1,gidmapping=:0:8:1:9:4:1"
"$OVL" -o "$opts" "$W/ms"
fuse-overlayfs -o "$opts" "$W/mf" 2>/dev/null
wait_mounted "$W/ms"; wait_mounted "$W/mf"
for m in ms mf; do stat -c '%n %u:%g' "$W/$m/d" "$W/$m/d/file" | sed "s|$W/$m/||" > "$W/$m.txt"; done
umount "$W/ms"; umount "$W/mf"
"#;
    let script = format!("OVL='{}'\n{script}", ovl().display());
    let Some((out, _)) = ns_sh_subids(&env, &script, &[]) else {
        eprintln!("skipped: the test user has no subordinate ids or no newuidmap");
        return;
    };
    assert_ok_traced(&out);
    let read = |n: &str| fs::read_to_string(env.path(n)).unwrap();
    assert_eq!(
        read("mf.txt"),
        "d 7:8\nd/file 3:4\n",
        "fuse-overlayfs (the premise)"
    );
    assert_eq!(
        read("ms.txt"),
        read("mf.txt"),
        "strata-overlayfs vs fuse-overlayfs"
    );
}

/// Each attempt: its arguments (after the binary), its exit status, its stderr, and
/// whether anything was mounted.
const BAD_OPTIONS_SH: &str = r#"
try() {
    name=$1; shift
    mkdir -p "$W/m"
    set +e
    timeout -s KILL 20 "$OVL" "$@" > "$W/$name.out" 2> "$W/$name.err"
    echo $? > "$W/$name.status"
    set -e
    if is_mounted "$W/m"; then echo mounted > "$W/$name.mounted"; umount "$W/m"; fi
}
try unknown -o "lowerdir=$LOWERS,bogus_option=1" "$W/m"
try unknown-flag -o "lowerdir=$LOWERS,frobnicate" "$W/m"
mkdir -p "$W/u" "$W/w"
try no-lowerdir -o "upperdir=$W/u,workdir=$W/w" "$W/m"
try absent-lowerdir -o "lowerdir=$W/not-a-dir-at-all" "$W/m"
try absent-middle -o "lowerdir=$LOWERS:$W/missing-layer" "$W/m"
"#;

/// Wrong options are refused: an unknown option, a missing lowerdir and a lowerdir
/// that does not exist each exit non-zero with a message that says what is wrong, and
/// mount nothing.
#[test]
fn bad_options_are_refused() {
    let (env, lowers) = setup("ovlbin-opts-bad");
    run(&env, &lowers, BAD_OPTIONS_SH);
    let mut wrong = Vec::new();
    for (name, needle) in [
        ("unknown", "bogus_option"),
        ("unknown-flag", "frobnicate"),
        ("no-lowerdir", "lowerdir"),
        ("absent-lowerdir", "not-a-dir-at-all"),
        ("absent-middle", "missing-layer"),
    ] {
        let read =
            |ext: &str| fs::read_to_string(env.path(&format!("{name}.{ext}"))).unwrap_or_default();
        let (status, err) = (read("status"), read("err"));
        let status = status.trim();
        if status == "0" || status.is_empty() {
            wrong.push(format!("{name}: exit status {status:?}, want non-zero"));
        }
        if status == "137" {
            wrong.push(format!("{name}: still running after 20 s (killed)"));
        }
        if !err.contains(needle) {
            wrong.push(format!("{name}: stderr does not name '{needle}': {err:?}"));
        }
        if env.path(&format!("{name}.mounted")).exists() {
            wrong.push(format!("{name}: it mounted"));
        }
    }
    assert!(wrong.is_empty(), "bad options:\n  {}", wrong.join("\n  "));
}
