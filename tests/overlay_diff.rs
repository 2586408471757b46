//! strata's writable mount against kernel overlayfs, the oracle (issue 5, "Differential
//! testing").
//!
//! One description of lower layers (files, nested directories, symlinks, fifos,
//! hardlinks, whiteouts, opaque directories, `user.*` xattrs) is imported into strata's
//! store as an image and unpacked as overlay-format directories (see
//! `support::overlay`). In one `unshare -Urm` namespace, strata mounts the image with
//! `--upper U1` on M1 and kernel overlayfs mounts the directories with `upperdir=U2`
//! and `userxattr` on M2. Seeded random sequences of operations run on both; each op's
//! result (ok or errno name) and the state of the paths it touched must match, and so
//! must the final trees (names, types, modes, sizes, contents, link targets, `user.*`
//! xattrs, hardlink groups, link counts of non-directories).
//!
//! Left out of the random sequences on purpose, and tested on their own here:
//! - renaming a directory of a lower: kernel overlayfs with `userxattr` has no
//!   redirect_dir and says EXDEV; strata must do it and keep the lower contents;
//! - any change to a lower file with other hardlinked names: kernel overlayfs without
//!   `index` breaks the link on copy-up (and counts links in the lower); strata keeps
//!   the names linked;
//! - times, except those an explicit utime sets (checked right after that op);
//! - renaming a name over another name of the same inode: that must succeed and do
//!   nothing (as on ext4), but kernel overlayfs says ESTALE once the inode was copied
//!   up; the hardlink test checks strata;
//! - setting `user.overlay.*` xattrs: kernel overlayfs (since 6.7) stores them escaped
//!   and shows them; a test checks that through strata they never change the union.
//!
//! Copy-up keeping st_ino, and hard links made to lower nodes keeping one st_ino, across
//! remounts too, have tests of their own as well. Kernel overlayfs is no oracle for
//! st_ino (without `index`, two names of a copied-up inode may show two numbers), so
//! its hardlink groups are read from its upper directory.
//!
//! STRATA_DIFF_SEEDS picks the sequences (by default 1..=16, 1001..=1012 with the
//! upper check, and 7 for the harness's own check): `N` runs seeds 1..=N, `A-B` seeds
//! A..=B, `A,B,C` those seeds; STRATA_DIFF_OPS the number of ops of each (default 60).
//! A failure names the seed, the first op whose results or touched paths differ (with
//! both sides' state there), and every difference of the final trees.

mod support;

use std::collections::BTreeMap;
use std::fs;

use serde_json::Value;
use support::fsdiff::*;
use support::mountns::*;
use support::overlay::*;
use support::*;

// ---------------------------------------------------------------------------------
// The lower layers

/// Three layers, bottom first. Every file is owned by 0:0, which the test user's
/// namespace maps, so that both mounts show the same owners.
fn layers() -> Vec<Vec<Entry>> {
    let l0 = vec![
        Entry::dir("etc"),
        Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        Entry::file("etc/hostname", "lower\n").xattr("user.comment", "hello"),
        Entry::file("etc/group", "root:x:0:\n"),
        Entry::dir("usr"),
        Entry::dir("usr/bin"),
        Entry::file("usr/bin/tool", random_bytes(1, 100_000))
            .mode(0o755)
            .xattr("user.bin", [0u8, 1, 2, 255]),
        Entry::hardlink("usr/bin/tool2", "usr/bin/tool"),
        Entry::symlink("usr/bin/sh", "tool"),
        Entry::dir("usr/lib").xattr("user.dirattr", "d"),
        Entry::file("usr/lib/libc.so", random_bytes(2, 20_000)),
        Entry::dir("usr/lib/old"),
        Entry::file("usr/lib/old/libold.so", "old"),
        Entry::dir("tmp").mode(0o1777),
        Entry::dir("var"),
        Entry::dir("var/cache"),
        Entry::dir("var/cache/apt"),
        Entry::file("var/cache/apt/pkgcache.bin", random_bytes(3, 5_000)),
        Entry::dir("var/lib"),
        Entry::dir("var/lib/dpkg"),
        Entry::file("var/lib/dpkg/status", "Package: base\n").mode(0o600),
        Entry::dir("opt"),
        Entry::dir("opt/gone"),
        Entry::file("opt/gone/child", "whited out above"),
        Entry::dir("srv"),
        Entry::dir("srv/a"),
        Entry::dir("srv/a/b"),
        Entry::dir("srv/a/b/c"),
        Entry::file("srv/a/b/c/deep", "deep down"),
        Entry::file("srv/a/top", "a's own"),
        Entry::dir("dev"),
        Entry::fifo("dev/initctl").mode(0o600),
        Entry::dir("emptydir").mode(0o700),
        Entry::file("empty", ""),
        Entry::file("big", random_bytes(4, 300_000)),
    ];
    let l1 = vec![
        Entry::dir("etc"),
        Entry::whiteout("etc/group"),
        Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        ),
        Entry::dir("opt"),
        Entry::whiteout("opt/gone"),
        Entry::dir("usr"),
        Entry::dir("usr/lib").mode(0o711),
        Entry::opaque("usr/lib"),
        Entry::file("usr/lib/libnew.so", random_bytes(5, 10_000)),
        Entry::dir("srv"),
        Entry::file("srv/h1", "pair"),
        Entry::hardlink("srv/h2", "srv/h1"),
        Entry::fifo("srv/pipe"),
        Entry::symlink("srv/dangling", "/nowhere/at/all"),
        Entry::dir("var"),
        Entry::dir("var/cache"),
        Entry::whiteout("var/cache/apt"),
        Entry::dir("data"),
        Entry::file("data/x", "x in l1\n"),
        Entry::file("data/y", random_bytes(6, 3_000)),
        Entry::file("data/xa", "with xattrs")
            .xattr("user.one", "1")
            .xattr("user.two", "2"),
        Entry::dir("data/sub"),
        Entry::file("data/sub/z", "z below an opaque dir"),
    ];
    let l2 = vec![
        Entry::dir("opt"),
        Entry::dir("opt/gone"),
        Entry::file("opt/gone/new", "after the whiteout"),
        Entry::dir("etc"),
        Entry::file("etc/hostname", "top\n").xattr("user.comment", "replaced"),
        Entry::dir("data"),
        Entry::file("data/x", "x in l2\n").mode(0o640),
        Entry::dir("data/sub").mode(0o750),
        Entry::opaque("data/sub"),
        Entry::file("data/sub/w", "w in the opaque dir"),
        Entry::file("top-only", "top"),
    ];
    vec![l0, l1, l2]
}

