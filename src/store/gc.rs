//! Removing what no image needs: `rmi` (one image, then what only it used) and `gc`
//! (everything no image references).
//!
//! What may go, and what must stay:
//! - A layer that no image record lists, unless something holds it: mounts,
//!   containers and imports hold its use lock shared, so deleting needs that lock
//!   exclusively, taken without waiting. A held layer is kept and reported.
//! - A view whose chain is no prefix of any image's layers (views are only a cache).
//! - A blob that no record lists, unless another command has work in progress under
//!   tmp/: an import decides early which blobs the store already has, and a save
//!   reads the blobs of an image that rmi may remove under it. Such blobs are kept
//!   for a later gc.
//!
//! Under the store lock the doomed objects are only renamed into a work area under
//! tmp/, which is quick; they are deleted after the lock is released. A command killed
//! meanwhile leaves them in tmp/, where the next command's cleaning finds them.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::fsutil::rename_noreplace;
use super::images::{ImageDb, ImageRecord};
use super::lock::FileLock;
use super::staging::Staging;
use super::{Store, StoreError};
use crate::image::Digest;

/// The name of our own work areas under tmp/. They never read blobs, nor do a mount's
/// view builds ("view"), so neither keeps blobs from being collected.
const WORK_PURPOSE: &str = "collect";
const BLOBLESS_WORK: &[&str] = &[WORK_PURPOSE, "view"];

/// What a collection removed, and what it had to keep.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub layers: usize,
    pub blobs: usize,
    pub views: usize,
    /// Bytes on disk the removed objects took, as du counts them.
    pub bytes: u64,
    /// Unreferenced layers kept because a mount, container or import holds them.
    pub layers_in_use: Vec<Digest>,
    /// Unreferenced blobs kept because another command is at work on the store.
    pub blobs_kept: usize,
    /// Layers that no longer exist whose lock files were removed.
    pub stale_locks: usize,
}

/// What `rmi` did to one image.
#[derive(Debug, Clone)]
pub enum Removal {
    /// One of several names was taken away; the image stays.
    Untagged { name: String, id: Digest },
    Removed {
        id: Digest,
        names: Vec<String>,
        collected: Collected,
    },
}

/// Removes the image `wanted` (every name of it), then its layers, blobs and views
/// that no other image references. Naming one of several names of an image only
/// takes that name away. An image a mount or container runs is refused unless
/// `force`; its layers that something holds (that run, or another image's that
/// shares them) stay for gc.
pub fn remove_image(store: &Store, wanted: &str, force: bool) -> Result<Removal, StoreError> {
    let work = Staging::new(&store.tmp_dir(), WORK_PURPOSE)?;
    let (image, mut collected) = {
        let _lock = store.lock_for_change()?;
        let image = store.images().load()?.find(wanted)?.clone();
        if image.names.len() > 1
            && let Some(name) = ImageDb::name_asked(wanted, &image)
        {
            store.images().update(|db| db.untag(&name))?;
            return Ok(Removal::Untagged { name, id: image.id });
        }
        if !force && image_in_use(store, &image)? {
            return Err(StoreError::ImageInUse {
                image: wanted.to_string(),
            });
        }
        if !force
            && let Some(c) = store
                .containers()?
                .into_iter()
                .find(|c| c.image.id == image.id)
        {
            return Err(StoreError::ImageUsedByContainer {
                image: wanted.to_string(),
                container: c.name.unwrap_or_else(|| c.id[..12].to_string()),
            });
        }
        let db = store.images().update(|db| {
            db.remove(&image.id);
            db.clone()
        })?;
        let collected = sweep(store, &db, &Objects::of_image(&image), work.path())?;
        (image, collected)
    };
    collected.bytes = remove_contents(work.path())?;
    Ok(Removal::Removed {
        id: image.id,
        names: image.names,
        collected,
    })
}

