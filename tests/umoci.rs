//! An OCI layout that umoci built (as the unprivileged test user) imports, and what
//! strata's layers say matches what `umoci unpack --rootless` of the same image shows:
//! types, modes, file contents, symlink targets, hardlinks. Owners are not compared:
//! rootless umoci maps every owner to the user.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata::image::layer::EntryKind;
use strata::store::layer_index::LayerIndex;
use support::*;

/// One name of the flattened image, as strata's layers have it.
#[derive(Debug, Clone)]
struct Node {
    kind: EntryKind,
    mode: u32,
    link: Vec<u8>,
    /// Where its data lives: layers/<hex>/tree/<path>.
    tree: PathBuf,
    /// (layer number, hardlink group), or None.
    group: Option<(usize, u32)>,
}

fn below(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

/// Applies the layers' indexes bottom to top, as a union would.
fn flatten(root: &Path, diff_ids: &[String]) -> BTreeMap<Vec<u8>, Node> {
    let mut view: BTreeMap<Vec<u8>, Node> = BTreeMap::new();
    for (n, d) in diff_ids.iter().enumerate() {
        let hex = d.trim_start_matches("sha256:");
        let dir = root.join("layers").join(hex);
        let index = LayerIndex::open(&dir.join("index")).unwrap();
        for e in index.iter() {
            let path = e.path().to_vec();
            if e.kind() == EntryKind::Whiteout {
                view.retain(|p, _| p != &path && !below(p, &path));
                continue;
            }
            if e.kind() != EntryKind::Dir || e.is_opaque() {
                view.retain(|p, _| !below(p, &path));
            }
            if e.is_implicit() && view.get(&path).is_some_and(|n| n.kind == EntryKind::Dir) {
                continue;
            }
            let node = Node {
                kind: e.kind(),
                mode: e.meta().mode,
                link: e.symlink_target().to_vec(),
                tree: dir.join("tree").join(std::ffi::OsStr::from_bytes(&path)),
                group: (e.hardlink_group() != 0).then_some((n, e.hardlink_group())),
            };
            view.insert(path, node);
        }
    }
    view.remove(b"".as_slice());
    view
}

/// What `umoci unpack` put in rootfs/: path -> lstat.
fn walk(dir: &Path, rel: &mut Vec<u8>, out: &mut BTreeMap<Vec<u8>, fs::Metadata>) {
    for e in fs::read_dir(dir.join(std::ffi::OsStr::from_bytes(rel))).unwrap() {
        let e = e.unwrap();
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.file_name().as_bytes());
        let m = fs::symlink_metadata(dir.join(std::ffi::OsStr::from_bytes(rel))).unwrap();
        let is_dir = m.is_dir();
        out.insert(rel.clone(), m);
        if is_dir {
            walk(dir, rel, out);
        }
        rel.truncate(len);
    }
}

fn kind_of(m: &fs::Metadata) -> EntryKind {
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_char_device() {
        EntryKind::CharDevice
    } else if ft.is_block_device() {
        EntryKind::BlockDevice
    } else {
        EntryKind::File
    }
}

const BUILD: &str = r#"
set -eu
cd "$1"
umoci init --layout lay
umoci new --image lay:base
umoci unpack --rootless --image lay:base b1
R=b1/rootfs
mkdir -p $R/etc $R/usr/bin $R/usr/lib/deep/er/still $R/srv/data $R/home/user
mkdir -m 1777 $R/tmp
mkdir -m 2775 $R/srv/shared
mkdir -m 0750 $R/private
printf 'hello from umoci\n' > $R/etc/hello
chmod 640 $R/etc/hello
printf 'to be removed\n' > $R/etc/removed
printf 'dir to be removed\n' > $R/usr/lib/deep/er/still/file
head -c 300000 /dev/urandom > $R/usr/bin/tool
chmod 4755 $R/usr/bin/tool
head -c 1000 /dev/urandom > $R/usr/bin/sg
chmod 2711 $R/usr/bin/sg
printf '' > $R/etc/empty
printf 'x' > $R/home/user/ro
chmod 444 $R/home/user/ro
ln -s ../etc/hello $R/usr/bin/hello-link
ln -s /etc/hello $R/abs-link
ln -s "/opt/$(printf 'l%.0s' $(seq 1 120))/target" $R/long-link
ln $R/etc/hello $R/srv/data/hardlink
mkfifo $R/srv/fifo
name=$(printf 'n%.0s' $(seq 1 140))
printf 'long name\n' > $R/srv/$name
umoci repack --image lay:v1 b1
umoci unpack --rootless --image lay:v1 b2
R=b2/rootfs
rm $R/etc/removed
rm -r $R/usr/lib/deep
printf 'changed\n' > $R/etc/hello
printf 'new in layer 2\n' > $R/etc/new
chmod 700 $R/private
rm $R/abs-link
mkdir $R/abs-link
printf 'a dir replaced a symlink\n' > $R/abs-link/inside
umoci repack --image lay:v2 b2
umoci unpack --rootless --image lay:v2 ref
echo built
"#;

