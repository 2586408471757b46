//! `strata import` of OCI layouts, run as the unprivileged test user: what the store
//! holds afterwards (layer trees and indexes, the image list), what bad input does,
//! and what a full disk, a kill -9 and two imports at once leave behind.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
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
    let index =
        LayerIndex::open(&dir.join("index")).unwrap_or_else(|e| panic!("layer {diff_id_hex}: {e}"));
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
            assert_eq!(
                e.kind(),
                EntryKind::Dir,
                "implicit '{}' not a dir",
                show(&path)
            );
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
        assert_eq!(
            m.mode, x.mode,
            "{what}: mode {:o} want {:o}",
            m.mode, x.mode
        );
        assert_eq!((m.uid, m.gid), (x.uid, x.gid), "{what}: owner");
        assert_eq!(m.size, x.size, "{what}: size");
        assert_eq!(
            (m.mtime_sec, m.mtime_nsec),
            (x.mtime, x.mtime_nsec),
            "{what}: mtime"
        );
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
            assert_eq!(
                *node_to_group.entry(x.node).or_insert(group),
                group,
                "{what}: group"
            );
            assert_eq!(
                *group_to_node.entry(group).or_insert(x.node),
                x.node,
                "{what}: group"
            );
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
                assert_eq!(
                    meta.mode() & 0o7000,
                    0,
                    "{what}: setuid/setgid/sticky on disk"
                );
            }
            ExpectedKind::Dir => {
                let meta = meta.unwrap_or_else(|e| panic!("{what}: not in tree/: {e}"));
                assert!(meta.is_dir(), "{what}: not a dir in tree/");
            }
            ExpectedKind::Symlink => {
                let meta = meta.unwrap_or_else(|e| panic!("{what}: not in tree/: {e}"));
                assert!(
                    meta.file_type().is_symlink(),
                    "{what}: not a symlink in tree/"
                );
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
    let long_dir = format!(
        "usr/share/{}/{}",
        long_component('d', 60),
        long_component('e', 60)
    );
    let long_file = format!("{long_dir}/{}.txt", long_component('f', 80));
    let long_target = format!(
        "/opt/{}/{}",
        long_component('t', 90),
        long_component('u', 40)
    );
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
        Entry::file("usr/bin/wall", random_bytes(2, 700))
            .mode(0o2755)
            .owner(0, 5),
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
        Entry::file("home/user/notes", "private\n")
            .mode(0o600)
            .owner(1000, 1000),
        Entry::file("home/user/script", "#!/bin/sh\n")
            .mode(0o750)
            .owner(1000, 100),
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
        Entry::hardlink(
            format!("{long_dir}/{}", long_component('h', 70)),
            &long_file,
        ),
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
    assert_eq!(
        images[0]["digest"],
        format!("sha256:{}", written.manifest_hex)
    );
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

// ---------------------------------------------------------------------------------
// The image list and naming

fn small_image(seed: u64) -> Image {
    Image::new(vec![
        LayerBlob::gz(vec![
            Entry::dir("etc/"),
            Entry::file("etc/os-release", format!("ID=test{seed}\n")),
        ]),
        LayerBlob::gz(vec![Entry::file(
            format!("data/{seed}"),
            random_bytes(seed, 4096),
        )]),
    ])
}

fn names_of(images: &[serde_json::Value], id: &str) -> Vec<String> {
    let img = images
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("image {id} not listed: {images:#?}"));
    img["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn images_lists_name_id_layers_size_and_created() {
    let env = TestEnv::new("images");
    let written = small_image(1).with_ref("app:v1").write(&env.path("app"));
    let id = env.import(&written.source(), None);

    let out = env.strata(&["images"]);
    assert_ok(&out);
    let table = stdout(&out);
    let header = table.lines().next().unwrap_or("");
    for column in ["IMAGE ID", "LAYERS", "SIZE", "CREATED"] {
        assert!(header.contains(column), "no {column} column:\n{table}");
    }
    let row = table
        .lines()
        .find(|l| l.contains(&id[..12]))
        .unwrap_or_else(|| panic!("no row with the 12-hex ID {}:\n{table}", &id[..12]));
    assert!(row.contains("app:v1"), "row lacks app:v1: {row}");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert!(cols.contains(&"2"), "row does not show 2 layers: {row}");
    assert!(
        !row.contains(&id[..13]),
        "the table shows more than 12 hex of the ID: {row}"
    );

    let images = env.images_json();
    assert_eq!(images.len(), 1, "{images:#?}");
    let img = &images[0];
    assert_eq!(img["id"], id.as_str());
    assert_eq!(img["names"], serde_json::json!(["app:v1"]));
    assert_eq!(img["digest"], format!("sha256:{}", written.manifest_hex));
    assert_eq!(img["layers"], serde_json::json!(written.diff_ids));
    assert!(
        img["size"].as_u64().unwrap() > 4096,
        "size: {}",
        img["size"]
    );
    assert_eq!(img["created"], "2024-01-02T03:04:05Z");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let imported = img["imported"].as_u64().unwrap();
    assert!(
        imported <= now && now - imported < 600,
        "imported: {imported}"
    );
}

#[test]
fn name_argument_names_the_image_and_tag_defaults_to_latest() {
    let env = TestEnv::new("naming");
    let a = small_image(2).with_ref("from-ref:v9").write(&env.path("a"));
    let id_a = env.import(&a.source(), Some("myapp:2.0"));
    let b = small_image(3).write(&env.path("b"));
    let id_b = env.import(&b.path(), Some("other"));
    let images = env.images_json();
    assert_eq!(
        names_of(&images, &id_a),
        ["myapp:2.0"],
        "NAME:TAG wins over the ref"
    );
    assert_eq!(names_of(&images, &id_b), ["other:latest"]);
}

#[test]
fn ref_name_that_is_a_full_reference_names_the_image() {
    let env = TestEnv::new("refname");
    let w = small_image(4).with_ref("web:1.2").write(&env.path("w"));
    let id = env.import(&w.path(), None);
    assert_eq!(names_of(&env.images_json(), &id), ["web:1.2"]);
}

#[test]
fn untagged_import_prints_the_id_and_lists_no_name() {
    let env = TestEnv::new("untagged");
    // No ref name at all, and a ref name that is only a tag.
    let a = small_image(5).write(&env.path("a"));
    let b = small_image(6).with_ref("latest").write(&env.path("b"));
    let id_a = env.import(&a.source(), None);
    let id_b = env.import(&b.source(), None);
    assert_eq!(id_a, a.config_hex);
    assert_eq!(id_b, b.config_hex);
    let images = env.images_json();
    assert_eq!(images.len(), 2);
    assert!(names_of(&images, &id_a).is_empty());
    assert!(names_of(&images, &id_b).is_empty());
    let table = stdout(&env.strata(&["images"]));
    assert!(
        table.contains(&id_a[..12]) && table.contains(&id_b[..12]),
        "{table}"
    );
}

#[test]
fn source_ref_selects_the_manifest_and_a_wrong_ref_is_a_user_error() {
    let env = TestEnv::new("srcref");
    let w = small_image(7).with_ref("v1").write(&env.path("lay"));
    let id = env.import(&format!("oci:{}:v1", w.path()), None);
    assert_eq!(id, w.config_hex);
    let out = env.strata(&["import", "-q", &format!("{}:v1", w.path()), "again:1"]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), w.config_hex, "-q prints only the ID");
    let before = snapshot(&env.root);
    let out = env.strata(&["import", &format!("oci:{}:nope", w.path()), "x:1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("strata: error: "),
        "{}",
        describe(&out)
    );
    assert_same(&before, &snapshot(&env.root), "wrong ref");
    assert_tmp_empty(&env.root);
}

/// skopeo writes `oci:DIR:app:v1` as DIR with ref name "app:v1" (the path ends at the
/// first colon after "oci:"); strata must read the same spelling back.
#[test]
fn source_ref_with_a_colon_selects_as_skopeo_writes_it() {
    let env = TestEnv::new("srcref-colon");
    let w = small_image(17).with_ref("app:v1").write(&env.path("lay"));
    let id = env.import(&format!("oci:{}:app:v1", w.path()), None);
    assert_eq!(id, w.config_hex);
    assert_eq!(names_of(&env.images_json(), &id), ["app:v1"]);
}

#[test]
fn strata_root_env_selects_the_store() {
    let env = TestEnv::new("envroot");
    let w = small_image(8).with_ref("e:1").write(&env.path("lay"));
    let out = user_command(strata_bin())
        .env("STRATA_ROOT", &env.root)
        .args(["import", "-q", &w.source()])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(env.root.join("images/images.json").is_file());
    assert_eq!(env.images_json().len(), 1);
}

#[test]
fn importing_the_same_image_again_is_a_no_op() {
    let env = TestEnv::new("again");
    let w = small_image(9).with_ref("same:1").write(&env.path("lay"));
    let id = env.import(&w.source(), None);
    let layer_inodes: Vec<u64> = w
        .diff_ids
        .iter()
        .map(|d| {
            fs::metadata(env.layer_dir(d.trim_start_matches("sha256:")))
                .unwrap()
                .ino()
        })
        .collect();
    let layers_before = snapshot(&env.root.join("layers"));
    let blobs_before = snapshot(&env.root.join("blobs"));

    let out = env.strata(&["import", &w.source()]);
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().last(), Some(id.as_str()));
    assert_eq!(
        unpack_counts(&out),
        (0, 2),
        "the second import unpacked again\n{}",
        describe(&out)
    );
    let images = env.images_json();
    assert_eq!(images.len(), 1, "one record: {images:#?}");
    assert_eq!(names_of(&images, &id), ["same:1"]);
    assert_same(
        &layers_before,
        &snapshot(&env.root.join("layers")),
        "layers/",
    );
    assert_same(&blobs_before, &snapshot(&env.root.join("blobs")), "blobs/");
    for (d, ino) in w.diff_ids.iter().zip(layer_inodes) {
        let now = fs::metadata(env.layer_dir(d.trim_start_matches("sha256:")))
            .unwrap()
            .ino();
        assert_eq!(now, ino, "layer {d} was replaced");
    }
    assert_tmp_empty(&env.root);
}

