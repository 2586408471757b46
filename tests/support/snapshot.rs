//! The visible state of a store, to assert that a failed command left it unchanged.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::builder::sha256_hex;

/// One path under the store's blobs/, layers/ or images/: its type, size, and a hash
/// of its content (file) or target (symlink).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapEntry {
    pub path: String,
    pub kind: char,
    pub size: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(pub Vec<SnapEntry>);

/// Walks `root`'s blobs/, layers/ and images/ (whichever exist), sorted.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Vec::new();
    for top in ["blobs", "layers", "images"] {
        walk(root, Path::new(top), &mut out);
    }
    out.sort();
    Snapshot(out)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<SnapEntry>) {
    let full = root.join(rel);
    let Ok(meta) = fs::symlink_metadata(&full) else {
        return;
    };
    let ft = meta.file_type();
    let (kind, hash) = if ft.is_dir() {
        ('d', String::new())
    } else if ft.is_symlink() {
        let t = fs::read_link(&full).unwrap();
        ('l', t.display().to_string())
    } else if ft.is_file() {
        ('f', sha256_hex(&fs::read(&full).unwrap()))
    } else {
        ('?', format!("{:o}", meta.mode()))
    };
    out.push(SnapEntry {
        path: rel.display().to_string(),
        kind,
        size: if ft.is_dir() { 0 } else { meta.len() },
        hash,
    });
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&full)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), out);
        }
    }
}

/// Asserts two snapshots are equal, naming the paths that differ.
#[track_caller]
pub fn assert_same(before: &Snapshot, after: &Snapshot, context: &str) {
    if before == after {
        return;
    }
    let only_before: Vec<_> = before.0.iter().filter(|e| !after.0.contains(e)).collect();
    let only_after: Vec<_> = after.0.iter().filter(|e| !before.0.contains(e)).collect();
    panic!(
        "{context}: the store changed\nonly before: {only_before:#?}\nonly after: {only_after:#?}"
    );
}

/// The names left in ROOT/tmp (an absent tmp/ counts as empty).
pub fn tmp_leftovers(root: &Path) -> Vec<String> {
    match fs::read_dir(root.join("tmp")) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

#[track_caller]
pub fn assert_tmp_empty(root: &Path) {
    let left = tmp_leftovers(root);
    assert!(
        left.is_empty(),
        "{}/tmp holds leftovers: {left:?}",
        root.display()
    );
}