#[test]
fn umoci_built_layout_imports_as_umoci_unpacks_it() {
    let env = TestEnv::new("umoci");
    let work = env.mkdir("work");
    let out = user_command("sh")
        .args(["-c", BUILD, "sh"])
        .arg(&work)
        .output()
        .unwrap();
    assert_ok(&out);

    let layout = work.join("lay");
    let id = env.import(&format!("oci:{}:v2", layout.display()), Some("umoci:v2"));
    let images = env.images_json();
    let img = images.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(img["names"], serde_json::json!(["umoci:v2"]));
    let diff_ids: Vec<String> = img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert!(diff_ids.len() >= 2, "umoci made {} layers", diff_ids.len());

    let view = flatten(&env.root, &diff_ids);
    let mut reference = BTreeMap::new();
    walk(&work.join("ref/rootfs"), &mut Vec::new(), &mut reference);
    assert!(
        reference.len() > 20,
        "umoci's unpack is nearly empty: {}",
        reference.len()
    );

    fn names<T>(m: &BTreeMap<Vec<u8>, T>) -> Vec<String> {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }
    assert_eq!(
        names(&view),
        names(&reference),
        "strata's layers and umoci's unpack have different names"
    );

    let mut inode_groups: BTreeMap<u64, Vec<Option<(usize, u32)>>> = BTreeMap::new();
    for (path, m) in &reference {
        let p = String::from_utf8_lossy(path);
        let node = &view[path];
        assert_eq!(node.kind, kind_of(m), "'{p}': type");
        assert_eq!(
            node.mode,
            m.mode() & 0o7777,
            "'{p}': mode {:o} vs umoci's {:o}",
            node.mode,
            m.mode() & 0o7777
        );
        let on_ref = work
            .join("ref/rootfs")
            .join(std::ffi::OsStr::from_bytes(path));
        match node.kind {
            EntryKind::File => {
                assert_eq!(
                    fs::read(&node.tree).unwrap(),
                    fs::read(&on_ref).unwrap(),
                    "'{p}': content"
                );
                if m.nlink() > 1 {
                    inode_groups.entry(m.ino()).or_default().push(node.group);
                }
            }
            EntryKind::Symlink => {
                assert_eq!(
                    node.link,
                    fs::read_link(&on_ref).unwrap().as_os_str().as_bytes(),
                    "'{p}': symlink target"
                );
                assert_eq!(
                    fs::read_link(&node.tree).unwrap(),
                    fs::read_link(&on_ref).unwrap(),
                    "'{p}': symlink in tree/"
                );
            }
            EntryKind::Dir => assert!(node.tree.is_dir(), "'{p}': dir missing from tree/"),
            _ => assert!(fs::symlink_metadata(&node.tree).is_err(), "'{p}': in tree/"),
        }
    }
    // Names umoci unpacked as one inode are one hardlink group in strata's index.
    assert!(
        !inode_groups.is_empty(),
        "umoci's image has no hardlinks to compare"
    );
    for (ino, groups) in inode_groups {
        assert!(
            groups.len() > 1 && groups[0].is_some() && groups.iter().all(|g| *g == groups[0]),
            "inode {ino}: strata's groups {groups:?}"
        );
    }
    // Spot checks that the image really has what the build script made.
    assert_eq!(view[b"usr/bin/tool".as_slice()].mode, 0o4755);
    assert_eq!(view[b"tmp".as_slice()].mode, 0o1777);
    assert_eq!(view[b"srv/fifo".as_slice()].kind, EntryKind::Fifo);
    assert!(!view.contains_key(b"etc/removed".as_slice()));
    assert!(!view.keys().any(|k| k.starts_with(b"usr/lib/deep")));
    assert_eq!(view[b"abs-link".as_slice()].kind, EntryKind::Dir);
    assert_tmp_empty(&env.root);

    // Let the work dir go: umoci's trees may have modes that block removal by others.
    let _ = fs::set_permissions(&work, fs::Permissions::from_mode(0o755));
}