// ---------------------------------------------------------------------------------
// Bad input: refused with a message, the store unchanged

/// A store holding one good image, so "unchanged" means something.
fn env_with_good_image(name: &str) -> TestEnv {
    let env = TestEnv::new(name);
    let good = small_image(100).with_ref("good:1").write(&env.path("good"));
    env.import(&good.source(), None);
    env
}

#[track_caller]
fn assert_rejected(env: &TestEnv, source: &str, phrases: &[&str]) {
    let before = snapshot(&env.root);
    let out = env.strata(&["import", source, "bad:1"]);
    for p in phrases {
        assert_fails(&out, 1, p);
    }
    assert_same(&before, &snapshot(&env.root), source);
    assert_tmp_empty(&env.root);
    let images = env.images_json();
    assert_eq!(
        images.len(),
        1,
        "only the good image is listed: {images:#?}"
    );
    assert_eq!(
        names_of(&images, images[0]["id"].as_str().unwrap()),
        ["good:1"]
    );
}

fn good_layer_entries() -> Vec<Entry> {
    vec![
        Entry::dir("app/"),
        Entry::file("app/data", random_bytes(11, 20_000)),
        Entry::file("app/more", random_bytes(12, 20_000)),
    ]
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

#[test]
fn changed_byte_in_an_uncompressed_layer_is_a_digest_mismatch() {
    let env = env_with_good_image("flip-tar");
    let layer = LayerBlob::plain(good_layer_entries());
    let blob = format!("blobs/sha256/{}", layer.digest_hex());
    let w = Image::new(vec![layer]).write(&env.path("bad"));
    // Inside app/data's content: the tar still parses, only the digest tells.
    flip_byte(&w.dir.join(&blob), 512 * 3 + 100);
    assert_rejected(&env, &w.source(), &["digest mismatch"]);
}

#[test]
fn changed_byte_in_a_gzip_layer_is_a_digest_mismatch() {
    let env = env_with_good_image("flip-gz");
    let layer = LayerBlob::gz(good_layer_entries());
    let blob = format!("blobs/sha256/{}", layer.digest_hex());
    let len = layer.blob.len();
    let w = Image::new(vec![layer]).write(&env.path("bad"));
    flip_byte(&w.dir.join(&blob), len / 2);
    assert_rejected(&env, &w.source(), &["digest mismatch"]);
}

#[test]
fn changed_byte_in_the_config_is_a_digest_mismatch() {
    let env = env_with_good_image("flip-config");
    let w = Image::new(vec![LayerBlob::gz(good_layer_entries())]).write(&env.path("bad"));
    flip_byte(&w.dir.join(format!("blobs/sha256/{}", w.config_hex)), 3);
    assert_rejected(&env, &w.source(), &["digest mismatch"]);
}

#[test]
fn wrong_layer_size_in_the_descriptor_is_a_size_mismatch() {
    let env = env_with_good_image("size");
    let mut layer = LayerBlob::gz(good_layer_entries());
    layer.size += 7;
    let w = Image::new(vec![layer]).write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["size mismatch"]);
}

