//! The on-disk store.
//!
//! ```text
//! ROOT/lock                  held exclusively while the store changes
//! ROOT/blobs/sha256/<hex>    manifests, configs, compressed layers, verified
//! ROOT/layers/<hex>/tree/    one layer's files (by diff_id), owned by the user
//! ROOT/layers/<hex>/index    that layer's true metadata (see layer_index)
//! ROOT/views/<chain hex>/  the flattened view of a layer chain (unionfs::view)
//! ROOT/images/images.json    every image: id, manifest, layers, names
//! ROOT/tmp/                  work in progress; each item guarded by its own lock
//! ROOT/locks/                per-layer locks, so one layer is unpacked once, and
//!                            per-container locks, held while it runs
//! ROOT/containers/<id>/      a container: its record, writable layer, exit code
//! ```
//!
//! Everything enters through `tmp/` and becomes visible by rename, so a reader sees a
//! whole object or none, and a killed command leaves only `tmp/` litter that the next
//! command removes.

pub mod containers;
pub mod export;
pub mod fsutil;
pub mod gc;
pub mod images;
pub mod import;
pub mod layer_index;
pub mod lock;
pub mod staging;
pub mod unpack;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::image::{Digest, ImageError};
pub use images::{ImageRecord, ImageStore};
use layer_index::IndexError;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Image(#[from] ImageError),

    #[error(transparent)]
    Index(#[from] IndexError),

    #[error(
        "no space left on the device holding {path}: free some space there (or choose another store with --root or STRATA_ROOT) and retry; the store is unchanged"
    )]
    NoSpace { path: PathBuf },

    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("image '{name}' not found in the store{hint}")]
    ImageNotFound { name: String, hint: String },

    #[error("no container '{name}' in the store; `strata ps -a` lists them")]
    ContainerNotFound { name: String },

    #[error("'{prefix}' matches {count} containers; give more characters of the ID")]
    AmbiguousContainer { prefix: String, count: usize },

    #[error(
        "the name '{name}' is taken by another container: remove it (`strata rm {name}`) or choose another"
    )]
    ContainerNameTaken { name: String },

    #[error(
        "image '{image}' is used by the container {container}; remove the container first (`strata rm {container}`), or give --force to remove the image's name (its layers stay for the container)"
    )]
    ImageUsedByContainer { image: String, container: String },

    #[error("'{prefix}' matches {count} images; give more characters of the ID")]
    AmbiguousImage { prefix: String, count: usize },

    #[error(
        "the store's image list {path} is corrupt ({reason}); restore it from a backup or remove the store"
    )]
    CorruptDb { path: PathBuf, reason: String },

    #[error(
        "layer {0} is recorded but missing from the store; remove the image and import it again"
    )]
    MissingLayer(Digest),

    #[error(
        "blob {0} is recorded but missing from the store; remove the image and import it again"
    )]
    MissingBlob(Digest),

    #[error(
        "image '{image}' is in use by a running mount or container; stop it first, or give --force to remove the image now (the layers in use stay until `strata gc` finds them free)"
    )]
    ImageInUse { image: String },

    #[error("cannot save to '{dest}': {reason}")]
    BadDestination { dest: String, reason: String },
}

impl StoreError {
    /// Wraps an I/O error on `path`, singling out a full disk, whose remedy differs.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> StoreError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace {
                path: path.to_path_buf(),
            },
            _ => StoreError::Io {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// Whether the user can fix this (bad input, a full disk, a permission), as
    /// opposed to a failure of strata's own.
    pub fn is_user_error(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EACCES)
                    | Some(libc::EPERM)
                    | Some(libc::EROFS)
                    | Some(libc::ENOENT)
                    | Some(libc::ENOTDIR)
            ),
            StoreError::Index(_)
            | StoreError::CorruptDb { .. }
            | StoreError::MissingLayer(_)
            | StoreError::MissingBlob(_) => false,
            _ => true,
        }
    }
}

/// An opened store: its directories exist and leftovers of dead commands are gone.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The default root: `${XDG_DATA_HOME:-$HOME/.local/share}/strata`.
    pub fn default_root() -> Option<PathBuf> {
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".local/share"))
            })?;
        Some(data.join("strata"))
    }

    /// Opens (creating if needed) the store at `root`, and clears what dead commands
    /// left in `tmp/`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [
            store.root.clone(),
            store.blob_dir(),
            store.layers_dir(),
            store.views_dir(),
            store.images_dir(),
            store.tmp_dir(),
            store.locks_dir(),
        ] {
            fsutil::create_dir_private(&dir)?;
        }
        staging::clean_leftovers(&store.tmp_dir())?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join(Digest::ALGORITHM)
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// `layers/<hex>`: the layer with this diff_id.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }

    pub fn layer_tree(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("tree")
    }

    pub fn layer_index_path(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("index")
    }

    pub fn views_dir(&self) -> PathBuf {
        self.root.join("views")
    }

    /// `views/<hex>`: the flattened view of the chain with this ChainID.
    pub fn view_dir(&self, chain_id: &Digest) -> PathBuf {
        self.views_dir().join(chain_id.hex())
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// `locks/layer-<hex>.lock`: held exclusively while the layer is unpacked, so two
    /// imports never unpack one layer twice.
    pub fn layer_unpack_lock_path(&self, diff_id: &Digest) -> PathBuf {
        self.locks_dir()
            .join(format!("layer-{}.lock", diff_id.hex()))
    }

    /// `locks/layer-<hex>.use`: held shared by everything that relies on the layer
    /// staying (a mount, a container, an import about to reference it). Whoever deletes
    /// layers (rmi, gc) must take it exclusively first, without waiting, and skip the
    /// layer when it cannot.
    pub fn layer_use_lock_path(&self, diff_id: &Digest) -> PathBuf {
        self.locks_dir()
            .join(format!("layer-{}.use", diff_id.hex()))
    }

    /// `locks/image-<id hex>.use`: held shared by whatever runs the image (a mount, a
    /// container), so that rmi refuses exactly the images in use, not every image
    /// that shares a layer with one.
    pub fn image_use_lock_path(&self, id: &Digest) -> PathBuf {
        self.locks_dir().join(format!("image-{}.use", id.hex()))
    }

    /// Holds an image in use (a shared lock) until the lock is dropped.
    pub fn hold_image(&self, id: &Digest) -> Result<lock::FileLock, StoreError> {
        let path = self.image_use_lock_path(id);
        lock::FileLock::shared(&path).map_err(|e| StoreError::io("lock", &path, e))
    }

    /// Holds the layers of a chain in use (shared locks) until the locks are dropped.
    pub fn hold_layers(&self, diff_ids: &[Digest]) -> Result<Vec<lock::FileLock>, StoreError> {
        let mut unique: Vec<&Digest> = diff_ids.iter().collect();
        unique.sort();
        unique.dedup();
        unique
            .into_iter()
            .map(|d| {
                let path = self.layer_use_lock_path(d);
                lock::FileLock::shared(&path).map_err(|e| StoreError::io("lock", &path, e))
            })
            .collect()
    }

    /// Takes the store-wide lock for a change. Hold it for as short as possible.
    pub fn lock_for_change(&self) -> Result<lock::FileLock, StoreError> {
        let path = self.root.join("lock");
        lock::FileLock::exclusive(&path).map_err(|e| StoreError::io("lock", &path, e))
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_index_path(diff_id).is_file()
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn images(&self) -> ImageStore<'_> {
        ImageStore::new(self)
    }
}