/// Removes every layer, blob and view no image references (held layers stay), and
/// the lock files of layers that are gone.
pub fn collect_garbage(store: &Store) -> Result<Collected, StoreError> {
    let work = Staging::new(&store.tmp_dir(), WORK_PURPOSE)?;
    let mut collected = {
        let _lock = store.lock_for_change()?;
        let db = store.images().load()?;
        sweep(store, &db, &Objects::in_store(store)?, work.path())?
    };
    collected.bytes = remove_contents(work.path())?;
    collected.stale_locks = remove_stale_locks(store)?;
    Ok(collected)
}

/// A set of store objects by kind.
#[derive(Debug, Default)]
struct Objects {
    layers: BTreeSet<Digest>,
    blobs: BTreeSet<Digest>,
    /// Chain IDs.
    views: BTreeSet<Digest>,
}

impl Objects {
    /// What one image uses: its layers, its manifest, config and layer blobs, and the
    /// views of every bottom part of its chain (mounts build the whole chain's view;
    /// a shorter one may be built for another image sharing the bottom layers).
    fn of_image(image: &ImageRecord) -> Objects {
        let mut objects = Objects::default();
        objects.add_image(image);
        objects
    }

    fn add_image(&mut self, image: &ImageRecord) {
        self.blobs.insert(image.id.clone());
        self.blobs.insert(image.manifest_digest.clone());
        let mut chain: Option<Digest> = None;
        for layer in &image.layers {
            self.layers.insert(layer.diff_id.clone());
            self.blobs.insert(layer.digest.clone());
            // The OCI ChainID, one layer further up (spec::chain_id, incrementally).
            let next = match &chain {
                None => layer.diff_id.clone(),
                Some(below) => Digest::of(format!("{below} {}", layer.diff_id).as_bytes()),
            };
            self.views.insert(next.clone());
            chain = Some(next);
        }
    }

    fn referenced_by(db: &ImageDb) -> Objects {
        let mut objects = Objects::default();
        for image in &db.images {
            objects.add_image(image);
        }
        objects
    }

    /// Everything the store holds. Names that are not digests are not ours to judge.
    fn in_store(store: &Store) -> Result<Objects, StoreError> {
        Ok(Objects {
            layers: digests_in(&store.layers_dir())?,
            blobs: digests_in(&store.blob_dir())?,
            views: digests_in(&store.views_dir())?,
        })
    }
}

fn digests_in(dir: &Path) -> Result<BTreeSet<Digest>, StoreError> {
    let listing = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    let mut out = BTreeSet::new();
    for entry in listing {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if let Some(d) = entry
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
        {
            out.insert(d);
        }
    }
    Ok(out)
}

/// Whether a mount or container runs the image right now (its use lock is held).
fn image_in_use(store: &Store, image: &ImageRecord) -> Result<bool, StoreError> {
    let path = store.image_use_lock_path(&image.id);
    let free = FileLock::try_exclusive(&path).map_err(|e| StoreError::io("lock", &path, e))?;
    Ok(free.is_none())
}

