//! `strata mount` and `strata umount`, run as the unprivileged test user: the mounted
//! tree of multi-layer images against the union of the layers the builder wrote and
//! against `umoci unpack --rootless`, inode numbers and link counts, readdir offsets,
//! parallel readers, symlinks that point out of the image, read-only behaviour, the
//! mount's life cycle, and errors.
//!
//! Mounts are made inside namespaces the test owns (see `support::mountns`), so a
//! failing test leaves nothing mounted; the one test that mounts in the host's mount
//! namespace (through fusermount3) unmounts in a drop guard.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::fsdiff::*;
use support::mountns::*;
use support::*;

// ---------------------------------------------------------------------------------
// Images

/// An OCI layout of `layers` (plain tars: the tests do not measure gzip), imported as
/// NAME; returns the layout.
fn import_layers(env: &TestEnv, layers: &[Vec<Entry>], name: &str) -> Written {
    let blobs = layers.iter().cloned().map(LayerBlob::plain).collect();
    let written = Image::new(blobs)
        .with_ref("v1")
        .write(&env.path(&format!("layout-{}", name.replace(':', "-"))));
    env.import(&format!("oci:{}:v1", written.path()), Some(name));
    written
}

fn long_name(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// Several layers with all that a union must get right: whiteouts of files, of
/// directories and of one name of a hardlink group; opaque directories (by marker, by
/// a marker on a directory the layer only implies, and by a whiteout and a directory
/// of the same name in one layer); files replaced by directories and back; symlinks,
/// devices, fifos, setuid and setgid files, sticky directories, xattrs, long names and
/// link targets, sub-second mtimes, owners the tar gives.
fn rich_layers() -> Vec<Vec<Entry>> {
    let deep_dir = format!("srv/{}", long_name('d', 120));
    let long_file = format!("{deep_dir}/{}", long_name('n', 200));
    let l0 = vec![
        Entry::dir("etc"),
        Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
            .mtime(1_600_000_000)
            .mtime_nsec(5),
        Entry::file("etc/shadow", "root:*:19000::::::\n")
            .mode(0o640)
            .owner(0, 42),
        Entry::file("etc/hostname", "strata\n").xattr("user.comment", "hello"),
        Entry::file("etc/group", "root:x:0:\n"),
        // Owners beyond any subordinate range: no namespace of the test user maps them.
        Entry::file("etc/far", "far").owner(2_000_000, 5),
        Entry::file("etc/fargroup", "far").owner(5, 2_000_000),
        Entry::dir("usr"),
        Entry::dir("usr/bin"),
        Entry::file("usr/bin/busybox", random_bytes(1, 100_000))
            .mode(0o755)
            .xattr("user.bin", [0u8, 1, 2, 255, b'=', b' ']),
        Entry::hardlink("usr/bin/ls", "usr/bin/busybox"),
        Entry::symlink("usr/bin/sh", "busybox"),
        Entry::file("usr/bin/su", random_bytes(2, 3000)).mode(0o4755),
        Entry::file("usr/bin/wall", random_bytes(3, 2000))
            .mode(0o2755)
            .owner(0, 5),
        Entry::dir("usr/lib").xattr("user.dirattr", "d"),
        Entry::file("usr/lib/libc.so", random_bytes(4, 50_000)),
        Entry::dir("usr/lib/old"),
        Entry::file("usr/lib/old/libold.so", "old"),
        Entry::dir("tmp").mode(0o1777),
        Entry::dir("dev"),
        Entry::char_dev("dev/null", 1, 3),
        Entry::char_dev("dev/tty5", 4, 5).mode(0o620).owner(0, 5),
        Entry::block_dev("dev/loop0", 7, 0).owner(0, 6),
        Entry::block_dev("dev/bigdev", 259, 70_000),
        Entry::fifo("dev/initctl").mode(0o600),
        Entry::dir("var"),
        Entry::dir("var/cache"),
        Entry::dir("var/cache/apt"),
        Entry::file("var/cache/apt/pkgcache.bin", random_bytes(5, 10_000)),
        Entry::dir("var/lib")
            .mtime(1_650_000_000)
            .mtime_nsec(999_999_999),
        Entry::dir("var/lib/dpkg"),
        Entry::file("var/lib/dpkg/status", "Package: base\n"),
        Entry::dir("opt"),
        Entry::dir("opt/dir2file"),
        Entry::file("opt/dir2file/child", "gone later"),
        Entry::dir("opt/dir2file/sub"),
        Entry::file("opt/dir2file/sub/deeper", "gone later too"),
        Entry::file("opt/file2dir", "a file first"),
        Entry::symlink("opt/link2dir", "elsewhere"),
        Entry::dir("srv"),
        Entry::dir(&deep_dir),
        Entry::file(&long_file, "a long name\n"),
        Entry::symlink(
            "srv/longlink",
            format!("/opt/{}/target", long_name('t', 150)),
        ),
        Entry::dir("home"),
        Entry::dir("home/user").mode(0o700).owner(1000, 1000),
        Entry::file("home/user/.profile", "export A=1\n")
            .mode(0o600)
            .owner(1000, 1000)
            .mtime(1_234_567_890)
            .mtime_nsec(123_456_789),
        Entry::file("empty", ""),
    ];
    let l1 = vec![
        Entry::dir("etc"),
        Entry::whiteout("etc/shadow"),
        Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .owner(3, 4),
        Entry::dir("var"),
        Entry::whiteout("var/cache"),
        Entry::dir("opt"),
        Entry::file("opt/dir2file", "now a file"),
        Entry::dir("opt/file2dir").mode(0o750),
        Entry::file("opt/file2dir/inside", "inside"),
        Entry::dir("opt/link2dir"),
        Entry::file("opt/link2dir/child", "child of a dir that was a symlink"),
        Entry::dir("usr"),
        Entry::dir("usr/lib").mode(0o711),
        Entry::opaque("usr/lib"),
        Entry::file("usr/lib/libnew.so", random_bytes(6, 20_000)),
        Entry::dir("srv"),
        Entry::file("srv/h1", "pair"),
        Entry::hardlink("srv/h2", "srv/h1"),
        Entry::file("srv/t1", "triple")
            .owner(7, 8)
            .xattr("user.t", "3"),
        Entry::hardlink("srv/t2", "srv/t1"),
        Entry::hardlink("srv/t3", "srv/t1"),
        Entry::file("srv/q1", "first name goes").mode(0o600),
        Entry::hardlink("srv/q2", "srv/q1"),
        Entry::hardlink("srv/q3", "srv/q1"),
        Entry::fifo("srv/pipe"),
        Entry::dir("dev"),
        Entry::whiteout("dev/initctl"),
        // Directories this layer only implies.
        Entry::file("newtop/sub/file", "implied parents"),
        Entry::file("newtop/keep", "keep"),
    ];
    let l2 = vec![
        Entry::dir("srv"),
        Entry::whiteout("srv/h2"),
        Entry::whiteout("srv/t3"),
        Entry::whiteout("srv/q1"),
        Entry::dir("home"),
        Entry::whiteout("home/user"),
        Entry::dir("home/user").mode(0o750).owner(1000, 1000),
        Entry::file("home/user/new", "fresh home").owner(1000, 1000),
        Entry::dir("etc"),
        Entry::file("etc/shadow", "root:!:20000::::::\n").mode(0o600),
        Entry::dir("opt"),
        Entry::symlink("opt/file2dir", "/nowhere"),
        Entry::dir("var"),
        Entry::dir("var/cache"),
        Entry::file("var/cache/fresh", "after a whiteout"),
        Entry::opaque("newtop"),
        Entry::file("newtop/only", "only this"),
    ];
    let l3 = vec![
        Entry::dir("usr"),
        Entry::dir("usr/bin"),
        Entry::file("usr/bin/busybox", random_bytes(7, 120_000)).mode(0o755),
        Entry::file("top-only", "top"),
    ];
    vec![l0, l1, l2, l3]
}

// ---------------------------------------------------------------------------------
// Helpers

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn read_work(env: &TestEnv, rel: &str) -> String {
    fs::read_to_string(env.path(rel)).unwrap_or_else(|e| panic!("{}: {e}", env.path(rel).display()))
}

fn walk_file(env: &TestEnv, rel: &str) -> Tree {
    parse_walk(&read_work(env, rel))
}

/// Mounts `image` in a namespace of the test's own, walks the mount, unmounts.
fn mounted_walk(env: &TestEnv, image: &str) -> Tree {
    let mnt = env.mkdir("mnt");
    let script = format!(r#"S mount {image} "$1"; walk "$1" > "$W/walk.jsonl"; S umount "$1""#);
    assert_ok(&ns_sh(env, &script, &[mnt.as_os_str()]));
    walk_file(env, "walk.jsonl")
}

/// Walks umoci's rootless unpack of `layout:v1` (as the test user).
fn umoci_tree(env: &TestEnv, layout: &Written, name: &str) -> Tree {
    let dest = env.path(&format!("umoci-{name}"));
    let out = user_sh(&format!(
        "umoci unpack --rootless --image '{}:v1' '{}' && python3 '{}/walk.py' '{}/rootfs'",
        layout.path(),
        dest.display(),
        install_tools(env).display(),
        dest.display()
    ));
    assert_ok(&out);
    let tree = parse_walk(&stdout(&out));
    // umoci's unpack keeps modes such as 0700 owned by the user; let the work dir go.
    let _ = user_sh(&format!("chmod -R u+rwX '{}'", dest.display()));
    tree
}

fn diff_lines(diffs: &[String]) -> String {
    diffs.join("\n  ")
}

// ---------------------------------------------------------------------------------
// 1. A multi-layer image, entry by entry

#[test]
fn multi_layer_image_mounts_as_its_layers_say_and_as_umoci_unpacks_it() {
    let env = TestEnv::new("mount-rich");
    let layers = rich_layers();
    let layout = import_layers(&env, &layers, "rich:v1");
    let got = mounted_walk(&env, "rich:v1");

    // Against the layers' own model: in `unshare -Ur` only 0 is mapped, so every
    // owner shows as 0.
    let model = union_model(&layers);
    assert_no_diffs(
        "mount vs the layers' union",
        &diff_model(&got, &model, Checks::all().squashed()),
    );

    // The comparison can fail: a wrong model shows.
    assert!(got.len() > 40, "the walk saw only {} entries", got.len());
    for (path, change) in [
        ("srv/t1", 0),
        ("usr/bin/su", 1),
        ("dev/bigdev", 2),
        ("etc/hostname", 3),
        ("home/user/new", 4),
    ] {
        let mut wrong = model.clone();
        let w = wrong.get_mut(path).unwrap();
        match change {
            0 => w.nlink += 1,
            1 => w.mode = Some(0o755),
            2 => w.rdev.1 += 1,
            3 => w.xattrs.clear(),
            _ => w.sha256 = None,
        }
        assert!(
            !diff_model(&got, &wrong, Checks::all().squashed()).is_empty(),
            "a changed '{path}' went unnoticed"
        );
    }
    let mut wrong = model.clone();
    wrong.remove("srv/pipe");
    assert!(!diff_model(&got, &wrong, Checks::all().squashed()).is_empty());

    // Spot checks of what the model says, so a wrong model cannot hide a wrong mount.
    let e = |p: &str| got.get(p).unwrap_or_else(|| panic!("'{p}' missing"));
    assert!(!got.contains_key("etc/shadow") || e("etc/shadow").mode == 0o600);
    assert!(!got.contains_key("var/cache/apt"), "whited-out dir shows");
    assert!(
        !got.contains_key("usr/lib/libc.so"),
        "opaque dir shows lower child"
    );
    assert!(
        !got.contains_key("home/user/.profile"),
        "whiteout+dir is not opaque"
    );
    assert!(
        !got.contains_key("newtop/sub"),
        "implied opaque dir shows lower child"
    );
    assert!(!got.contains_key("dev/initctl"));
    assert_eq!(e("usr/bin/su").mode, 0o4755);
    assert_eq!(e("usr/bin/wall").mode, 0o2755);
    assert_eq!(e("tmp").mode, 0o1777);
    assert_eq!(e("dev/null").kind, "c");
    assert_eq!(e("dev/null").rdev, (1, 3));
    assert_eq!(e("dev/bigdev").rdev, (259, 70_000));
    assert_eq!(e("dev/loop0").kind, "b");
    assert_eq!(e("srv/pipe").kind, "p");
    assert_eq!(e("opt/dir2file").kind, "f");
    assert_eq!(e("opt/file2dir").kind, "l");
    assert_eq!(e("opt/link2dir").kind, "d");
    assert_eq!(e("srv/h1").nlink, 1, "a name of the pair was whited out");
    assert_eq!(e("srv/t1").nlink, 2);
    assert_eq!(e("srv/t1").ino, e("srv/t2").ino);
    assert_eq!(
        e("usr/bin/ls").nlink,
        1,
        "its other name was replaced above"
    );
    assert_eq!((e("srv/q2").nlink, e("srv/q2").ino), (2, e("srv/q3").ino));
    assert_ne!(e("usr/bin/ls").sha256, e("usr/bin/busybox").sha256);
    assert_eq!(e("var/lib").mtime_ns, 1_650_000_000_999_999_999);
    assert_eq!(
        e("etc/hostname")
            .xattrs
            .get("user.comment")
            .map(String::as_str),
        Some(hex(b"hello").as_str())
    );
    assert_eq!(e("").ino, 1);

    // With the user's subordinate ids mapped too, owners in the range show as the tar
    // said, and only those beyond it are squashed.
    let mnt = env.path("mnt");
    match ns_sh_subids(
        &env,
        r#"S mount rich:v1 "$1"; walk "$1" > "$W/walk-subids.jsonl"; S umount "$1""#,
        &[mnt.as_os_str()],
    ) {
        None => eprintln!("no subordinate ids for the test user: that part is skipped"),
        Some((out, mapped)) => {
            assert_ok(&out);
            let got = walk_file(&env, "walk-subids.jsonl");
            assert_no_diffs(
                "mount with subordinate ids vs the layers' union",
                &diff_model(&got, &model, Checks::all().mapped_below(mapped)),
            );
            assert_eq!((got["usr/bin/wall"].uid, got["usr/bin/wall"].gid), (0, 5));
            assert_eq!((got["home/user"].uid, got["home/user"].gid), (1000, 1000));
            assert_eq!((got["srv/t1"].uid, got["srv/t1"].gid), (7, 8));
            assert_eq!((got["etc/far"].uid, got["etc/far"].gid), (0, 5));
            assert_eq!((got["etc/fargroup"].uid, got["etc/fargroup"].gid), (5, 0));
        }
    }

    // Against umoci's unpack of the same layout: names, types, modes, contents, link
    // targets, user xattrs and hardlink groups. Rootless umoci cannot make devices.
    let reference = umoci_tree(&env, &layout, "rich");
    let devices: BTreeSet<&str> = got
        .iter()
        .filter(|(_, s)| s.kind == "c" || s.kind == "b")
        .map(|(p, _)| p.as_str())
        .collect();
    let diffs = diff_trees(
        &got,
        &reference,
        TreeChecks {
            modes: true,
            xattrs: true,
            link_groups: true,
        },
        |p| devices.contains(p),
    );
    assert_no_diffs("mount vs umoci unpack --rootless", &diffs);
}

// ---------------------------------------------------------------------------------
// 2. Whiteouts and opaque directories across many layers

/// xorshift64*, for layers that churn the same few names.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n
    }
}

