//! `strata import` of OCI layouts, run as the unprivileged test user: what the store
//! holds afterwards (layer trees and indexes, the image list), what bad input does,
//! and what a full disk, a kill -9 and two imports at once leave behind.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use strata::image::layer::EntryKind;
use strata::store::layer_index::LayerIndex;
use support::*;

// ---------------------------------------------------------------------------------
// Checking a layer against the entries it was built from

fn kind_of(k: ExpectedKind) -> EntryKind {
    match k {
        ExpectedKind::File => EntryKind::File,
        ExpectedKind::Dir => EntryKind::Dir,
        ExpectedKind::Symlink => EntryKind::Symlink,
        ExpectedKind::Char => EntryKind::CharDevice,
        ExpectedKind::Block => EntryKind::BlockDevice,
        ExpectedKind::Fifo => EntryKind::Fifo,
        ExpectedKind::Whiteout => EntryKind::Whiteout,
    }
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn tree_path(tree: &Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    tree.join(std::ffi::OsStr::from_bytes(rel))
}

/// Checks `layers/<diff_id>/index` entry by entry, and `tree/`, against `entries`.
fn check_layer(env: &TestEnv, diff_id_hex: &str, entries: &[Entry]) {
    let dir = env.layer_dir(diff_id_hex);
    let index = LayerIndex::open(&dir.join("index"))
        .unwrap_or_else(|e| panic!("layer {diff_id_hex}: {e}"));
    let tree = dir.join("tree");
    assert!(tree.is_dir(), "{} is missing", tree.display());
    let (expected, implied_opaque) = expected_index(entries);

    // Every index entry is one the tar listed, or a directory it implied.
    let mut seen = BTreeSet::new();
    for e in index.iter() {
        let path = e.path().to_vec();
        assert!(
            !path.starts_with(b"/") && !path.ends_with(b"/"),
            "index path '{}' is not relative and clean",
            show(&path)
        );
        if e.is_implicit() {
            assert_eq!(e.kind(), EntryKind::Dir, "implicit '{}' not a dir", show(&path));
            assert!(
                !expected.contains_key(&path),
                "'{}' is listed in the tar but indexed as implicit",
                show(&path)
            );
            assert_eq!(
                e.is_opaque(),
                implied_opaque.contains(&path),
                "opaque flag of implicit dir '{}'",
                show(&path)
            );
        } else {
            assert!(
                expected.contains_key(&path),
                "index has '{}' ({:?}), which the tar did not list",
                show(&path),
                e.kind()
            );
        }
        seen.insert(path);
    }

    // Every entry the tar listed is indexed as the tar said.
    let mut node_to_group: BTreeMap<usize, u32> = BTreeMap::new();
    let mut group_to_node: BTreeMap<u32, usize> = BTreeMap::new();
    for (path, x) in &expected {
        let e = index
            .get(path)
            .unwrap_or_else(|| panic!("index lacks '{}'", show(path)));
        let what = format!("layer {}: '{}'", &diff_id_hex[..12], show(path));
        assert!(!e.is_implicit(), "{what}: marked implicit");
        assert_eq!(e.kind(), kind_of(x.kind), "{what}: kind");
        let m = e.meta();
        assert_eq!(m.mode, x.mode, "{what}: mode {:o} want {:o}", m.mode, x.mode);
        assert_eq!((m.uid, m.gid), (x.uid, x.gid), "{what}: owner");
        assert_eq!(m.size, x.size, "{what}: size");
        assert_eq!((m.mtime_sec, m.mtime_nsec), (x.mtime, x.mtime_nsec), "{what}: mtime");
        assert_eq!((m.rdev_major, m.rdev_minor), x.rdev, "{what}: rdev");
        assert_eq!(e.symlink_target(), x.link.as_slice(), "{what}: link target");
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = e
            .xattrs()
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        let mut want = x.xattrs.clone();
        let mut got = xattrs.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{what}: xattrs");
        assert_eq!(e.is_opaque(), x.opaque, "{what}: opaque flag");
        // Hardlink groups: the same partition of names, whatever the numbers.
        let group = e.hardlink_group();
        if x.node == 0 {
            assert_eq!(group, 0, "{what}: in a hardlink group, but not hardlinked");
        } else {
            assert_ne!(group, 0, "{what}: hardlinked, but in no group");
            assert_eq!(*node_to_group.entry(x.node).or_insert(group), group, "{what}: group");
            assert_eq!(*group_to_node.entry(group).or_insert(x.node), x.node, "{what}: group");
        }

        // tree/ holds files, dirs and symlinks; nothing else.
        let on_disk = tree_path(&tree, path);
        let meta = fs::symlink_metadata(&on_disk);
        match x.kind {
            ExpectedKind::File => {
                let meta = meta.unwrap_or_else(|e| panic!("{what}: not in tree/: {e}"));
                assert!(meta.file_type().is_file(), "{what}: not a file in tree/");
                assert_eq!(fs::read(&on_disk).unwrap(), x.data, "{what}: content");
                assert_eq!(meta.uid(), user().uid, "{what}: tree file not the user's");
                assert!(meta.mode() & 0o400 != 0, "{what}: owner cannot read it");
                assert_eq!(meta.mode() & 0o7000, 0, "{what}: setuid/setgid/sticky on disk");
            }
            ExpectedKind::Dir => {
                let meta = meta.unwrap_or_else(|e| panic!("{what}: not in tree/: {e}"));
                assert!(meta.is_dir(), "{what}: not a dir in tree/");
            }
            ExpectedKind::Symlink => {
                let meta = meta.unwrap_or_else(|e| panic!("{what}: not in tree/: {e}"));
                assert!(meta.file_type().is_symlink(), "{what}: not a symlink in tree/");
                use std::os::unix::ffi::OsStrExt;
                assert_eq!(
                    fs::read_link(&on_disk).unwrap().as_os_str().as_bytes(),
                    x.link.as_slice(),
                    "{what}: symlink target in tree/"
                );
            }
            ExpectedKind::Char
            | ExpectedKind::Block
            | ExpectedKind::Fifo
            | ExpectedKind::Whiteout => {
                assert!(meta.is_err(), "{what}: {:?} must not be in tree/", x.kind);
            }
        }
    }
    // Hardlinked files and symlinks share an inode in tree/.
    let mut inode_of_node: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for (path, x) in &expected {
        if x.node != 0 && matches!(x.kind, ExpectedKind::File | ExpectedKind::Symlink) {
            let m = fs::symlink_metadata(tree_path(&tree, path)).unwrap();
            let ino = (m.dev(), m.ino());
            assert_eq!(
                *inode_of_node.entry(x.node).or_insert(ino),
                ino,
                "'{}': hardlinked names are separate files in tree/",
                show(path)
            );
        }
    }
    // Nothing in tree/ that the index does not have.
    for_each_in_tree(&tree, &mut |rel: &[u8]| {
        assert!(
            seen.contains(rel),
            "tree/{} exists but the index lacks it",
            show(rel)
        );
    });
}

fn for_each_in_tree(dir: &Path, f: &mut dyn FnMut(&[u8])) {
    fn walk(base: &Path, rel: &mut Vec<u8>, f: &mut dyn FnMut(&[u8])) {
        use std::os::unix::ffi::OsStrExt;
        for e in fs::read_dir(tree_path(base, rel)).unwrap() {
            let e = e.unwrap();
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(e.file_name().as_bytes());
            f(rel);
            if e.file_type().unwrap().is_dir() {
                walk(base, rel, f);
            }
            rel.truncate(len);
        }
    }
    walk(dir, &mut Vec::new(), f);
}

// ---------------------------------------------------------------------------------
// The rich multi-layer image

fn long_component(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

fn capability_value() -> Vec<u8> {
    // vfs_cap_data revision 2: CAP_NET_RAW permitted and effective.
    let mut v = vec![0u8; 20];
    v[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    v[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    v
}

fn rich_layers() -> Vec<Vec<Entry>> {
    let long_dir = format!("usr/share/{}/{}", long_component('d', 60), long_component('e', 60));
    let long_file = format!("{long_dir}/{}.txt", long_component('f', 80));
    let long_target = format!("/opt/{}/{}", long_component('t', 90), long_component('u', 40));
    let base = vec![
        Entry::dir("./").mtime(1_600_000_000),
        Entry::dir("etc/"),
        Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        Entry::file("etc/shadow", "root:*:19000:0:99999:7:::\n")
            .mode(0o640)
            .owner(0, 42),
        Entry::file("etc/empty", ""),
        Entry::file("etc/dup", "first version\n"),
        Entry::file("etc/dup", "second version wins\n").mode(0o600),
        Entry::file("etc/precise", "nanoseconds\n")
            .mtime(1_650_000_000)
            .mtime_nsec(123_456_789),
        Entry::file("etc/xattr-file", "has a user xattr\n").xattr("user.foo", "bar"),
        Entry::dir("usr/"),
        Entry::dir("usr/bin/"),
        Entry::file("usr/bin/su", random_bytes(1, 3000)).mode(0o4755),
        Entry::file("usr/bin/wall", random_bytes(2, 700)).mode(0o2755).owner(0, 5),
        Entry::file("usr/bin/ping", random_bytes(3, 900))
            .mode(0o755)
            .xattr("security.capability", capability_value())
            .xattr("user.note", "pinged"),
        Entry::hardlink("usr/bin/su2", "usr/bin/su"),
        Entry::dir("sbin/").mode(0o750),
        Entry::hardlink("sbin/su-other-dir", "usr/bin/su"),
        Entry::hardlink("sbin/wall-link", "/usr/bin/wall"),
        Entry::dir("tmp/").mode(0o1777),
        Entry::dir("srv/").mode(0o3775).owner(0, 50),
        Entry::dir("home/"),
        Entry::dir("home/user/").mode(0o700).owner(1000, 1000),
        Entry::file("home/user/notes", "private\n").mode(0o600).owner(1000, 1000),
        Entry::file("home/user/script", "#!/bin/sh\n").mode(0o750).owner(1000, 100),
        Entry::dir("var/"),
        Entry::file("var/nobody", "owned by nobody\n").owner(65534, 65534),
        Entry::file("var/readonly", "no permission bits at all\n").mode(0o000),
        Entry::symlink("bin", "/usr/bin"),
        Entry::symlink("etc/alt", "../usr/bin/su"),
        Entry::symlink("etc/dangling", "does/not/exist"),
        Entry::dir("lib/"),
        Entry::symlink("lib/long-absolute", &long_target),
        Entry::symlink(
            "lib/long-relative",
            format!("../{}/{}", long_component('r', 70), long_component('s', 70)),
        ),
        Entry::hardlink("lib/link-to-symlink", "bin"),
        Entry::dir("dev/"),
        Entry::char_dev("dev/null", 1, 3),
        Entry::char_dev("dev/tty", 5, 0).mode(0o620).owner(0, 5),
        Entry::block_dev("dev/sda", 8, 0),
        Entry::block_dev("dev/loop-big", 259, 1_048_575),
        Entry::fifo("dev/initctl").mode(0o600),
        Entry::dir("usr/share/"),
        Entry::dir(format!("usr/share/{}/", long_component('d', 60))),
        Entry::dir(format!("{long_dir}/")),
        Entry::file(&long_file, "a file whose name needs a PAX record\n"),
        Entry::hardlink(format!("{long_dir}/{}", long_component('h', 70)), &long_file),
        Entry::file("usr/share/pax-short", "short name, PAX anyway\n").pax_path(),
        Entry::file("implied/parents/file", "my parents are not listed\n"),
    ];
    let empty: Vec<Entry> = Vec::new();
    let changes = vec![
        Entry::whiteout("etc/shadow"),
        Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n").owner(0, 0),
        Entry::file("etc/motd", "welcome\n"),
        Entry::dir("usr/share/").mode(0o755),
        Entry::opaque("usr/share/"),
        Entry::file("usr/share/new", "after the opaque marker\n"),
        Entry::opaque("opt"),
        Entry::file("opt/fresh", "in an opaque dir the tar never listed\n"),
        Entry::whiteout("home/user"),
        Entry::whiteout("bin"),
        Entry::dir("bin/"),
        Entry::file("bin/sh", random_bytes(4, 5000)).mode(0o755),
        Entry::dir("var/"),
        Entry::dir("var/lib/").mode(0o2775).owner(1000, 1000),
        Entry::char_dev("var/lib/whiteout-looking", 0, 0),
    ];
    vec![base, empty.clone(), changes, empty]
}

fn rich_image() -> (Image, Vec<Vec<Entry>>) {
    let layers = rich_layers();
    let blobs = vec![
        LayerBlob::gz(layers[0].clone()),
        LayerBlob::gz(layers[1].clone()),
        LayerBlob::plain(layers[2].clone()),
        LayerBlob::plain(layers[3].clone()),
    ];
    (Image::new(blobs), layers)
}

#[test]
fn multi_layer_image_indexes_match_the_tars_entry_by_entry() {
    let env = TestEnv::new("rich");
    let (image, layers) = rich_image();
    let written = image.with_ref("rich:v1").write(&env.path("rich"));
    let id = env.import(&written.source(), None);
    assert_eq!(id, written.config_hex, "the image ID is the config digest");

    for (blob, entries) in written.diff_ids.iter().zip(&layers) {
        check_layer(&env, blob.trim_start_matches("sha256:"), entries);
    }
    // Two empty layers (one gzipped, one not) share a diff_id: one layer dir.
    assert_eq!(written.diff_ids[1], written.diff_ids[3]);
    let mut dirs: Vec<String> = fs::read_dir(env.root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut want: Vec<String> = written
        .diff_ids
        .iter()
        .map(|d| d.trim_start_matches("sha256:").to_string())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(dirs, want, "layers/ holds one dir per distinct diff_id");

    let images = env.images_json();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["id"], id.as_str());
    assert_eq!(images[0]["names"], serde_json::json!(["rich:v1"]));
    assert_eq!(images[0]["layers"], serde_json::json!(written.diff_ids));
    assert_eq!(images[0]["digest"], format!("sha256:{}", written.manifest_hex));
    assert_tmp_empty(&env.root);
}

#[test]
fn absolute_names_are_stored_relative() {
    let env = TestEnv::new("absolute");
    let entries = vec![
        Entry::dir("/etc/"),
        Entry::file("/etc/hostname", "box\n"),
        Entry::file("//usr/./lib/x", "double slash and dot\n"),
        Entry::symlink("/etc/abs-link", "/etc/hostname"),
    ];
    let written = Image::new(vec![LayerBlob::gz(entries.clone())]).write(&env.path("abs"));
    env.import(&written.path(), None);
    let hex = written.diff_ids[0].trim_start_matches("sha256:");
    check_layer(&env, hex, &entries);
    let index = LayerIndex::open(&env.layer_dir(hex).join("index")).unwrap();
    assert!(index.get(b"etc/hostname").is_some());
    assert!(index.iter().all(|e| !e.path().starts_with(b"/")));
    assert_eq!(
        fs::read(env.layer_dir(hex).join("tree/etc/hostname")).unwrap(),
        b"box\n"
    );
    assert_tmp_empty(&env.root);
}