#[test]
fn wrong_diff_id_is_refused() {
    let env = env_with_good_image("diffid");
    let mut layer = LayerBlob::gz(good_layer_entries());
    layer.diff_id = format!("sha256:{}", sha256_hex(b"some other tar"));
    let w = Image::new(vec![good_base(), layer]).write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["diff_id mismatch"]);
}

#[test]
fn missing_layer_blob_is_refused() {
    let env = env_with_good_image("missing");
    let mut layer = LayerBlob::gz(good_layer_entries());
    layer.present = false;
    let w = Image::new(vec![good_base(), layer]).write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["is missing from"]);
}

#[test]
fn missing_config_blob_is_refused() {
    let env = env_with_good_image("missing-config");
    let mut image = Image::new(vec![LayerBlob::gz(good_layer_entries())]);
    image.omit_config = true;
    let w = image.write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["is missing from"]);
}

#[test]
fn truncated_gzip_is_refused_as_corrupt_or_truncated() {
    let env = env_with_good_image("trunc-gz");
    let mut layer = LayerBlob::gz(good_layer_entries());
    let cut = layer.blob[..layer.blob.len() / 2].to_vec();
    layer.set_blob_fix_descriptor(cut);
    let w = Image::new(vec![layer]).write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["corrupt or truncated"]);
}