fn related(a: &str, b: &str) -> bool {
    let under =
        |p: &str, d: &str| p.len() > d.len() && p.starts_with(d) && p.as_bytes()[d.len()] == b'/';
    a == b || under(a, b) || under(b, a)
}

/// `count` layers, each doing a few random things to a small set of names: adding and
/// overwriting files, whiting out files and directories, making directories opaque,
/// replacing files by directories and directories by files, deleting and re-adding in
/// one layer, symlinks and hardlinks. Every layer lists the parents of what it touches
/// (with a mode and mtime of its own, so an upper listing must win).
fn churn_layers(seed: u64, count: usize) -> Vec<Vec<Entry>> {
    const NAMES: [&str; 8] = ["a", "b", "c", "d", "w", "x", "y", "z"];
    let mut rng = Rng(seed);
    let mut layers: Vec<Vec<Entry>> = Vec::new();
    for i in 0..count {
        let model = union_model(&layers);
        let existing: Vec<&String> = model.keys().filter(|p| !p.is_empty()).collect();
        let mut entries: Vec<Entry> = Vec::new();
        let mut listed: BTreeSet<String> = BTreeSet::new();
        let mut claimed: Vec<String> = Vec::new();
        let dir_mode = if i % 2 == 0 { 0o755 } else { 0o775 };
        let mtime = DEFAULT_MTIME + i as i64;
        let ops = 6 + rng.below(10);
        for _ in 0..ops {
            // Adding is the likeliest, so that deletions find plenty to delete.
            let op = match rng.below(13) {
                0..=4 => 0,
                r => r - 4,
            };
            let random_path = |rng: &mut Rng| {
                let depth = 1 + rng.below(3);
                (0..depth)
                    .map(|_| NAMES[rng.below(NAMES.len())])
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let path = if (1..=3).contains(&op) || op == 7 {
                if existing.is_empty() {
                    continue;
                }
                existing[rng.below(existing.len())].clone()
            } else {
                random_path(&mut rng)
            };
            let second = random_path(&mut rng);
            if claimed.iter().any(|c| related(c, &path))
                || (op == 6
                    && (related(&path, &second) || claimed.iter().any(|c| related(c, &second))))
            {
                continue;
            }
            claimed.push(path.clone());
            if op == 6 {
                claimed.push(second.clone());
            }
            for p in [&path, &second]
                .into_iter()
                .take(if op == 6 { 2 } else { 1 })
            {
                let parts: Vec<&str> = p.split('/').collect();
                for n in 1..parts.len() {
                    let dir = parts[..n].join("/");
                    if listed.insert(dir.clone()) {
                        entries.push(Entry::dir(&dir).mode(dir_mode).mtime(mtime));
                    }
                }
            }
            let content = format!("layer {i} {path}\n");
            let is_dir = model.get(&path).is_some_and(|w| w.kind == 'd');
            match op {
                0 => entries.push(
                    Entry::file(&path, &content)
                        .mode([0o644, 0o600, 0o755][rng.below(3)])
                        .mtime(mtime),
                ),
                1 => entries.push(Entry::whiteout(&path)),
                2 if is_dir => {
                    entries.push(Entry::dir(&path).mode(0o700).mtime(mtime));
                    entries.push(Entry::opaque(&path));
                    entries.push(Entry::file(format!("{path}/new{i}"), &content));
                }
                2 => entries.push(Entry::whiteout(&path)),
                3 if is_dir => entries.push(Entry::file(&path, &content)),
                3 => {
                    entries.push(Entry::dir(&path).mode(0o711).mtime(mtime));
                    entries.push(Entry::file(format!("{path}/child{i}"), &content));
                }
                4 => entries.push(Entry::symlink(&path, format!("../target{i}"))),
                5 => {
                    entries.push(Entry::whiteout(&path));
                    entries.push(Entry::file(&path, &content).mtime(mtime));
                }
                6 => {
                    entries.push(Entry::file(&path, &content).mode(0o640));
                    entries.push(Entry::hardlink(&second, &path));
                }
                _ => {
                    // Delete and make a directory again in one layer: opaque.
                    entries.push(Entry::whiteout(&path));
                    entries.push(Entry::dir(&path).mtime(mtime));
                    entries.push(Entry::file(format!("{path}/again{i}"), &content));
                }
            }
        }
        if entries.is_empty() {
            entries.push(Entry::file(format!("filler{i}"), "filler"));
        }
        layers.push(entries);
    }
    layers
}

#[test]
fn whiteouts_and_opaque_dirs_across_thirty_churning_layers() {
    let env = TestEnv::new("mount-churn");
    let layers = churn_layers(0x5eed_1234, 30);
    let marks = |prefix: &str| {
        layers
            .iter()
            .flatten()
            .filter(|e| {
                e.path
                    .split(|&b| b == b'/')
                    .any(|c| c.starts_with(prefix.as_bytes()))
            })
            .count()
    };
    assert!(marks(".wh..wh..opq") >= 3, "too few opaque markers");
    assert!(marks(".wh.") >= 20, "too few whiteouts");
    // The first 10, 20 and all 30 layers, as three images sharing their layers.
    let mut layouts = Vec::new();
    for depth in [10, 20, 30] {
        layouts.push(import_layers(
            &env,
            &layers[..depth],
            &format!("churn:d{depth}"),
        ));
    }
    let mnt = env.mkdir("mnt");
    let script = r#"
        for d in 10 20 30; do
            S mount churn:d$d "$1"; walk "$1" > "$W/walk$d.jsonl"; S umount "$1"; wait_gone "$1"
        done
    "#;
    assert_ok(&ns_sh(&env, script, &[mnt.as_os_str()]));
    for (depth, layout) in [10, 20, 30].into_iter().zip(&layouts) {
        let got = walk_file(&env, &format!("walk{depth}.jsonl"));
        let model = union_model(&layers[..depth]);
        assert!(
            model.len() > 20,
            "the churn left only {} names",
            model.len()
        );
        assert_no_diffs(
            &format!("mount vs {depth} churning layers"),
            &diff_model(&got, &model, Checks::all().squashed()),
        );
        let reference = umoci_tree(&env, layout, &format!("churn{depth}"));
        assert_no_diffs(
            &format!("mount vs umoci unpack --rootless of {depth} churning layers"),
            &diff_trees(
                &got,
                &reference,
                TreeChecks {
                    modes: true,
                    xattrs: true,
                    link_groups: true,
                },
                |_| false,
            ),
        );
    }
}

#[test]
fn hundred_layer_image() {
    let env = TestEnv::new("mount-100");
    let mut layers = Vec::new();
    for i in 0..100usize {
        let mut l = vec![
            Entry::dir("bin"),
            Entry::file(format!("bin/tool{i:03}"), format!("tool {i}\n")).mode(0o755),
            Entry::dir("etc"),
            Entry::file("etc/version", format!("{i}\n")),
            Entry::dir("lib"),
        ];
        if i % 3 == 2 {
            l.push(Entry::whiteout(&format!("bin/tool{:03}", i - 1)));
        }
        if i % 10 == 9 {
            l.push(Entry::opaque("lib"));
            l.push(Entry::file(format!("lib/only{i}"), "opaque"));
        } else {
            l.push(Entry::file(format!("lib/l{i}"), "lib"));
        }
        if i == 50 {
            l.push(Entry::file("deep/a/b/c/d/e/f/g/h", "deep"));
        }
        if i == 70 {
            l.push(Entry::whiteout("deep/a/b/c"));
        }
        layers.push(l);
    }
    import_layers(&env, &layers, "hundred:v1");
    let got = mounted_walk(&env, "hundred:v1");
    assert_no_diffs(
        "mount vs 100 layers",
        &diff_model(&got, &union_model(&layers), Checks::all().squashed()),
    );
    let tools: Vec<&String> = got.keys().filter(|p| p.starts_with("bin/")).collect();
    assert_eq!(tools.len(), 100 - 33, "{tools:?}");
    let libs: Vec<&String> = got.keys().filter(|p| p.starts_with("lib/")).collect();
    assert_eq!(libs, vec!["lib/only99"]);
    assert!(got.contains_key("deep/a/b") && !got.contains_key("deep/a/b/c"));
}

// ---------------------------------------------------------------------------------
// 3. Inode numbers and link counts

fn inodes(t: &Tree) -> BTreeMap<&str, u64> {
    t.iter().map(|(p, s)| (p.as_str(), s.ino)).collect()
}

#[test]
fn inode_numbers_are_the_same_on_every_mount_and_link_counts_are_right() {
    let env = TestEnv::new("mount-ino");
    let layers = rich_layers();
    import_layers(&env, &layers, "rich:v1");
    let mnt = env.mkdir("mnt");
    let twice = r#"
        S mount rich:v1 "$1"; walk "$1" --no-hash > "$W/first.jsonl"; S umount "$1"
        wait_gone "$1"
        S mount rich:v1 "$1"; walk "$1" --no-hash > "$W/second.jsonl"; S umount "$1"
    "#;
    assert_ok(&ns_sh(&env, twice, &[mnt.as_os_str()]));
    // The view was cached by the first mount; without the cache it is built again,
    // and must number the inodes the same way.
    let views = env.root.join("views");
    let cached: Vec<_> = fs::read_dir(&views)
        .unwrap_or_else(|e| panic!("{}: {e}", views.display()))
        .collect();
    assert_eq!(cached.len(), 1, "one chain, one cached view");
    fs::remove_dir_all(&views).unwrap();
    let rebuilt = r#"S mount rich:v1 "$1"; walk "$1" --no-hash > "$W/third.jsonl"; S umount "$1""#;
    assert_ok(&ns_sh(&env, rebuilt, &[mnt.as_os_str()]));

    let first = walk_file(&env, "first.jsonl");
    let second = walk_file(&env, "second.jsonl");
    let third = walk_file(&env, "third.jsonl");
    assert_eq!(
        inodes(&first),
        inodes(&second),
        "inodes changed between mounts"
    );
    assert_eq!(
        inodes(&first),
        inodes(&third),
        "inodes changed with a rebuilt view"
    );
    assert_eq!(first, second, "attributes changed between mounts");

    let model = union_model(&layers);
    let mut checks = Checks::all().squashed();
    checks.contents = false;
    assert_no_diffs("links and inodes", &diff_model(&first, &model, checks));
    let e = |p: &str| &first[p];
    assert_eq!(e("").ino, 1);
    let top_dirs = first
        .iter()
        .filter(|(p, s)| !p.is_empty() && !p.contains('/') && s.kind == "d")
        .count() as u64;
    assert_eq!(e("").nlink, 2 + top_dirs);
    assert_eq!(e("tmp").nlink, 2);
    assert_eq!(e("srv/h1").nlink, 1, "the pair's other name is whited out");
    assert_eq!((e("srv/t1").nlink, e("srv/t2").nlink), (2, 2));
    assert_eq!(e("srv/t1").ino, e("srv/t2").ino);
    assert_eq!(e("usr/bin/ls").nlink, 1);
    assert_ne!(e("usr/bin/ls").ino, e("usr/bin/busybox").ino);
    // Inodes are strata's own: no two names outside a hardlink group share one, and
    // none is the backing file's.
    let distinct: BTreeSet<u64> = first.values().map(|s| s.ino).collect();
    assert_eq!(
        distinct.len(),
        first.len() - 2,
        "two shared pairs only (t1 t2, q2 q3)"
    );
    assert!(
        distinct.iter().all(|&i| i <= 10 * first.len() as u64),
        "{distinct:?}"
    );
}

// ---------------------------------------------------------------------------------
// 4. readdir offsets

#[test]
fn a_large_merged_directory_lists_completely_in_small_reads() {
    let env = TestEnv::new("mount-readdir");
    let name = |k: usize| format!("big/entry-with-a-rather-long-name-{k:05}");
    let mut l0 = vec![Entry::dir("big")];
    l0.extend((0..3000).map(|k| Entry::file(name(k), "")));
    let mut l1 = vec![Entry::dir("big")];
    l1.extend((2000..4500).map(|k| Entry::file(name(k), "1")));
    l1.extend((0..100).map(|k| Entry::whiteout(&name(k))));
    l1.extend((0..20).map(|j| Entry::dir(format!("big/sub{j:02}"))));
    let mut l2 = vec![Entry::dir("big")];
    l2.extend((0..600).map(|k| Entry::symlink(format!("big/g{k:04}"), "x")));
    l2.extend((2500..4500).step_by(7).map(|k| Entry::whiteout(&name(k))));
    l2.push(Entry::fifo("big/fifo"));
    let layers = vec![l0, l1, l2];
    import_layers(&env, &layers, "big:v1");
    let model = union_model(&layers);
    let want: BTreeSet<String> = model
        .keys()
        .filter_map(|p| p.strip_prefix("big/"))
        .filter(|n| !n.contains('/'))
        .map(str::to_string)
        .collect();
    assert!(want.len() > 4500, "{}", want.len());
    let total = want.len() + 2;

    let mnt = env.mkdir("mnt");
    let script = r#"
        S mount big:v1 "$1"
        python3 "$T/getdents.py" "$1/big" 1024 "$2" > "$W/cold.json"
        python3 "$T/getdents.py" "$1/big" 1024 "$2" > "$W/warm.json"
        ls -f "$1/big" > "$W/ls.txt"
        S umount "$1"
    "#;
    let total_arg = total.to_string();
    assert_ok(&ns_sh(&env, script, &[mnt.as_os_str(), os(&total_arg)]));

    let ls: Vec<String> = read_work(&env, "ls.txt")
        .lines()
        .map(str::to_string)
        .collect();
    for run in ["cold.json", "warm.json"] {
        let v: serde_json::Value = serde_json::from_str(&read_work(&env, run)).unwrap();
        let list = |key: &serde_json::Value| -> Vec<String> {
            key.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect()
        };
        let names = list(&v["names"]);
        assert_eq!(names.len(), total, "{run}: entries listed");
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "{run}: duplicates in the listing"
        );
        let mut children: BTreeSet<String> = names.iter().cloned().collect();
        assert!(
            children.remove(".") && children.remove(".."),
            "{run}: no . or .."
        );
        assert_eq!(children, want, "{run}: names");
        assert!(
            v["calls"].as_u64().unwrap() > 100,
            "{run}: the 1 KiB buffer was not small"
        );
        assert_eq!(list(&v["again"]), names, "{run}: a second listing differs");
        let splits = v["split"].as_object().unwrap();
        assert!(splits.len() >= 5, "{run}: {splits:?}");
        for (at, l) in splits {
            assert_eq!(
                list(l),
                names,
                "{run}: read {at} entries, reopened, seeked to the last offset, read on"
            );
        }
        let scandir: BTreeSet<String> = list(&v["scandir"]).into_iter().collect();
        assert_eq!(scandir, want, "{run}: os.scandir");
        let d_ino = v["d_ino"].as_object().unwrap();
        for (n, ino) in v["lstat_ino"].as_object().unwrap() {
            assert_eq!(&d_ino[n], ino, "{run}: '{n}': d_ino is not st_ino");
        }
        let child_inos: BTreeSet<u64> = d_ino
            .iter()
            .filter(|(n, _)| *n != "." && *n != "..")
            .map(|(_, i)| i.as_u64().unwrap())
            .collect();
        assert_eq!(child_inos.len(), want.len(), "{run}: children share d_ino");
    }
    let mut ls_sorted = ls.clone();
    ls_sorted.sort();
    let mut all: Vec<String> = want.iter().cloned().collect();
    all.push(".".into());
    all.push("..".into());
    all.sort();
    assert_eq!(ls_sorted, all, "ls -f");
}