/// Moves the `candidates` that `db` does not reference into `work`. The caller holds
/// the store lock, so no import publishes meanwhile.
fn sweep(
    store: &Store,
    db: &ImageDb,
    candidates: &Objects,
    work: &Path,
) -> Result<Collected, StoreError> {
    let mut live = Objects::referenced_by(db);
    // Containers keep what they were made from, even once the image is gone.
    for image in store.images_of_containers()? {
        live.add_image(&image);
    }
    let mut collected = Collected::default();
    for chain in candidates.views.difference(&live.views) {
        let name = format!("view-{}", chain.hex());
        if move_into(&store.view_dir(chain), work, &name)? {
            collected.views += 1;
        }
    }
    for diff_id in candidates.layers.difference(&live.layers) {
        let dir = store.layer_dir(diff_id);
        if !dir.exists() {
            continue;
        }
        let path = store.layer_use_lock_path(diff_id);
        // Held until the layer is out of layers/: whoever waits for it to hold the
        // layer then finds it missing, and unpacks it again.
        match FileLock::try_exclusive(&path).map_err(|e| StoreError::io("lock", &path, e))? {
            Some(_lock) => {
                if move_into(&dir, work, &format!("layer-{}", diff_id.hex()))? {
                    collected.layers += 1;
                }
            }
            None => collected.layers_in_use.push(diff_id.clone()),
        }
    }
    let blobs: Vec<&Digest> = candidates
        .blobs
        .difference(&live.blobs)
        .filter(|d| store.has_blob(d))
        .collect();
    if blobs.is_empty() {
        return Ok(collected);
    }
    if others_at_work(store)? {
        collected.blobs_kept = blobs.len();
        return Ok(collected);
    }
    let mut moved = Vec::new();
    for digest in blobs {
        if move_into(&store.blob_path(digest), work, &blob_work_name(digest))? {
            moved.push(digest);
        }
    }
    // A command that started before the moves may have seen these blobs and be
    // counting on them: it is still at work (it cannot publish while we hold the
    // store lock). Then they go back, to be collected another time.
    if others_at_work(store)? {
        for digest in &moved {
            rename_noreplace(&work.join(blob_work_name(digest)), &store.blob_path(digest))?;
        }
        collected.blobs_kept = moved.len();
    } else {
        collected.blobs = moved.len();
    }
    Ok(collected)
}

fn blob_work_name(digest: &Digest) -> String {
    format!("blob-{}", digest.hex())
}

/// Renames `from` to `work/name`; false if `from` does not exist.
fn move_into(from: &Path, work: &Path, name: &str) -> Result<bool, StoreError> {
    match fs::rename(from, work.join(name)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("move", from, e)),
    }
}

/// Whether another strata command has a live work area under tmp/ that may use blobs.
fn others_at_work(store: &Store) -> Result<bool, StoreError> {
    let tmp = store.tmp_dir();
    let listing = fs::read_dir(&tmp).map_err(|e| StoreError::io("list", &tmp, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| StoreError::io("list", &tmp, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let blobless = BLOBLESS_WORK
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|r| r.starts_with('-')));
        if name.ends_with(".lock") && !blobless && is_locked(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether somebody holds a lock on `path`. Unlike FileLock, never creates the file.
fn is_locked(path: &Path) -> Result<bool, StoreError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("open", path, e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(StoreError::io("lock", path, e.into())),
    }
}

/// Deletes everything in `dir`; returns the bytes it took on disk.
fn remove_contents(dir: &Path) -> Result<u64, StoreError> {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    let listing = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in listing {
        let path = entry.map_err(|e| StoreError::io("list", dir, e))?.path();
        bytes += remove_tree(&path, &mut seen).map_err(|e| StoreError::io("remove", &path, e))?;
    }
    Ok(bytes)
}

/// Removes `path` and all below it, counting blocks as du does (hardlinks once).
fn remove_tree(path: &Path, seen: &mut HashSet<(u64, u64)>) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        // Layer trees are unpacked 0755, but a directory we cannot list or empty
        // would stop the whole removal.
        if meta.mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        }
        let mut bytes = meta.blocks() * 512;
        for entry in fs::read_dir(path)? {
            bytes += remove_tree(&entry?.path(), seen)?;
        }
        fs::remove_dir(path)?;
        return Ok(bytes);
    }
    fs::remove_file(path)?;
    let first_link = meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino()));
    Ok(if first_link { meta.blocks() * 512 } else { 0 })
}