#[test]
fn corrupt_gzip_stream_is_refused_as_corrupt_or_truncated() {
    let env = env_with_good_image("corrupt-gz");
    let mut layer = LayerBlob::gz(good_layer_entries());
    let mut bytes = layer.blob.clone();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b = 0xff;
    }
    layer.set_blob_fix_descriptor(bytes);
    let w = Image::new(vec![layer]).write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["corrupt or truncated"]);
}

#[test]
fn tar_entry_claiming_more_bytes_than_the_tar_has_is_refused() {
    let env = env_with_good_image("short-tar");
    let entries = vec![
        Entry::file("app/ok", "fine"),
        Entry::file("app/liar", random_bytes(13, 100)).claim_size(10_000),
    ];
    let raw = tar_unterminated(&entries);
    for gz in [false, true] {
        let layer = if gz {
            LayerBlob::raw(
                gzip(&raw),
                MT_TAR_GZIP,
                format!("sha256:{}", sha256_hex(&raw)),
            )
        } else {
            LayerBlob::raw(raw.clone(), MT_TAR, format!("sha256:{}", sha256_hex(&raw)))
        };
        let w = Image::new(vec![layer]).write(&env.path(&format!("bad-{gz}")));
        assert_rejected(&env, &w.source(), &["corrupt or truncated"]);
    }
}

/// The bottom layer of the good image: already in the store, so an image built on it
/// has one layer to unpack (see `error_of_the_failing_layer_is_reported_...`).
fn good_base() -> LayerBlob {
    small_image(100).layers[0].clone()
}

fn hostile(env: &TestEnv, name: &str, entries: Vec<Entry>, phrases: &[&str]) {
    let w = Image::new(vec![good_base(), LayerBlob::gz(entries)]).write(&env.path(name));
    let mut all = vec!["refused"];
    all.extend_from_slice(phrases);
    assert_rejected(env, &w.source(), &all);
}