fn prepare(name: &str) -> (TestEnv, Lowers) {
    let env = TestEnv::new(name);
    let lowers = Lowers::prepare(&env, &layers(), "lowers:v1");
    (env, lowers)
}

fn read_work(env: &TestEnv, rel: &str) -> String {
    fs::read_to_string(env.path(rel)).unwrap_or_else(|e| panic!("{}: {e}", env.path(rel).display()))
}

fn walk_file(env: &TestEnv, rel: &str) -> Tree {
    parse_walk(&read_work(env, rel))
}

fn all_checks() -> TreeChecks {
    TreeChecks {
        modes: true,
        xattrs: true,
        link_groups: true,
    }
}

/// diff_trees with every check, plus the link counts of non-directories (kernel
/// overlayfs shows 1 for merged directories, so theirs are left out).
fn tree_diffs(a: &Tree, b: &Tree) -> Vec<String> {
    let mut d = diff_trees(a, b, all_checks(), |_| false);
    for (p, x) in a {
        if let Some(y) = b.get(p)
            && x.kind == y.kind
            && x.kind != "d"
            && x.nlink != y.nlink
        {
            d.push(format!("'{p}': nlink: {} vs {}", x.nlink, y.nlink));
        }
        if let Some(y) = b.get(p)
            && x.list_error != y.list_error
        {
            d.push(format!(
                "'{p}': listing: {:?} vs {:?}",
                x.list_error, y.list_error
            ));
        }
    }
    d
}

// ---------------------------------------------------------------------------------
// Random sequences

/// A kernel overlayfs tree with the st_ino of every name the upper holds replaced by
/// that upper file's own inode number. Without `index`, kernel overlayfs gives a
/// copied-up file its lower st_ino but a hardlink made to it afterwards the upper's,
/// so two names of one inode show two numbers (and after a remount, both the
/// upper's). The layers and the upper share one filesystem, so the numbers stay
/// distinct.
fn kernel_inodes(merged: &Tree, upper: &Tree) -> Tree {
    let mut t = merged.clone();
    for (p, s) in t.iter_mut() {
        if let Some(u) = upper.get(p)
            && s.kind != "d"
            && u.kind == s.kind
        {
            s.ino = u.ino;
        }
    }
    t
}

/// Seeds from STRATA_DIFF_SEEDS (see the module comment), or `default`.
fn seeds(default: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let Ok(spec) = std::env::var("STRATA_DIFF_SEEDS") else {
        return default.collect();
    };
    let num = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("STRATA_DIFF_SEEDS: not a number: {s:?}"))
    };
    if let Some((a, b)) = spec.split_once('-') {
        (num(a)..=num(b)).collect()
    } else if spec.contains(',') {
        spec.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(num)
            .collect()
    } else {
        (1..=num(&spec)).collect()
    }
}

fn ops_per_sequence() -> usize {
    std::env::var("STRATA_DIFF_OPS")
        .ok()
        .map(|s| s.parse().expect("STRATA_DIFF_OPS: a number"))
        .unwrap_or(60)
}

/// What one sequence left.
struct Sequence {
    seed: u64,
    /// One JSON object per op: op, args, a, b (results), diffs.
    ops: Vec<Value>,
    runner_errors: String,
    /// Side A's tree (strata), side B's (kernel overlayfs).
    a: Tree,
    b: Tree,
    /// With the upper check: kernel overlayfs over side A's upper, and side A mounted
    /// again over it.
    kernel_over_a: Option<Tree>,
    a_again: Option<Tree>,
}