/// Removes `locks/layer-<hex>.{use,lock}` of layers that no longer exist, when both
/// can be taken (nobody is unpacking or holding that layer). Returns how many layers'.
fn remove_stale_locks(store: &Store) -> Result<usize, StoreError> {
    let dir = store.locks_dir();
    let listing = fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))?;
    let mut layers = BTreeSet::new();
    let mut images = BTreeSet::new();
    for entry in listing {
        let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
        let name = entry.file_name();
        if let Some(hex) = name
            .to_str()
            .and_then(|n| n.strip_prefix("image-"))
            .and_then(|n| n.strip_suffix(".use"))
            && let Ok(id) = Digest::from_hex(hex)
        {
            images.insert(id);
        }
        if let Some((hex, kind)) = name
            .to_str()
            .and_then(|n| n.strip_prefix("layer-"))
            .and_then(|n| n.rsplit_once('.'))
            && (kind == "use" || kind == "lock")
            && let Ok(d) = Digest::from_hex(hex)
        {
            layers.insert(d);
        }
    }
    remove_stale_image_locks(store, images)?;
    let mut removed = 0;
    for diff_id in layers {
        if store.layer_dir(&diff_id).exists() {
            continue;
        }
        let unpack = store.layer_unpack_lock_path(&diff_id);
        let usage = store.layer_use_lock_path(&diff_id);
        let lock = |p: &Path| FileLock::try_exclusive(p).map_err(|e| StoreError::io("lock", p, e));
        let Some(_unpacking) = lock(&unpack)? else {
            continue;
        };
        let Some(_using) = lock(&usage)? else {
            continue;
        };
        // An import may have published the layer before we took its locks.
        if store.layer_dir(&diff_id).exists() {
            continue;
        }
        // Removed while held: whoever opened the old file notices (FileLock checks
        // the path still names what it locked) and takes a new one.
        for path in [&unpack, &usage] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove", path, e)),
            }
        }
        removed += 1;
    }
    Ok(removed)
}