#[test]
fn dotdot_components_are_refused() {
    let env = env_with_good_image("dotdot");
    hostile(&env, "a", vec![Entry::file("../escape", "x")], &["'..'"]);
    hostile(
        &env,
        "b",
        vec![Entry::dir("a/"), Entry::file("a/../../escape", "x")],
        &["'..'"],
    );
    hostile(
        &env,
        "c",
        vec![Entry::file(format!("{}/../../x", "d".repeat(120)), "pax")],
        &["'..'"],
    );
    assert!(!env.path("escape").exists() && !env.dir.parent().unwrap().join("escape").exists());
}

#[test]
fn entries_under_a_symlink_of_the_same_layer_are_refused() {
    let env = env_with_good_image("symparent");
    // A directory the test user could write to, had strata followed the link.
    let victim = env.mkdir("victim");
    hostile(
        &env,
        "a",
        vec![
            Entry::symlink("a", victim.display().to_string()),
            Entry::file("a/planted", "x"),
        ],
        &["symlink"],
    );
    hostile(
        &env,
        "b",
        vec![
            Entry::symlink("etc", "/etc"),
            Entry::file("etc/passwd", "x"),
        ],
        &["symlink"],
    );
    hostile(
        &env,
        "c",
        vec![
            Entry::dir("d/"),
            Entry::symlink("d/up", "../../victim"),
            Entry::dir("d/up/sub/"),
        ],
        &["symlink"],
    );
    assert_eq!(
        fs::read_dir(&victim).unwrap().count(),
        0,
        "something was written through the link"
    );
}

#[test]
fn hardlink_to_a_path_the_layer_has_not_had_is_refused() {
    let env = env_with_good_image("hardlink-unseen");
    hostile(
        &env,
        "a",
        vec![Entry::hardlink("x", "later"), Entry::file("later", "x")],
        &["has not had before it"],
    );
    // A name of a lower layer is not this layer's to link to either.
    hostile(
        &env,
        "b",
        vec![Entry::hardlink("y", "etc/os-release")],
        &["has not had before it"],
    );
}

#[test]
fn hardlink_to_outside_the_layer_is_refused() {
    let env = env_with_good_image("hardlink-outside");
    hostile(&env, "a", vec![Entry::hardlink("x", "../x")], &["'..'"]);
    hostile(
        &env,
        "b",
        vec![Entry::hardlink("x", "/etc/passwd")],
        &["has not had before it"],
    );
}

/// Layers unpack in parallel; when one fails, the others are cancelled. The error
/// reported must be the failing layer's, not a cancelled layer's "cancelled".
#[test]
fn error_of_the_failing_layer_is_reported_not_a_cancelled_layers() {
    let env = env_with_good_image("cancelled");
    let w = Image::new(vec![
        // Many entries: still unpacking when the layer above fails.
        LayerBlob::plain(
            (0..4000)
                .map(|i| Entry::file(format!("slow/{i}"), random_bytes(i, 512)))
                .collect(),
        ),
        LayerBlob::gz(vec![Entry::file("../escape", "x")]),
    ])
    .write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["refused", "'..'"]);
}

#[test]
fn nul_in_a_pax_path_is_refused() {
    let env = env_with_good_image("nul");
    hostile(
        &env,
        "a",
        vec![Entry::file(b"evil\0name".as_slice(), "x").pax_path()],
        &["NUL"],
    );
}

#[test]
fn nul_in_a_pax_link_target_is_refused() {
    let env = env_with_good_image("nul-link");
    let target = format!("/usr/{}\0/bin", "x".repeat(120));
    hostile(&env, "a", vec![Entry::symlink("l", target)], &["NUL"]);
}

