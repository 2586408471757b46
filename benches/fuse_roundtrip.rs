//! A full FUSE round trip through a mounted strata: stat with the kernel's caches
//! off (TTL 0: every stat is a lookup and a getattr answered by the daemon) and on
//! (the long TTLs strata gives immutable lower entries), a negative lookup, and
//! readdir of a 10k-name directory merged from 20 layers.
//!
//! The mounts live in a private mount namespace (and, for an ordinary user, a user
//! namespace) made before any thread starts, so they vanish with the process.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::Criterion;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use strata::image::Digest;
use strata::image::layer::{EntryKind, Metadata};
use strata::store::Store;
use strata::store::layer_index::{IndexEntry, encode};
use strata::unionfs::fs::{LOWER_TTL, UnionFs};
use strata::unionfs::idmap::IdMap;
use strata::unionfs::mount::{check_fuse_device, mount};
use strata::unionfs::view::View;

const LAYERS: usize = 20;
const BIG_DIR_NAMES: usize = 10_000;
const DEEP_FILE: &str = "deep/a/b/c/d/e/f/file";

fn entry(path: &str, kind: EntryKind) -> IndexEntry {
    IndexEntry {
        path: path.as_bytes().to_vec(),
        kind,
        flags: 0,
        meta: Metadata {
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            ..Metadata::default()
        },
        symlink_target: Vec::new(),
        xattrs: Vec::new(),
        hardlink_group: 0,
    }
}

/// A store holding a 20-layer chain: `big/` gets 500 names from each layer, and the
/// top layer has a file seven directories deep.
fn build_chain(store: &Store) -> Vec<Digest> {
    (0..LAYERS)
        .map(|layer| {
            let diff_id = Digest::of(format!("bench layer {layer}").as_bytes());
            let mut entries = vec![entry("", EntryKind::Dir), entry("big", EntryKind::Dir)];
            let per_layer = BIG_DIR_NAMES / LAYERS;
            for i in 0..per_layer {
                entries.push(entry(
                    &format!("big/name-{:05}", layer * per_layer + i),
                    EntryKind::File,
                ));
            }
            if layer == LAYERS - 1 {
                let mut dir = String::new();
                for part in DEEP_FILE.split('/') {
                    if !dir.is_empty() {
                        dir.push('/');
                    }
                    dir.push_str(part);
                    let kind = if dir == DEEP_FILE {
                        EntryKind::File
                    } else {
                        EntryKind::Dir
                    };
                    entries.push(entry(&dir, kind));
                }
            }
            std::fs::create_dir_all(store.layer_tree(&diff_id)).expect("layer tree");
            std::fs::write(
                store.layer_index_path(&diff_id),
                encode(&entries).expect("encode"),
            )
            .expect("index");
            diff_id
        })
        .collect()
}

/// A private mount namespace (and a user namespace when not root). Must run before
/// any thread exists: unshare(CLONE_NEWUSER) refuses threaded processes.
fn enter_private_namespace() -> nix::Result<()> {
    if nix::unistd::geteuid().is_root() {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    } else {
        let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)?;
        let write = |file: &str, text: String| {
            std::fs::write(file, text).map_err(|_| nix::errno::Errno::EPERM)
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

fn mount_chain(store: &Store, chain: &[Digest], at: &Path, ttl: Duration) {
    std::fs::create_dir_all(at).expect("mountpoint");
    let view = View::open(store, chain).expect("view");
    let trees = chain
        .iter()
        .map(|d| {
            std::fs::File::open(store.layer_tree(d))
                .expect("tree")
                .into()
        })
        .collect();
    let fs = UnionFs::new(
        view,
        trees,
        IdMap::of_current("uid_map"),
        IdMap::of_current("gid_map"),
    )
    .with_ttl(ttl);
    let mounted = mount(fs, at).expect("mount");
    std::thread::spawn(move || mounted.serve());
}

fn main() {
    if let Err(e) = enter_private_namespace() {
        eprintln!("fuse_roundtrip: skipped: cannot make a private namespace ({e})");
        return;
    }
    if let Err(e) = check_fuse_device() {
        eprintln!("fuse_roundtrip: skipped: {e}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("store");
    let chain = build_chain(&store);
    let uncached: PathBuf = dir.path().join("ttl-off");
    let cached: PathBuf = dir.path().join("ttl-on");
    mount_chain(&store, &chain, &uncached, Duration::ZERO);
    mount_chain(&store, &chain, &cached, LOWER_TTL);

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("fuse");
    for (label, root) in [("ttl_off", &uncached), ("ttl_on", &cached)] {
        let deep = root.join(DEEP_FILE);
        let missing = root.join("deep/a/b/c/d/e/f/absent");
        group.bench_function(format!("stat_deep_{label}"), |b| {
            b.iter(|| std::fs::symlink_metadata(black_box(&deep)).expect("stat"))
        });
        group.bench_function(format!("stat_miss_{label}"), |b| {
            b.iter(|| std::fs::symlink_metadata(black_box(&missing)).is_err())
        });
    }
    group.sample_size(20);
    let big = uncached.join("big");
    group.bench_function("readdir_10k_names_20_layers", |b| {
        b.iter(|| {
            let names = std::fs::read_dir(black_box(&big)).expect("readdir").count();
            assert_eq!(names, BIG_DIR_NAMES);
        })
    });
    group.finish();
    c.final_summary();
    // The mounts go with the mount namespace when the process exits.
}