/// Removes the use locks of images that are gone and that nothing holds (a held one
/// belongs to a mount of an image removed by force; it goes with a later gc).
fn remove_stale_image_locks(store: &Store, candidates: BTreeSet<Digest>) -> Result<(), StoreError> {
    let db = store.images().load()?;
    for id in candidates
        .into_iter()
        .filter(|id| !db.images.iter().any(|i| &i.id == id))
    {
        let path = store.image_use_lock_path(&id);
        if FileLock::try_exclusive(&path)
            .map_err(|e| StoreError::io("lock", &path, e))?
            .is_some()
        {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove", &path, e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::spec::chain_id;
    use crate::store::images::LayerRecord;

    fn record(seed: &str, layers: &[&str], names: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(seed.as_bytes()),
            manifest_digest: Digest::of(format!("{seed}/m").as_bytes()),
            manifest_media_type: "m".into(),
            layers: layers
                .iter()
                .map(|l| LayerRecord {
                    diff_id: Digest::of(l.as_bytes()),
                    digest: Digest::of(format!("{l}.gz").as_bytes()),
                    media_type: "l".into(),
                    size: 1,
                    uncompressed_size: 1,
                })
                .collect(),
            names: names.iter().map(|s| s.to_string()).collect(),
            created: None,
            imported: 0,
        }
    }

    #[test]
    fn an_image_uses_the_views_of_every_bottom_part_of_its_chain() {
        let image = record("a", &["l1", "l2", "l3"], &[]);
        let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        let objects = Objects::of_image(&image);
        let want: BTreeSet<Digest> = (1..=3).map(|n| chain_id(&diff_ids[..n]).unwrap()).collect();
        assert_eq!(objects.views, want);
        assert_eq!(objects.layers.len(), 3);
        assert_eq!(objects.blobs.len(), 5);
    }

    /// A store with two images sharing a bottom layer, every object on disk.
    fn store_with(images: &[ImageRecord]) -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("s")).unwrap();
        let _lock = store.lock_for_change().unwrap();
        for image in images {
            let objects = Objects::of_image(image);
            for d in &objects.blobs {
                fs::write(store.blob_path(d), d.hex()).unwrap();
            }
            for d in &objects.layers {
                fs::create_dir_all(store.layer_tree(d).join("etc/deep")).unwrap();
                fs::write(store.layer_tree(d).join("etc/deep/f"), vec![1u8; 5000]).unwrap();
                fs::write(store.layer_index_path(d), b"i").unwrap();
            }
            for d in &objects.views {
                fs::create_dir_all(store.view_dir(d)).unwrap();
            }
            store.images().update(|db| db.add(image.clone())).unwrap();
        }
        (tmp, store)
    }

    #[test]
    fn rmi_removes_what_only_that_image_used() {
        let a = record("a", &["base", "a1"], &["a:1"]);
        let b = record("b", &["base", "b1"], &["b:1", "b:2"]);
        let (_tmp, store) = store_with(&[a.clone(), b.clone()]);

        let untagged = remove_image(&store, "b:2", false).unwrap();
        assert!(matches!(untagged, Removal::Untagged { ref name, .. } if name == "b:2"));
        assert_eq!(store.images().load().unwrap().images.len(), 2);

        let Removal::Removed { collected, .. } = remove_image(&store, "a:1", false).unwrap() else {
            panic!("a:1 was only untagged");
        };
        assert_eq!(
            (collected.layers, collected.blobs, collected.views),
            (1, 3, 1)
        );
        assert!(collected.bytes >= 5000, "{} bytes", collected.bytes);
        let base = Digest::of(b"base");
        assert!(store.has_layer(&base));
        assert!(!store.layer_dir(&Digest::of(b"a1")).exists());
        assert!(store.view_dir(&base).exists(), "b's bottom view went");
        for d in &Objects::of_image(&b).blobs {
            assert!(store.has_blob(d));
        }
        assert!(matches!(
            remove_image(&store, "a:1", false),
            Err(StoreError::ImageNotFound { .. })
        ));
        assert!(fs::read_dir(store.tmp_dir()).unwrap().next().is_none());
    }

    #[test]
    fn held_layers_refuse_rmi_and_survive_force_and_gc() {
        let a = record("a", &["base", "a1"], &["a:1"]);
        let (_tmp, store) = store_with(&[a]);
        let a1 = Digest::of(b"a1");
        let held = FileLock::shared(&store.layer_use_lock_path(&a1)).unwrap();
        let running = store.hold_image(&Digest::of(b"a")).unwrap();
        assert!(matches!(
            remove_image(&store, "a:1", false),
            Err(StoreError::ImageInUse { .. })
        ));
        drop(running);
        let Removal::Removed { collected, .. } = remove_image(&store, "a:1", true).unwrap() else {
            panic!("not removed");
        };
        assert_eq!(collected.layers_in_use, vec![a1.clone()]);
        assert_eq!(collected.layers, 1);
        assert!(store.has_layer(&a1));
        let again = collect_garbage(&store).unwrap();
        assert_eq!((again.layers, again.layers_in_use.len()), (0, 1));
        drop(held);
        let last = collect_garbage(&store).unwrap();
        assert_eq!(last.layers, 1);
        assert!(!store.layer_dir(&a1).exists());
        // base's lock files went with the gc before; a1's go now.
        assert_eq!(last.stale_locks, 1);
        assert!(fs::read_dir(store.locks_dir()).unwrap().next().is_none());
    }

    #[test]
    fn blobs_stay_while_another_command_is_at_work() {
        let a = record("a", &["l"], &["a:1"]);
        let (_tmp, store) = store_with(std::slice::from_ref(&a));
        let import = Staging::new(&store.tmp_dir(), "import").unwrap();
        let Removal::Removed { collected, .. } = remove_image(&store, "a:1", false).unwrap() else {
            panic!("not removed");
        };
        assert_eq!((collected.blobs, collected.blobs_kept), (0, 3));
        assert!(store.has_blob(&a.id));
        drop(import);
        let later = collect_garbage(&store).unwrap();
        assert_eq!(later.blobs, 3);
        assert!(!store.has_blob(&a.id));
    }
}