#[test]
fn usage_errors_exit_2_and_an_empty_store_lists_nothing() {
    let env = TestEnv::new("usage");
    let out = env.strata(&["import"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = env.strata(&["images", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(env.images_json().is_empty());
    let out = env.strata(&["import", &env.path("does-not-exist").display().to_string()]);
    assert_fails(&out, 1, "does-not-exist");
}

#[test]
fn manifest_that_is_not_json_is_refused() {
    let env = env_with_good_image("notjson");
    let mut image = Image::new(vec![LayerBlob::gz(good_layer_entries())]);
    image.manifest_override = Some(b"this is { not json".to_vec());
    let w = image.write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["not valid JSON"]);
}

#[test]
fn unknown_layer_media_type_is_refused() {
    let env = env_with_good_image("mediatype");
    let mut layer = LayerBlob::gz(good_layer_entries());
    layer.media_type = "application/vnd.example.layer.v1.tar+lz4".into();
    let w = Image::new(vec![good_base(), layer]).write(&env.path("bad"));
    assert_rejected(&env, &w.source(), &["unsupported media type"]);
}

// ---------------------------------------------------------------------------------
// A full disk, a kill -9, two imports at once

/// Runs `script` with `sh -c` as the test user in a new user and mount namespace
/// (where that user may mount a tmpfs). None when such namespaces are not allowed.
fn in_user_mount_ns(script: &str, args: &[&str]) -> Option<std::process::Output> {
    let probe = user_command("unshare")
        .args(["-Urm", "true"])
        .output()
        .unwrap();
    if !probe.status.success() {
        eprintln!("skipped: unshare -Urm fails here: {}", stderr(&probe));
        return None;
    }
    Some(
        user_command("unshare")
            .args(["-Urm", "sh", "-c", script, "sh"])
            .args(args)
            .output()
            .unwrap(),
    )
}

fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let start = format!("=={name}==\n");
    let from = text
        .find(&start)
        .unwrap_or_else(|| panic!("no section {name} in:\n{text}"))
        + start.len();
    let rest = &text[from..];
    &rest[..rest.find("==").unwrap_or(rest.len())]
}

#[test]
fn full_disk_mid_import_is_an_error_and_leaves_the_store_as_it_was() {
    let env = TestEnv::new("fulldisk");
    let small = small_image(20)
        .with_ref("small:1")
        .write(&env.path("small"));
    // 3 MB of incompressible data does not fit a 2 MB tmpfs, gzipped or not.
    let big = Image::new(vec![
        LayerBlob::gz(vec![Entry::file("base/a", "a")]),
        LayerBlob::gz(vec![
            Entry::file("big/one", random_bytes(21, 1 << 20)),
            Entry::file("big/two", random_bytes(22, 2 << 20)),
        ]),
    ])
    .with_ref("big:1")
    .write(&env.path("big"));
    let mnt = env.mkdir("mnt");
    let script = r#"
        set -u
        D=$1 BIN=$2 SMALL=$3 BIG=$4
        mount -t tmpfs -o size=2m tmpfs "$D" || { echo "==mountfailed=="; exit 0; }
        state() { find "$D/store/blobs" "$D/store/layers" "$D/store/images" -printf '%P %y %s\n' | sort; }
        "$BIN" --root "$D/store" import -q "$SMALL" >/dev/null 2>&1; echo "==small==
rc=$?"
        echo "==before=="; state
        echo "==bigerr=="
        "$BIN" --root "$D/store" import -q "$BIG" 2>&1; echo "==big==
rc=$?"
        echo "==after=="; state
        echo "==tmp=="; ls -A "$D/store/tmp"
        echo "==images=="; "$BIN" --root "$D/store" images --json
        echo "==tmp-after-next-command=="; ls -A "$D/store/tmp"
        echo "==end=="
    "#;
    let bin = strata_bin().display().to_string();
    let Some(out) = in_user_mount_ns(
        script,
        &[
            &mnt.display().to_string(),
            &bin,
            &small.source(),
            &big.source(),
        ],
    ) else {
        return;
    };
    let text = stdout(&out);
    assert!(
        !text.contains("==mountfailed=="),
        "cannot mount a tmpfs\n{}",
        describe(&out)
    );
    assert_eq!(section(&text, "small").trim(), "rc=0", "{}", describe(&out));
    assert_eq!(section(&text, "big").trim(), "rc=1", "{}", describe(&out));
    let err = section(&text, "bigerr");
    assert!(err.contains("strata: error: "), "{err}");
    assert!(err.contains("no space left"), "{err}");
    assert_eq!(
        section(&text, "before"),
        section(&text, "after"),
        "the full disk changed the store"
    );
    assert_eq!(
        section(&text, "tmp").trim(),
        "",
        "tmp/ leftovers after the failed import"
    );
    assert_eq!(section(&text, "tmp-after-next-command").trim(), "");
    let images: serde_json::Value = serde_json::from_str(section(&text, "images")).unwrap();
    let images = images.as_array().unwrap();
    assert_eq!(images.len(), 1, "{images:#?}");
    assert_eq!(images[0]["id"], small.config_hex.as_str());
}

/// Finds a file named `name` anywhere below `dir`.
fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let rd = fs::read_dir(dir).ok()?;
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_file() && e.file_name() == name {
            return Some(p);
        }
        if ft.is_dir()
            && depth > 0
            && let Some(f) = find_file(&p, name, depth - 1)
        {
            return Some(f);
        }
    }
    None
}