// ---------------------------------------------------------------------------------
// 5. Many readers at once

#[test]
fn eight_processes_walking_and_reading_one_mount_agree() {
    let env = TestEnv::new("mount-parallel");
    let mut seed = 100;
    let mut file = |path: String, len: usize| {
        seed += 1;
        Entry::file(path, random_bytes(seed, len))
    };
    let mut l0 = vec![Entry::dir("data"), Entry::dir("small")];
    l0.extend((0..8).map(|k| file(format!("data/blob{k}"), 300_000 + k * 97_001)));
    l0.extend((0..300).map(|k| file(format!("small/f{k:03}"), 1 + (k * 37) % 5000)));
    let mut l1 = vec![Entry::dir("data"), Entry::dir("small")];
    l1.extend((0..4).map(|k| file(format!("data/blob{k}"), 1_000_000 + k)));
    l1.extend(
        (0..300)
            .step_by(5)
            .map(|k| Entry::whiteout(&format!("small/f{k:03}"))),
    );
    l1.push(file("data/large".into(), 3_000_000));
    let mut l2 = vec![Entry::dir("more")];
    l2.extend((0..200).map(|k| file(format!("more/m{k:03}"), 100 + k * 50)));
    l2.push(Entry::hardlink("more/link", "more/m007"));
    let layers = vec![l0, l1, l2];
    import_layers(&env, &layers, "par:v1");
    let mnt = env.mkdir("mnt");
    let script = r#"
        S mount par:v1 "$1"
        pids=
        for i in 1 2 3 4 5 6 7 8; do
            walk "$1" > "$W/walk$i.jsonl" & pids="$pids $!"
        done
        for p in $pids; do wait $p; done
        S umount "$1"
    "#;
    assert_ok(&ns_sh(&env, script, &[mnt.as_os_str()]));
    let model = union_model(&layers);
    let first = walk_file(&env, "walk1.jsonl");
    assert_no_diffs(
        "parallel walker 1 vs the layers",
        &diff_model(&first, &model, Checks::all().squashed()),
    );
    for i in 2..=8 {
        let other = walk_file(&env, &format!("walk{i}.jsonl"));
        if other != first {
            let diffs = diff_model(&other, &model, Checks::all().squashed());
            panic!("walker {i} saw another tree:\n  {}", diff_lines(&diffs));
        }
    }
}