#[derive(Clone, Copy)]
struct RunOpts {
    kernel_as_a: bool,
    check_upper: bool,
    /// Before this op, make a file on side A only.
    sabotage_at: Option<usize>,
}

const SEQUENCE_SCRIPT: &str = r#"
for seed in $SEEDS; do
    d="$W/seq$seed"
    mkdir -p "$d"
    amount "$d/u1" "$d/m1"
    kmount "$d/u2" "$d/w2" "$d/m2"
    python3 "$T/diffops.py" "$seed" "$NOPS" "$d/m1" "$d/m2" "$d/u2" $SABOTAGE > "$d/ops.jsonl" 2> "$d/ops.err" ||
        echo "the runner exited with $?" >> "$d/ops.err"
    timeout -s KILL 30 python3 "$T/walk.py" "$d/m1" > "$d/a.jsonl" 2> "$d/walk-a.err" ||
        echo "walk of side A failed" >> "$d/ops.err"
    walk "$d/m2" > "$d/b.jsonl"
    aumount "$d/m1" || echo "unmount of side A failed" >> "$d/ops.err"
    umount "$d/m2"
    walk "$d/u1" --no-hash > "$d/u1.jsonl"
    walk "$d/u2" --no-hash > "$d/u2.jsonl"
    if [ "$CHECK_UPPER" = 1 ]; then
        kmount "$d/u1" "$d/w3" "$d/m3" ro
        walk "$d/m3" > "$d/c.jsonl"
        umount "$d/m3"
        amount "$d/u1" "$d/m1"
        timeout -s KILL 30 python3 "$T/walk.py" "$d/m1" > "$d/d.jsonl" 2>> "$d/walk-a.err" ||
            echo "walk of side A, mounted again, failed" >> "$d/ops.err"
        aumount "$d/m1" || echo "unmount of side A, mounted again, failed" >> "$d/ops.err"
    fi
done
"#;

/// Runs the sequences, eight to a namespace (each namespace has a time limit).
fn run_sequences(env: &TestEnv, lowers: &Lowers, seeds: &[u64], opts: RunOpts) -> Vec<Sequence> {
    let nops = ops_per_sequence();
    let mut out = Vec::new();
    for batch in seeds.chunks(8) {
        let list: Vec<String> = batch.iter().map(u64::to_string).collect();
        let script = format!(
            "{}\nSEEDS='{}'\nNOPS={nops}\nSABOTAGE='{}'\nCHECK_UPPER={}\n{SEQUENCE_SCRIPT}",
            lowers.prelude(opts.kernel_as_a),
            list.join(" "),
            opts.sabotage_at.map(|i| i.to_string()).unwrap_or_default(),
            u8::from(opts.check_upper),
        );
        let run = ns_sh(env, &script, &[]);
        if !run.status.success() {
            // Say where each sequence got to: a hang or a crash shows at its last op.
            let tails: Vec<String> = batch
                .iter()
                .map(|seed| {
                    let log = fs::read_to_string(env.path(&format!("seq{seed}/ops.jsonl")))
                        .unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    let from = lines.len().saturating_sub(3);
                    let errors = fs::read_to_string(env.path(&format!("seq{seed}/ops.err")))
                        .unwrap_or_default();
                    format!(
                        "seed {seed}: {} op(s) logged; the last:\n    {}\n  {}",
                        lines.len(),
                        lines[from..].join("\n    "),
                        errors.trim_end().replace('\n', "\n  ")
                    )
                })
                .collect();
            panic!(
                "the sequences' script failed (seeds {list:?})\n{}\n{}",
                describe(&run),
                tails.join("\n")
            );
        }
        for &seed in batch {
            let dir = format!("seq{seed}");
            let ops = read_work(env, &format!("{dir}/ops.jsonl"))
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            let tree = |name: &str| {
                let text = read_work(env, &format!("{dir}/{name}"));
                if text.trim().is_empty() {
                    Tree::new()
                } else {
                    parse_walk(&text)
                }
            };
            let runner_errors = [
                read_work(env, &format!("{dir}/ops.err")),
                read_work(env, &format!("{dir}/walk-a.err")),
            ]
            .join("");
            let (upper_a, upper_b) = (tree("u1.jsonl"), tree("u2.jsonl"));
            let a = tree("a.jsonl");
            out.push(Sequence {
                seed,
                ops,
                runner_errors,
                a: if opts.kernel_as_a {
                    kernel_inodes(&a, &upper_a)
                } else {
                    a
                },
                b: kernel_inodes(&tree("b.jsonl"), &upper_b),
                kernel_over_a: opts
                    .check_upper
                    .then(|| kernel_inodes(&tree("c.jsonl"), &upper_a)),
                a_again: opts.check_upper.then(|| tree("d.jsonl")),
            });
        }
    }
    out
}