#[test]
fn import_killed_mid_layer_leaves_only_whole_images_and_can_be_redone() {
    // Big enough to catch mid-layer; a debug strata hashes it at some 20 MB/s.
    const BIG: usize = 100 << 20;
    let env = TestEnv::new("crash");
    let small = small_image(30)
        .with_ref("small:1")
        .write(&env.path("small"));
    let small_id = env.import(&small.source(), None);
    let snap_before = snapshot(&env.root);

    let data = random_bytes(31, BIG);
    let big_layer = LayerBlob::from_tar(
        tar(&[Entry::dir("big/"), Entry::file("big/partial-target", &data)]),
        false,
    );
    let big = Image::new(vec![
        LayerBlob::gz(vec![Entry::file("base", "b")]),
        big_layer,
    ])
    .with_ref("big:1")
    .write(&env.path("big"));
    let big_hex = big.diff_ids[1].trim_start_matches("sha256:").to_string();

    let mut child = env
        .strata_cmd(&["import", "-q", &big.source()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the layer's file to be partly written in a staging dir, and growing.
    let tmp = env.root.join("tmp");
    let mut sizes = Vec::new();
    let caught = wait_for(60.0, || {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if let Some(f) = find_file(&tmp, "partial-target", 6)
            && let Ok(m) = fs::metadata(&f)
        {
            let s = m.len();
            if s > 0 && s < BIG as u64 && sizes.last() != Some(&s) {
                sizes.push(s);
            }
        }
        sizes.len() >= 2
    });
    assert!(caught, "the import never wrote the layer's file under tmp/");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the import finished before it could be killed (sizes seen: {sizes:?})"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        !tmp_leftovers(&env.root).is_empty(),
        "the kill left nothing to clean?"
    );

    // Only the whole image is listed, and the next command clears the leftovers.
    let images = env.images_json();
    let ids: Vec<&str> = images.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [small_id.as_str()], "{images:#?}");
    assert_tmp_empty(&env.root);
    assert_same(&snap_before, &snapshot(&env.root), "after the kill");
    assert!(!env.layer_dir(&big_hex).exists());

    // And the same import, done again, succeeds.
    let out = env.strata(&["import", &big.source()]);
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().last(), Some(big.config_hex.as_str()));
    let images = env.images_json();
    assert_eq!(images.len(), 2, "{images:#?}");
    let file = env.layer_dir(&big_hex).join("tree/big/partial-target");
    assert_eq!(fs::metadata(&file).unwrap().len(), BIG as u64);
    assert!(
        fs::read(&file).unwrap() == data,
        "the re-imported file differs"
    );
    assert_tmp_empty(&env.root);
}

/// (layers unpacked, layers already in the store) from import's summary on stderr,
/// whichever side of its words the numbers stand.
fn unpack_counts(out: &std::process::Output) -> (usize, usize) {
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.contains("unpacked") && l.contains("already"))
        .unwrap_or_else(|| panic!("no summary line\n{}", describe(out)));
    // "imported NAME: <clause with unpacked>, <clause with already>"; each clause
    // holds one number.
    let tail = line.rsplit(": ").next().unwrap();
    let count = |word: &str| -> usize {
        let clause = tail
            .split(',')
            .find(|c| c.contains(word))
            .unwrap_or_else(|| panic!("no '{word}' clause in: {line}"));
        clause
            .split(|c: char| !c.is_ascii_digit())
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no count for '{word}' in: {line}"))
    };
    (count("unpacked"), count("already"))
}