// ---------------------------------------------------------------------------------
// 6. Symlinks that point out of the image

#[test]
fn links_out_of_the_image_are_never_followed_by_the_daemon() {
    let env = TestEnv::new("mount-escape");
    let l0 = vec![
        Entry::dir("etc"),
        Entry::file("etc/passwd", "image passwd\n"),
        Entry::file("etc/group", "image group\n"),
        Entry::symlink("evil", "/etc"),
        Entry::symlink("evil2", "/etc"),
        Entry::symlink("up", "../../../../../../../../.."),
        Entry::symlink("rootlink", "/"),
        Entry::symlink("pw", "/etc/passwd"),
        Entry::symlink("dotdot", ".."),
        Entry::dir("d"),
        Entry::dir("d/dd"),
        Entry::symlink("d/dd/back", "../../.."),
    ];
    // A file below a name that is a symlink in the layer beneath: the union shows a
    // directory (this layer's), never the symlink's target.
    let l1 = vec![Entry::file(
        "evil2/passwd",
        "layer file below a lower symlink\n",
    )];
    // A layer whose tree/ will be tampered with after the import.
    let l2 = vec![
        Entry::dir("lib"),
        Entry::file("lib/passwd", "layer lib passwd\n"),
    ];
    let layers = vec![l0, l1, l2];
    let layout = import_layers(&env, &layers, "escape:v1");

    // Make the top layer's lib/ a symlink to the host's /etc: the daemon must not
    // follow it when it opens lib/passwd's data.
    let tree = env
        .layer_dir(layout.diff_ids[2].trim_start_matches("sha256:"))
        .join("tree");
    let out = user_sh(&format!(
        "set -e; cd '{}'; chmod u+w .; mv lib lib.real; ln -s /etc lib",
        tree.display()
    ));
    assert_ok(&out);

    let mnt = env.mkdir("mnt");
    let script = r#"
        S mount escape:v1 "$1"
        python3 "$T/escape.py" "$1" > "$W/escape.json"
        S umount "$1"
    "#;
    assert_ok(&ns_sh(&env, script, &[mnt.as_os_str()]));
    let v: serde_json::Value = serde_json::from_str(&read_work(&env, "escape.json")).unwrap();
    let get = |k: &str| v[k].clone();
    let s = |x: &str| serde_json::json!(x);

    for (name, target) in [
        ("evil", "/etc"),
        ("up", "../../../../../../../../.."),
        ("rootlink", "/"),
        ("pw", "/etc/passwd"),
        ("dotdot", ".."),
        ("d/dd/back", "../../.."),
    ] {
        assert_eq!(
            get(&format!("readlink:{name}")),
            s(target),
            "readlink {name}: {v:#}"
        );
    }
    // Outside a chroot the kernel resolves them in the host's tree, as for any link.
    assert_eq!(get("realpath:up"), s("/"), "{v:#}");
    let parent = mnt.parent().unwrap().to_str().unwrap();
    assert_eq!(get("realpath:back"), s(parent), "{v:#}");
    // The file below the lower symlink is served from its layer.
    assert_eq!(get("lstat_is_dir:evil2"), serde_json::json!(true), "{v:#}");
    assert_eq!(
        get("outside:evil2/passwd"),
        s("layer file below a lower symlink\n")
    );
    assert_eq!(get("outside:etc/passwd"), s("image passwd\n"));
    // Inside a chroot into the mount, every way up ends at the mount's root.
    for key in [
        "chroot:realpath:up",
        "chroot:realpath:back",
        "chroot:realpath:dotdot",
    ] {
        assert_eq!(get(key), s("/"), "{key}: {v:#}");
    }
    for key in [
        "chroot:pw",
        "chroot:evil/passwd",
        "chroot:up/etc/passwd",
        "chroot:back/etc/passwd",
        "chroot:rootlink/etc/passwd",
        "chroot:dotdot/etc/passwd",
    ] {
        assert_eq!(get(key), s("image passwd\n"), "{key}: {v:#}");
    }
    assert_eq!(
        get("chroot:evil_list"),
        serde_json::json!(["group", "passwd"])
    );
    assert_eq!(
        get("chroot:evil2/passwd"),
        s("layer file below a lower symlink\n")
    );

    // The tampered tree: the view still lists lib/passwd, but its data is never read
    // through the planted link.
    let host_passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert_eq!(
        get("chroot:lib_list"),
        serde_json::json!(["passwd"]),
        "{v:#}"
    );
    for key in ["outside:lib/passwd", "chroot:lib/passwd"] {
        let got = get(key);
        assert_ne!(
            got,
            s(&host_passwd),
            "{key}: the daemon followed tree/lib -> /etc"
        );
        assert!(
            got.as_str().is_some_and(|t| t.starts_with("error:")),
            "{key}: want an error reading through a planted link, got {got}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 7. Read-only; the mount's life cycle

const EROFS_PY: &str = r#"
import errno, json, os, sys
m = sys.argv[1]
res = {}
def attempt(name, fn):
    try:
        fn()
        res[name] = 'ok'
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt('create', lambda: os.close(os.open(m + '/new', os.O_CREAT | os.O_WRONLY, 0o644)))
attempt('open_write', lambda: os.close(os.open(m + '/etc/hostname', os.O_WRONLY)))
attempt('open_rdwr', lambda: os.close(os.open(m + '/etc/hostname', os.O_RDWR)))
attempt('truncate', lambda: os.truncate(m + '/etc/hostname', 0))
attempt('mkdir', lambda: os.mkdir(m + '/newdir'))
attempt('unlink', lambda: os.unlink(m + '/etc/hostname'))
attempt('rmdir', lambda: os.rmdir(m + '/tmp'))
attempt('rename', lambda: os.rename(m + '/etc/hostname', m + '/etc/renamed'))
attempt('chmod', lambda: os.chmod(m + '/etc/hostname', 0o600))
attempt('chown', lambda: os.chown(m + '/etc/hostname', 0, 0))
attempt('utime', lambda: os.utime(m + '/etc/hostname', (0, 0)))
attempt('symlink', lambda: os.symlink('x', m + '/newlink'))
attempt('link', lambda: os.link(m + '/etc/hostname', m + '/newhard'))
attempt('mknod_fifo', lambda: os.mkfifo(m + '/newfifo'))
attempt('setxattr', lambda: os.setxattr(m + '/etc/hostname', 'user.new', b'v'))
attempt('removexattr', lambda: os.removexattr(m + '/etc/hostname', 'user.comment'))
attempt('read', lambda: open(m + '/etc/hostname').read())
print(json.dumps(res, sort_keys=True))
"#;

#[test]
fn the_mount_is_read_only_and_unmounts_cleanly() {
    let env = TestEnv::new("mount-life");
    import_layers(&env, &rich_layers(), "rich:v1");
    fs::write(env.path("erofs.py"), EROFS_PY).unwrap();
    give_to_user(&env.path("erofs.py"));
    let mnt = env.mkdir("mnt");
    let script = r#"
        M="$1"
        strata_procs() {
            n=0
            for f in /proc/[0-9]*/comm; do
                [ "$(cat "$f" 2>/dev/null)" = strata ] && n=$((n + 1))
            done
            echo $n
        }
        # In the background: returns once the mount answers.
        S mount rich:v1 "$M"
        is_mounted "$M" || { echo "not mounted when mount returned" >&2; exit 1; }
        cat "$M/etc/hostname" > "$W/hostname.txt"
        python3 "$W/erofs.py" "$M" > "$W/erofs.json"
        if touch "$M/etc/hostname" 2> "$W/touch.err"; then echo "touch worked" >&2; exit 1; fi
        echo "daemons while mounted: $(strata_procs)"
        S umount "$M"
        if is_mounted "$M"; then echo "still mounted after strata umount" >&2; exit 1; fi
        i=0
        while [ "$(strata_procs)" != 0 ]; do
            i=$((i + 1)); [ $i -lt 500 ] || { echo "the daemon outlived its mount" >&2; exit 1; }
            sleep 0.01
        done
        echo "background: unmounted, daemon gone"

        # In the foreground: a stop signal unmounts, and strata exits 0.
        for how in TERM HUP INT umount; do
            dfl "$STRATA" --root "$ROOT" mount -f rich:v1 "$M" & pid=$!
            wait_mounted "$M"
            cat "$M/etc/hostname" > /dev/null
            if [ $how = umount ]; then S umount "$M"; else kill -$how $pid; fi
            rc=0; wait $pid || rc=$?
            if is_mounted "$M"; then state=mounted; else state=unmounted; fi
            echo "foreground $how: rc=$rc $state"
        done
    "#;
    let out = ns_sh(&env, script, &[mnt.as_os_str()]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(read_work(&env, "hostname.txt"), "strata\n");
    assert!(
        read_work(&env, "touch.err").contains("Read-only file system"),
        "{}",
        read_work(&env, "touch.err")
    );
    let v: serde_json::Value = serde_json::from_str(&read_work(&env, "erofs.json")).unwrap();
    for (op, res) in v.as_object().unwrap() {
        let want = if op == "read" { "ok" } else { "EROFS" };
        assert_eq!(res, want, "{op} on the read-only mount: {v:#}");
    }
    assert!(
        text.contains("daemons while mounted: 1"),
        "{}",
        describe(&out)
    );
    assert!(
        text.contains("background: unmounted, daemon gone"),
        "{}",
        describe(&out)
    );
    for how in ["TERM", "HUP", "INT", "umount"] {
        let line = format!("foreground {how}: rc=0 unmounted");
        assert!(text.contains(&line), "want '{line}'\n{}", describe(&out));
    }
}

// ---------------------------------------------------------------------------------
// 8. In the host's mount namespace, through fusermount3

/// Unmounts (lazily, through fusermount3) and stops the daemon of a host mount that a
/// failed test left behind.
struct HostMount {
    dir: PathBuf,
}

impl HostMount {
    fn mounted(&self) -> bool {
        host_mountpoints().iter().any(|m| Path::new(m) == self.dir)
    }

    /// strata processes serving this mount point (their command line names it).
    fn daemons(&self) -> Vec<i32> {
        let want = self.dir.as_os_str().as_encoded_bytes();
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"strata")) && args.contains(&want)
            })
            .collect()
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        if self.mounted() {
            let _ = user_command_with_setuid_helpers("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.dir)
                .output();
        }
        for pid in self.daemons() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn outside_a_user_namespace_it_mounts_through_fusermount3_with_true_owners() {
    let env = TestEnv::new("mount-host");
    let layers = vec![
        vec![
            Entry::dir("etc"),
            Entry::file("etc/hello", "hello from the host mount\n"),
            Entry::file("etc/secret", "root only\n").mode(0o600),
            Entry::file("etc/users", "u\n").owner(1000, 1000),
            Entry::file("etc/odd", "o\n").owner(4242, 777).mode(0o664),
            Entry::file("etc/nobody", "n\n").owner(65534, 65534),
            Entry::dir("usr").owner(0, 0),
            Entry::file("usr/su", "su").mode(0o4755),
            Entry::dir("home").mode(0o755).owner(1000, 100),
            Entry::symlink("home/link", "/etc/hello").owner(1000, 100),
        ],
        vec![
            Entry::dir("etc"),
            Entry::whiteout("etc/nobody"),
            Entry::char_dev("etc/null", 1, 3).owner(5, 6),
        ],
    ];
    import_layers(&env, &layers, "host:v1");
    let mnt = env.mkdir("mnt");
    let guard = HostMount { dir: mnt.clone() };
    let script = r#"
        S mount host:v1 "$1"
        cat "$1/etc/hello" > "$W/hello.txt"
        walk "$1" > "$W/walk.jsonl"
        S umount "$1"
    "#;
    let out = host_sh(&env, script, &[mnt.as_os_str()]);
    assert_ok(&out);
    assert!(
        !guard.mounted(),
        "still in /proc/self/mountinfo after strata umount"
    );
    assert!(
        wait_for(5.0, || guard.daemons().is_empty()),
        "the daemon outlived its mount: {:?}",
        guard.daemons()
    );
    assert_eq!(read_work(&env, "hello.txt"), "hello from the host mount\n");

    // Owners show as the tar said; the kernel enforces them (default_permissions).
    let got = walk_file(&env, "walk.jsonl");
    let mut model = union_model(&layers);
    model.get_mut("etc/secret").unwrap().sha256 = Some("error:EACCES".into());
    assert_no_diffs(
        "host mount vs the layers",
        &diff_model(&got, &model, Checks::all()),
    );
    assert_eq!((got["etc/odd"].uid, got["etc/odd"].gid), (4242, 777));
}

// ---------------------------------------------------------------------------------
// 9, 10. Errors

fn small_image(env: &TestEnv) {
    import_layers(env, &[vec![Entry::file("f", "f")]], "small:v1");
}

#[test]
fn an_inaccessible_dev_fuse_is_reported() {
    if !is_root() {
        eprintln!("skipped: making a root-owned stand-in for /dev/fuse needs root");
        return;
    }
    let env = TestEnv::new("mount-nofuse");
    small_image(&env);
    let fake = env.path("fake-fuse");
    fs::write(&fake, b"").unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o600)).unwrap();
    let mnt = env.mkdir("mnt");
    let script = r#"
        mount --bind "$2" /dev/fuse
        exec "$STRATA" --root "$ROOT" mount small:v1 "$1"
    "#;
    let out = ns_sh(&env, script, &[mnt.as_os_str(), fake.as_os_str()]);
    assert_fails(&out, 1, "/dev/fuse is not accessible");
}

#[test]
fn unknown_images_and_bad_mountpoints_are_errors() {
    let env = TestEnv::new("mount-errors");
    small_image(&env);
    let mnt = env.mkdir("mnt");
    let file = env.path("a-file");
    fs::write(&file, b"x").unwrap();
    give_to_user(&file);
    let run = |image: &str, at: &Path| {
        ns_sh(
            &env,
            r#"exec "$STRATA" --root "$ROOT" mount "$1" "$2""#,
            &[os(image), at.as_os_str()],
        )
    };
    assert_fails(&run("nope:latest", &mnt), 1, "not found");
    let missing = env.path("missing");
    let out = run("small:v1", &missing);
    assert_fails(&out, 1, "missing");
    assert!(!missing.exists());
    assert_fails(&run("small:v1", &file), 1, "not a directory");
    // Unmounting what is not mounted is an error.
    let out = ns_sh(&env, r#"exec "$STRATA" umount "$1""#, &[mnt.as_os_str()]);
    assert_fails(&out, 1, "cannot unmount");
    // Nothing was left mounted or serving: the same mount point works at once.
    let out = ns_sh(
        &env,
        r#"S mount small:v1 "$1"; cat "$1/f"; S umount "$1""#,
        &[mnt.as_os_str()],
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "f");
}

// ---------------------------------------------------------------------------------
// Known bugs

#[test]
fn xattr_values_holding_newlines_show_as_the_tar_said() {
    let env = TestEnv::new("mount-xattr-nl");
    let layers = vec![vec![
        Entry::dir("etc"),
        Entry::file("etc/caps", "x").xattr("user.binary", [b'a', b'\n', 0, b'b', b'\n']),
    ]];
    import_layers(&env, &layers, "nl:v1");
    let got = mounted_walk(&env, "nl:v1");
    assert_no_diffs(
        "xattr with newlines",
        &diff_model(&got, &union_model(&layers), Checks::all().squashed()),
    );
}