fn show_state(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

/// The ops whose results or touched paths differ, one readable block each.
fn op_mismatches(seq: &Sequence, a_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for op in &seq.ops {
        let diffs = op["diffs"].as_array().cloned().unwrap_or_default();
        if op["a"] == op["b"] && diffs.is_empty() {
            continue;
        }
        let mut text = format!(
            "op #{} {} {}: {a_name} {}, kernel overlayfs {}",
            op["i"],
            op["op"].as_str().unwrap_or("?"),
            show_state(&op["args"]),
            op["a"].as_str().unwrap_or("?"),
            op["b"].as_str().unwrap_or("?"),
        );
        for d in diffs {
            text.push_str(&format!(
                "\n      at '{}': {a_name} {}\n      {:>w$}  kernel {}",
                d["path"].as_str().unwrap_or("?"),
                show_state(&d["a"]),
                "",
                show_state(&d["b"]),
                w = d["path"].as_str().unwrap_or("?").len() + 5,
            ));
        }
        out.push(text);
    }
    out
}

/// Everything that went wrong in one sequence, or nothing.
fn sequence_report(seq: &Sequence, a_name: &str) -> Option<String> {
    let mut parts = Vec::new();
    if !seq.runner_errors.trim().is_empty() {
        parts.push(format!("  runner errors:\n{}", seq.runner_errors));
    }
    let mism = op_mismatches(seq, a_name);
    if !mism.is_empty() {
        let shown: Vec<&str> = mism.iter().take(8).map(String::as_str).collect();
        parts.push(format!(
            "  {} op(s) differ (the first is the one to look at):\n    {}{}",
            mism.len(),
            shown.join("\n    "),
            if mism.len() > 8 { "\n    ..." } else { "" }
        ));
    }
    let mut trees = vec![(
        format!("final trees, {a_name} (first) vs kernel overlayfs"),
        tree_diffs(&seq.a, &seq.b),
    )];
    if let Some(c) = &seq.kernel_over_a {
        trees.push((
            format!("kernel overlayfs over {a_name}'s upper (first) vs kernel overlayfs"),
            tree_diffs(c, &seq.b),
        ));
    }
    if let Some(d) = &seq.a_again {
        trees.push((
            format!("{a_name} mounted again over its upper (first) vs kernel overlayfs"),
            tree_diffs(d, &seq.b),
        ));
    }
    for (what, diffs) in trees {
        if !diffs.is_empty() {
            let shown: Vec<&str> = diffs.iter().take(30).map(String::as_str).collect();
            parts.push(format!(
                "  {what}: {} difference(s)\n    {}",
                diffs.len(),
                shown.join("\n    ")
            ));
        }
    }
    (!parts.is_empty()).then(|| {
        format!(
            "seed {} ({} ops; rerun alone with STRATA_DIFF_SEEDS={}-{}):\n{}",
            seq.seed,
            seq.ops.len(),
            seq.seed,
            seq.seed,
            parts.join("\n")
        )
    })
}

#[track_caller]
fn assert_sequences_match(env: &TestEnv, seqs: &[Sequence]) {
    let nops = ops_per_sequence();
    let mut reports = Vec::new();
    for seq in seqs {
        if seq.ops.len() != nops {
            reports.push(format!(
                "seed {}: the runner did {} of {nops} ops\n{}",
                seq.seed,
                seq.ops.len(),
                seq.runner_errors
            ));
        }
        // The comparison means something only if the trees were walked.
        if seq.b.len() < 30 {
            reports.push(format!(
                "seed {}: kernel overlayfs's walk saw only {} entries",
                seq.seed,
                seq.b.len()
            ));
        }
        reports.extend(sequence_report(seq, "strata"));
    }
    assert!(
        reports.is_empty(),
        "strata differs from kernel overlayfs in {} of {} sequence(s) (op logs in {}/seqN/ops.jsonl):\n\n{}",
        reports.len(),
        seqs.len(),
        env.dir.display(),
        reports.join("\n\n")
    );
}

/// Imports the lowers, runs the sequences with strata as side A, asserts they match.
fn strata_matches_kernel(name: &str, seeds: &[u64], check_upper: bool) {
    let (env, lowers) = prepare(name);
    let opts = RunOpts {
        kernel_as_a: false,
        check_upper,
        sabotage_at: None,
    };
    assert_sequences_match(&env, &run_sequences(&env, &lowers, seeds, opts));
}

#[test]
fn random_operations_match_kernel_overlayfs() {
    strata_matches_kernel("diff-random", &seeds(1..=16), false);
}

/// The upper strata wrote, mounted by kernel overlayfs over the same lowers, shows
/// what kernel overlayfs's own upper shows; strata mounted again over it too.
#[test]
fn strata_upper_reads_the_same_in_kernel_overlayfs() {
    strata_matches_kernel("diff-upper", &seeds(1001..=1012), true);
}

/// The harness itself: kernel overlayfs against kernel overlayfs agrees op by op and
/// in the final trees (the runner is deterministic and the comparison has no noise),
/// and a file made on side A only shows, at an op after it and in the final trees.
#[test]
fn the_comparison_agrees_with_itself_and_sees_a_difference() {
    let (env, lowers) = prepare("diff-self");
    let opts = RunOpts {
        kernel_as_a: true,
        check_upper: true,
        sabotage_at: None,
    };
    let same = run_sequences(&env, &lowers, &seeds(7..=7), opts);
    let reports: Vec<String> = same
        .iter()
        .filter_map(|s| sequence_report(s, "kernel A"))
        .collect();
    assert!(
        reports.is_empty(),
        "kernel overlayfs differs from itself:\n{}",
        reports.join("\n\n")
    );
    assert!(same.iter().all(|s| s.ops.len() == ops_per_sequence()));
    let changed = run_sequences(
        &env,
        &lowers,
        &[8],
        RunOpts {
            sabotage_at: Some(30),
            ..opts
        },
    );
    let report = sequence_report(&changed[0], "kernel A")
        .expect("a file made on one side only went unnoticed");
    assert!(
        report.contains("op(s) differ") && report.contains("only-in-a"),
        "no op after it reports the difference:\n{report}"
    );
    assert!(
        report.contains("'only-in-a': only in the first tree"),
        "the final trees' difference is not reported:\n{report}"
    );
}

// ---------------------------------------------------------------------------------
// The differences on purpose

/// Runs `script` (after the lowers' prelude) in a namespace, asserting success. The
/// commands are traced to stderr, and a watchdog kills what still runs after 60 s, so
/// that a hang fails at the command that hung.
fn ns_run(env: &TestEnv, lowers: &Lowers, script: &str) {
    let full = format!("{}\n{WATCHDOG}\nset -x\n{script}", lowers.prelude(false));
    let out = ns_sh(env, &full, &[]);
    if !out.status.success() {
        // The trace without the polling loops of wait_mounted and wait_gone.
        let noise = [
            "+ i=",
            "+ [ ",
            "+ sleep 0.01",
            "+ is_mounted ",
            "+ awk -v m=",
        ];
        let trace: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap_or("(not UTF-8)")
            .lines()
            .filter(|l| !noise.iter().any(|n| l.starts_with(n)))
            .collect();
        panic!(
            "the script failed: {:?}\n--- stdout ---\n{}\n--- stderr (traced) ---\n{}",
            out.status.code(),
            stdout(&out),
            trace.join("\n")
        );
    }
}

/// Kills every process of the namespace but its first (the script's shell) after 60 s.
const WATCHDOG: &str =
    r#"( sleep 60; echo "watchdog: still running after 60 s" >&2; kill -KILL -1 ) &"#;

/// Python that prints, as JSON, {path: [st_ino, st_nlink, content, mode]} for argv[2:]
/// below argv[1] (lstat; "error:ERRNO" when missing). The content of a regular file is
/// its text when short, else "sha256:HEX"; null for other types.
const STAT_PY: &str = r#"
import errno, hashlib, json, os, stat, sys
root, out = sys.argv[1], {}
for p in sys.argv[2:]:
    try:
        st = os.lstat(os.path.join(root, p))
        data = None
        if stat.S_ISREG(st.st_mode):
            with open(os.path.join(root, p), 'rb') as f:
                data = f.read()
            try:
                data = data.decode('ascii') if len(data) <= 64 else None
            except UnicodeDecodeError:
                data = None
            if data is None:
                with open(os.path.join(root, p), 'rb') as f:
                    data = 'sha256:' + hashlib.sha256(f.read()).hexdigest()
        out[p] = [st.st_ino, st.st_nlink, data, oct(stat.S_IMODE(st.st_mode))]
    except OSError as e:
        out[p] = 'error:' + errno.errorcode[e.errno]
print(json.dumps(out))
"#;

/// Imports the lowers and runs `script` with the shell functions `st OUT NAMES...`,
/// which writes STAT_PY's report on NAMES below "$W/m" to "$W/OUT", and `remount_st`.
fn run_with_stat(name: &str, script: &str) -> TestEnv {
    let (env, lowers) = prepare(name);
    let tools = install_overlay_tools(&env);
    fs::write(tools.join("stat.py"), STAT_PY).unwrap();
    give_to_user(&tools);
    let st = r#"
st() { out=$1; shift; python3 "$T/stat.py" "$W/m" "$@" > "$W/$out"; }
# remount_st OUT NAMES...: unmount, mount the same upper again, st, unmount.
remount_st() { sumount "$W/m"; smount "$W/u" "$W/m"; st "$@"; sumount "$W/m"; }
"#;
    ns_run(&env, &lowers, &format!("{st}\n{script}"));
    env
}

fn stat_json(env: &TestEnv, rel: &str) -> BTreeMap<String, Value> {
    serde_json::from_str(&read_work(env, rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// (a) Renaming directories of the lowers through strata (kernel overlayfs with
/// userxattr says EXDEV): the new names show all the old contents, the old names are
/// gone, changes inside the renamed directories work, and all of it survives an
/// unmount and a mount of the same upper.
#[test]
fn renamed_lower_directories_keep_their_contents() {
    let (env, lowers) = prepare("diff-dir-rename");
    ns_run(
        &env,
        &lowers,
        r#"
smount "$W/u" "$W/m"
walk "$W/m" > "$W/before.jsonl"
cd "$W/m"
# A directory merged from two layers, with an opaque subdirectory; a nested one to
# another parent; a lower subdirectory out of a renamed directory.
python3 -c 'import os; os.rename("data", "renamed"); os.rename("srv/a", "usr/moved-a")'
python3 -c 'import os; os.rename("renamed/sub", "sub-out")'
walk "$W/m" > "$W/renamed.jsonl"
kmount "$W/ku" "$W/kw" "$W/km"
python3 -c '
import errno, os, sys
try:
    os.rename(sys.argv[1] + "/data", sys.argv[1] + "/renamed")
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])' "$W/km" > "$W/kernel-rename.txt"
umount "$W/km"
printf more >> renamed/x
printf new > renamed/new
rm renamed/y
mkdir usr/moved-a/b/newdir
walk "$W/m" > "$W/changed.jsonl"
cd /
sumount "$W/m"
smount "$W/u" "$W/m"
walk "$W/m" > "$W/remounted.jsonl"
sumount "$W/m"
"#,
    );
    eprintln!(
        "kernel overlayfs renaming the lower dir 'data': {}",
        read_work(&env, "kernel-rename.txt").trim()
    );
    let before = walk_file(&env, "before.jsonl");
    assert!(before.contains_key("data/sub/w") && before.contains_key("srv/a/b/c/deep"));
    // What the renames should make of the tree before them.
    let moved = |p: &str| -> String {
        for (from, to) in [
            ("data/sub", "sub-out"),
            ("data", "renamed"),
            ("srv/a", "usr/moved-a"),
        ] {
            if p == from {
                return to.to_string();
            }
            if let Some(rest) = p.strip_prefix(&format!("{from}/")) {
                return format!("{to}/{rest}");
            }
        }
        p.to_string()
    };
    let expected: Tree = before
        .iter()
        .map(|(p, s)| {
            let mut s = s.clone();
            s.path = moved(p);
            (s.path.clone(), s)
        })
        .collect();
    let changed_names = [
        "renamed/x",
        "renamed/new",
        "renamed/y",
        "usr/moved-a/b/newdir",
    ];
    for stage in ["renamed.jsonl", "changed.jsonl", "remounted.jsonl"] {
        let got = walk_file(&env, stage);
        let skip = |p: &str| stage != "renamed.jsonl" && changed_names.contains(&p);
        assert_no_diffs(
            &format!("{stage} vs the tree before the renames, renamed"),
            &diff_trees(&got, &expected, all_checks(), skip),
        );
        for gone in ["data", "srv/a", "renamed/sub"] {
            assert!(!got.contains_key(gone), "{stage}: '{gone}' is still there");
        }
        // Lower contents below the opaque dir stay hidden: it moved, opaque.
        assert!(!got.contains_key("sub-out/z"), "{stage}: sub-out/z shows");
        assert!(
            got.contains_key("sub-out/w"),
            "{stage}: sub-out/w is missing"
        );
        if stage != "renamed.jsonl" {
            let x = &got["renamed/x"];
            assert_eq!(x.size, b"x in l2\nmore".len() as u64, "{stage}: renamed/x");
            assert_eq!(
                x.sha256.as_deref(),
                Some(sha256_hex(b"x in l2\nmore").as_str())
            );
            assert_eq!(got["renamed/new"].sha256, Some(sha256_hex(b"new")));
            assert!(!got.contains_key("renamed/y"), "{stage}: renamed/y is back");
            assert_eq!(got["usr/moved-a/b/newdir"].kind, "d");
        }
    }
}

/// (b) Writing to one name of a hardlinked lower file through strata: the other names
/// show the new content and share its st_ino (kernel overlayfs without index breaks
/// the link); so does a chmod; links made and removed afterwards count as on ext4, and
/// renaming one name over another of the same inode succeeds and does nothing; all of
/// it survives an unmount and a mount of the same upper.
#[test]
fn lower_hardlinks_stay_linked_after_copy_up() {
    let env = run_with_stat(
        "diff-hardlinks",
        r#"
names="usr/bin/tool usr/bin/tool2 usr/bin/tool3 srv/h1 srv/h2"
smount "$W/u" "$W/m"
st before.json $names
printf 'appended' >> "$W/m/usr/bin/tool2"
chmod 0600 "$W/m/srv/h1"
st written.json $names
ln "$W/m/usr/bin/tool" "$W/m/usr/bin/tool3"
rm "$W/m/srv/h2"
# Renaming a name over another name of its inode succeeds and changes nothing.
python3 -c '
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1] + "/usr/bin/tool", sys.argv[1] + "/usr/bin/tool3"
r = libc.renameat2(-100, a.encode(), -100, b.encode(), 2)
print("exchange", "ok" if r == 0 else errno.errorcode[ctypes.get_errno()])
try:
    os.rename(a, b)
    print("rename ok")
except OSError as e:
    print("rename", errno.errorcode[e.errno])' "$W/m" > "$W/same-inode.txt"
st linked.json $names
remount_st remounted.json $names
"#,
    );
    assert_eq!(
        read_work(&env, "same-inode.txt"),
        "exchange ok\nrename ok\n",
        "renames between two names of one inode"
    );
    let before = stat_json(&env, "before.json");
    let ino = |m: &BTreeMap<String, Value>, p: &str| m[p][0].as_u64().unwrap_or(0);
    let nlink = |m: &BTreeMap<String, Value>, p: &str| m[p][1].as_u64().unwrap_or(0);
    let data = |m: &BTreeMap<String, Value>, p: &str| m[p][2].as_str().unwrap_or("").to_string();
    let mode = |m: &BTreeMap<String, Value>, p: &str| m[p][3].as_str().unwrap_or("").to_string();
    assert_eq!(ino(&before, "usr/bin/tool"), ino(&before, "usr/bin/tool2"));
    assert_eq!(nlink(&before, "usr/bin/tool"), 2);
    assert_eq!(ino(&before, "srv/h1"), ino(&before, "srv/h2"));
    let mut tool = random_bytes(1, 100_000);
    assert_eq!(
        data(&before, "usr/bin/tool"),
        format!("sha256:{}", sha256_hex(&tool))
    );
    tool.extend_from_slice(b"appended");
    let want_tool = format!("sha256:{}", sha256_hex(&tool));

    for stage in ["written.json", "linked.json", "remounted.json"] {
        let m = stat_json(&env, stage);
        let ctx = |what: &str| format!("{stage}: {what}\n{m:#?}");
        let tool_names: &[&str] = if stage == "written.json" {
            &["usr/bin/tool", "usr/bin/tool2"]
        } else {
            &["usr/bin/tool", "usr/bin/tool2", "usr/bin/tool3"]
        };
        for p in tool_names {
            assert_eq!(data(&m, p), want_tool, "{}", ctx(&format!("{p}'s content")));
            assert_eq!(
                ino(&m, p),
                ino(&before, "usr/bin/tool"),
                "{}",
                ctx(&format!("{p}'s st_ino, as before the copy-up"))
            );
            assert_eq!(
                nlink(&m, p),
                tool_names.len() as u64,
                "{}",
                ctx(&format!("{p}'s nlink"))
            );
        }
        assert_eq!(mode(&m, "srv/h1"), "0o600", "{}", ctx("srv/h1's mode"));
        assert_eq!(data(&m, "srv/h1"), "pair", "{}", ctx("srv/h1's content"));
        if stage == "written.json" {
            assert_eq!(
                mode(&m, "srv/h2"),
                "0o600",
                "{}",
                ctx("srv/h2 follows the chmod")
            );
            assert_eq!(
                ino(&m, "srv/h2"),
                ino(&before, "srv/h1"),
                "{}",
                ctx("srv/h2's st_ino")
            );
            assert_eq!(nlink(&m, "srv/h1"), 2, "{}", ctx("srv/h1's nlink"));
        } else {
            assert_eq!(m["srv/h2"], "error:ENOENT", "{}", ctx("srv/h2 was removed"));
            assert_eq!(
                nlink(&m, "srv/h1"),
                1,
                "{}",
                ctx("srv/h1's nlink after rm of h2")
            );
        }
    }
}

/// Hard links made through the mount to single lower nodes (a file, a symlink, a fifo):
/// every name shows the lower node's st_ino and the link count, before and after an
/// unmount and a mount of the same upper, also after the original name moved away.
#[test]
fn links_made_to_lower_nodes_share_one_inode_across_remounts() {
    let env = run_with_stat(
        "diff-new-links",
        r#"
names="data/x data/x2 usr/bin/sh srv/sh2 dev/initctl dev/initctl2 srv/dangling opt/moved opt/d2"
smount "$W/u" "$W/m"
st before.json $names
python3 -c '
import os, sys
os.chdir(sys.argv[1])
for a, b in (("data/x", "data/x2"), ("usr/bin/sh", "srv/sh2"), ("dev/initctl", "dev/initctl2"),
             ("srv/dangling", "opt/d2")):
    os.link(a, b, follow_symlinks=False)
os.rename("srv/dangling", "opt/moved")' "$W/m"
st linked.json $names
remount_st remounted.json $names
"#,
    );
    let before = stat_json(&env, "before.json");
    for stage in ["linked.json", "remounted.json"] {
        let m = stat_json(&env, stage);
        let mut wrong = Vec::new();
        for (was, names) in [
            ("data/x", ["data/x", "data/x2"]),
            ("usr/bin/sh", ["usr/bin/sh", "srv/sh2"]),
            ("dev/initctl", ["dev/initctl", "dev/initctl2"]),
            ("srv/dangling", ["opt/moved", "opt/d2"]),
        ] {
            for name in names {
                let (ino, nlink) = (m[name][0].as_u64(), m[name][1].as_u64());
                if ino != before[was][0].as_u64() || nlink != Some(2) {
                    wrong.push(format!(
                        "'{name}' (a link of lower '{was}', st_ino {}): st_ino {ino:?}, nlink {nlink:?}",
                        before[was][0]
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{stage}: names of one inode differ:\n  {}",
            wrong.join("\n  ")
        );
    }
}

/// (c) A lower file, symlink or directory keeps its st_ino through copy-up (by a
/// write, a truncate, a chmod, an xattr, a utime, a rename), and after an unmount and
/// a mount of the same upper.
#[test]
fn copy_up_keeps_st_ino_across_remounts() {
    let env = run_with_stat(
        "diff-ino",
        r#"
smount "$W/u" "$W/m"
st before.json data/x etc/passwd big etc/hostname usr/bin/sh data/y var/lib var/lib/dpkg/status top-only usr/lib/libnew.so
cd "$W/m"
printf 'more' >> data/x
: > etc/passwd
chmod 0600 big
python3 -c 'import os; os.setxattr("etc/hostname", "user.new", b"v")'
python3 -c 'import os; os.utime("usr/bin/sh", ns=(1, 2), follow_symlinks=False)'
python3 -c 'import os; os.rename("data/y", "opt/y-moved")'
chmod 0700 var/lib
python3 -c 'import os; os.truncate("var/lib/dpkg/status", 3)'
cd /
st after.json data/x etc/passwd big etc/hostname usr/bin/sh opt/y-moved var/lib var/lib/dpkg/status top-only usr/lib/libnew.so
remount_st remounted.json data/x etc/passwd big etc/hostname usr/bin/sh opt/y-moved var/lib var/lib/dpkg/status top-only usr/lib/libnew.so
"#,
    );
    let before = stat_json(&env, "before.json");
    let ino = |m: &BTreeMap<String, Value>, p: &str| m[p][0].as_u64();
    for stage in ["after.json", "remounted.json"] {
        let m = stat_json(&env, stage);
        let mut wrong = Vec::new();
        for (was, now) in [
            ("data/x", "data/x"),
            ("etc/passwd", "etc/passwd"),
            ("big", "big"),
            ("etc/hostname", "etc/hostname"),
            ("usr/bin/sh", "usr/bin/sh"),
            ("data/y", "opt/y-moved"),
            ("var/lib", "var/lib"),
            ("var/lib/dpkg/status", "var/lib/dpkg/status"),
            ("top-only", "top-only"),
            ("usr/lib/libnew.so", "usr/lib/libnew.so"),
        ] {
            if ino(&m, now).is_none() || ino(&m, now) != ino(&before, was) {
                wrong.push(format!(
                    "'{now}': st_ino {} (was '{was}': {})",
                    m[now], before[was]
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{stage}: copy-up changed st_ino:\n  {}",
            wrong.join("\n  ")
        );
        // The changes are there.
        assert_eq!(m["data/x"][2], "x in l2\nmore", "{stage}");
        assert_eq!(m["etc/passwd"][2], "", "{stage}");
        assert_eq!(m["big"][3], "0o600", "{stage}");
        assert_eq!(m["var/lib/dpkg/status"][2], "Pac", "{stage}");
    }
}

/// Overlay's own xattr names set through strata never change what the union shows:
/// a directory given `user.overlay.opaque=y` keeps showing its lower contents, in
/// strata, in strata mounted again, and in kernel overlayfs over strata's upper.
#[test]
fn overlay_xattr_names_set_through_the_mount_do_not_change_the_union() {
    let (env, lowers) = prepare("diff-ovl-xattr");
    ns_run(
        &env,
        &lowers,
        r#"
smount "$W/u" "$W/m"
ls -A "$W/m/etc" > "$W/before.txt"
python3 -c '
import errno, os, sys
for p in ("etc", "usr/bin", "emptydir"):
    try:
        os.setxattr(os.path.join(sys.argv[1], p), "user.overlay.opaque", b"y")
        print(p, "ok")
    except OSError as e:
        print(p, errno.errorcode[e.errno])' "$W/m" > "$W/setxattr.txt"
touch "$W/m/etc/new"
ls -A "$W/m/etc" > "$W/after.txt"
ls -A "$W/m/usr/bin" > "$W/after-bin.txt"
sumount "$W/m"
smount "$W/u" "$W/m"
ls -A "$W/m/etc" > "$W/remounted.txt"
sumount "$W/m"
kmount "$W/u" "$W/kw" "$W/km" ro
ls -A "$W/km/etc" > "$W/kernel.txt"
ls -A "$W/km/usr/bin" > "$W/kernel-bin.txt"
umount "$W/km"
"#,
    );
    eprintln!(
        "setxattr user.overlay.opaque through strata:\n{}",
        read_work(&env, "setxattr.txt")
    );
    let before = read_work(&env, "before.txt");
    let want = format!("{}new\n", before);
    let mut want_sorted: Vec<&str> = want.lines().collect();
    want_sorted.sort();
    for f in ["after.txt", "remounted.txt", "kernel.txt"] {
        let got = read_work(&env, f);
        let mut got: Vec<&str> = got.lines().collect();
        got.sort();
        assert_eq!(got, want_sorted, "{f}: etc's listing");
    }
    for f in ["after-bin.txt", "kernel-bin.txt"] {
        let got = read_work(&env, f);
        assert!(
            got.lines().any(|l| l == "tool") && got.lines().any(|l| l == "sh"),
            "{f}: usr/bin lost its lower contents:\n{got}"
        );
    }
}