#[test]
fn two_imports_sharing_layers_at_once_both_succeed_and_unpack_the_shared_layers_once() {
    let env = TestEnv::new("concurrent");
    let shared = vec![
        LayerBlob::plain(vec![Entry::file("shared/big", random_bytes(40, 24 << 20))]),
        LayerBlob::gz(vec![Entry::file("shared/small", "s")]),
    ];
    let mut a_layers = shared.clone();
    a_layers.push(LayerBlob::gz(vec![Entry::file(
        "top/a",
        random_bytes(41, 1 << 20),
    )]));
    let mut b_layers = shared.clone();
    b_layers.push(LayerBlob::gz(vec![Entry::file(
        "top/b",
        random_bytes(42, 1 << 20),
    )]));
    let a = Image::new(a_layers).with_ref("a:1").write(&env.path("a"));
    let b = Image::new(b_layers).with_ref("b:1").write(&env.path("b"));
    let shared_hex: Vec<String> = a.diff_ids[..2]
        .iter()
        .map(|d| d.trim_start_matches("sha256:").to_string())
        .collect();
    // Make the store first, so that the watcher below can see its tmp/.
    assert_ok(&env.strata(&["images"]));

    let spawn = |src: &str| {
        env.strata_cmd(&["import", src])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let pa = spawn(&a.source());
    let pb = spawn(&b.source());
    // Watch tmp/: which staging dirs ever hold a shared layer.
    let mut staged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let tmp = env.root.join("tmp");
    let started = Instant::now();
    let (oa, ob) = std::thread::scope(|s| {
        let ha = s.spawn(|| pa.wait_with_output().unwrap());
        let hb = s.spawn(|| pb.wait_with_output().unwrap());
        while !(ha.is_finished() && hb.is_finished()) {
            for work in fs::read_dir(&tmp).into_iter().flatten().flatten() {
                for layer in fs::read_dir(work.path().join("layers"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let name = layer.file_name().to_string_lossy().into_owned();
                    if shared_hex.contains(&name) {
                        staged
                            .entry(name)
                            .or_default()
                            .insert(work.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (ha.join().unwrap(), hb.join().unwrap())
    });
    eprintln!("two imports took {:?}", started.elapsed());
    assert_ok(&oa);
    assert_ok(&ob);
    for (layer, dirs) in &staged {
        assert_eq!(
            dirs.len(),
            1,
            "layer {layer} staged by both imports: {dirs:?}"
        );
    }
    let (ua, ra) = unpack_counts(&oa);
    let (ub, rb) = unpack_counts(&ob);
    assert_eq!(
        ua + ub,
        4,
        "4 distinct layers, each unpacked once (a: {ua}, b: {ub})"
    );
    assert_eq!(ra + rb, 2, "the 2 shared layers reused by one of them");

    let mut dirs: Vec<String> = fs::read_dir(env.root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut want: BTreeSet<String> = BTreeSet::new();
    for d in a.diff_ids.iter().chain(&b.diff_ids) {
        want.insert(d.trim_start_matches("sha256:").to_string());
    }
    assert_eq!(dirs, want.into_iter().collect::<Vec<_>>());
    let db = fs::read_to_string(env.root.join("images/images.json")).unwrap();
    assert!(
        db.contains(&a.config_hex) && db.contains(&b.config_hex),
        "{db}"
    );
    let images = env.images_json();
    assert_eq!(images.len(), 2);
    assert_eq!(names_of(&images, &a.config_hex), ["a:1"]);
    assert_eq!(names_of(&images, &b.config_hex), ["b:1"]);
    assert_tmp_empty(&env.root);

    // The shared layer stays put when both are imported again at once.
    let ino = |hex: &str| fs::metadata(env.layer_dir(hex)).unwrap().ino();
    let before: Vec<u64> = shared_hex.iter().map(|h| ino(h)).collect();
    let (pa, pb) = (spawn(&a.source()), spawn(&b.source()));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    assert_ok(&oa);
    assert_ok(&ob);
    assert_eq!(unpack_counts(&oa).0 + unpack_counts(&ob).0, 0);
    let after: Vec<u64> = shared_hex.iter().map(|h| ino(h)).collect();
    assert_eq!(before, after, "a shared layer dir was replaced");
    assert_eq!(env.images_json().len(), 2);
    assert_tmp_empty(&env.root);
}
