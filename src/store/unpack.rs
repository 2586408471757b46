//! Unpacking one layer's entries into `tree/` and building its index.
//!
//! Every write goes through directory file descriptors: a parent is opened with
//! openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from the tree's own descriptor, and
//! names are created with the *at() calls and O_NOFOLLOW/O_EXCL. A symlink in the layer
//! can therefore never redirect a write, even if the in-memory checks missed one.
//!
//! What the tree holds: regular files (data only, owner-readable), directories and
//! symlinks. Devices, fifos, whiteouts and opaque markers exist only in the index, and
//! owners, setuid bits and xattrs are recorded there, never applied.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::fsutil::open_beneath;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use super::StoreError;
use super::layer_index::{FLAG_IMPLICIT, FLAG_OPAQUE, IndexEntry, path_cmp};
use crate::image::layer::{EntryKind, EntryOp, LayerEntry, Metadata, split_last};
use crate::image::{Digest, ImageError};

/// A path ordered as the index orders it, so the map iterates in index order and a
/// directory's descendants form one range.
#[derive(Clone, PartialEq, Eq)]
struct PathKey(Vec<u8>);

impl Ord for PathKey {
    fn cmp(&self, other: &Self) -> Ordering {
        path_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for PathKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Directory modes on disk: whatever the tar says, the owner must be able to enter,
/// list and later delete.
const DIR_DISK_MODE: u32 = 0o755;
const COPY_BUFFER: usize = 256 << 10;

pub struct Unpacker {
    layer: Digest,
    tree_path: PathBuf,
    tree: OwnedFd,
    entries: BTreeMap<PathKey, IndexEntry>,
    next_group: u32,
    /// The last parent directory opened: tar entries come grouped by directory.
    parent_cache: Option<(Vec<u8>, OwnedFd)>,
    buffer: Vec<u8>,
}

impl Unpacker {
    /// Starts unpacking into `tree`, an empty directory that already exists.
    pub fn new(layer: &Digest, tree: &Path) -> Result<Unpacker, StoreError> {
        let fd = nix::fcntl::open(
            tree,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io("open", tree, e.into()))?;
        let mut entries = BTreeMap::new();
        entries.insert(PathKey(Vec::new()), implicit_dir(Vec::new()));
        Ok(Unpacker {
            layer: layer.clone(),
            tree_path: tree.to_path_buf(),
            tree: fd,
            entries,
            next_group: 1,
            parent_cache: None,
            buffer: vec![0; COPY_BUFFER],
        })
    }

    /// The index entries built so far, in index order.
    pub fn into_entries(self) -> Vec<IndexEntry> {
        self.entries.into_values().collect()
    }

    fn hostile(&self, path: &[u8], reason: impl Into<String>) -> StoreError {
        StoreError::Image(ImageError::HostileEntry {
            layer: self.layer.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.into(),
        })
    }

    fn io_error(&self, op: &'static str, path: &[u8], errno: Errno) -> StoreError {
        let path = self.tree_path.join(String::from_utf8_lossy(path).as_ref());
        StoreError::io(op, &path, errno.into())
    }

    /// Applies one entry of the layer, reading its data from `data`.
    pub fn apply(&mut self, entry: &LayerEntry, data: &mut dyn Read) -> Result<(), StoreError> {
        let path = entry.path.as_slice();
        self.check_ancestors(path)?;
        match &entry.op {
            EntryOp::Opaque => {
                self.ensure_dir(path)?;
                if let Some(e) = self.entries.get_mut(&PathKey(path.to_vec())) {
                    e.flags |= FLAG_OPAQUE;
                }
                Ok(())
            }
            EntryOp::Create(EntryKind::Dir) => self.create_dir(entry),
            EntryOp::Hardlink(target) => self.create_hardlink(path, target),
            EntryOp::Create(kind) => {
                let (parent, _) = split_last(path);
                self.ensure_dir(parent)?;
                self.remove_existing(path)?;
                match kind {
                    EntryKind::File => self.write_file(path, entry.meta.mode, data)?,
                    EntryKind::Symlink => self.write_symlink(path, &entry.symlink_target)?,
                    // Devices and fifos are recorded, never created: an unprivileged
                    // user cannot make devices, and the union serves them from the index.
                    _ => {}
                }
                self.insert(entry, *kind);
                Ok(())
            }
            EntryOp::Whiteout => {
                if path.is_empty() {
                    return Err(self.hostile(path, "a whiteout of the layer's root"));
                }
                let (parent, _) = split_last(path);
                self.ensure_dir(parent)?;
                self.remove_existing(path)?;
                self.insert(entry, EntryKind::Whiteout);
                Ok(())
            }
        }
    }

    fn insert(&mut self, entry: &LayerEntry, kind: EntryKind) {
        let record = IndexEntry {
            path: entry.path.clone(),
            kind,
            flags: 0,
            meta: entry.meta.clone(),
            symlink_target: entry.symlink_target.clone(),
            xattrs: entry.xattrs.clone(),
            hardlink_group: 0,
        };
        self.entries.insert(PathKey(entry.path.clone()), record);
    }

    /// Refuses an entry whose ancestors, as this layer has them, are not directories:
    /// writing there would follow a symlink or replace a file behind tar's back.
    fn check_ancestors(&self, path: &[u8]) -> Result<(), StoreError> {
        let mut end = 0;
        while let Some(pos) = path[end..].iter().position(|&b| b == b'/') {
            let ancestor = &path[..end + pos];
            if let Some(e) = self.entries.get(&PathKey(ancestor.to_vec())) {
                match e.kind {
                    EntryKind::Dir | EntryKind::Whiteout => {}
                    EntryKind::Symlink => {
                        return Err(self.hostile(
                            path,
                            format!(
                                "it lies under the symlink '{}'",
                                String::from_utf8_lossy(ancestor)
                            ),
                        ));
                    }
                    _ => {
                        return Err(self.hostile(
                            path,
                            format!(
                                "its parent '{}' is not a directory",
                                String::from_utf8_lossy(ancestor)
                            ),
                        ));
                    }
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    /// Makes sure `path` and its ancestors are directories, creating the missing ones
    /// as implicit. A whited-out name becomes an opaque directory: the layer deleted
    /// what was below and then made a new one.
    fn ensure_dir(&mut self, path: &[u8]) -> Result<(), StoreError> {
        let mut end = 0;
        loop {
            let next = path[end..].iter().position(|&b| b == b'/').map(|p| end + p);
            let prefix = &path[..next.unwrap_or(path.len())];
            let key = PathKey(prefix.to_vec());
            match self.entries.get(&key).map(|e| e.kind) {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::Whiteout) => {
                    self.make_dir_on_disk(prefix)?;
                    let mut dir = implicit_dir(prefix.to_vec());
                    dir.flags |= FLAG_OPAQUE;
                    self.entries.insert(key, dir);
                }
                Some(_) => {
                    return Err(self.hostile(
                        path,
                        "a directory is needed where the layer has a non-directory",
                    ));
                }
                None => {
                    self.make_dir_on_disk(prefix)?;
                    self.entries.insert(key, implicit_dir(prefix.to_vec()));
                }
            }
            match next {
                Some(n) => end = n + 1,
                None => return Ok(()),
            }
        }
    }

    fn create_dir(&mut self, entry: &LayerEntry) -> Result<(), StoreError> {
        let path = entry.path.as_slice();
        let (parent, _) = split_last(path);
        if !path.is_empty() {
            self.ensure_dir(parent)?;
        }
        let key = PathKey(path.to_vec());
        match self.entries.get(&key).map(|e| e.kind) {
            // A directory listed again (or after an implicit one) keeps its children
            // and its opaque mark; the later header's metadata wins, as in tar.
            Some(EntryKind::Dir) => {}
            Some(_) => {
                let opaque_from_whiteout = self
                    .entries
                    .get(&key)
                    .is_some_and(|e| e.kind == EntryKind::Whiteout);
                self.remove_existing(path)?;
                self.make_dir_on_disk(path)?;
                if opaque_from_whiteout {
                    let mut dir = implicit_dir(path.to_vec());
                    dir.flags = FLAG_OPAQUE;
                    self.entries.insert(key.clone(), dir);
                }
            }
            None => self.make_dir_on_disk(path)?,
        }
        let flags = self.entries.get(&key).map_or(0, |e| e.flags & FLAG_OPAQUE);
        self.insert(entry, EntryKind::Dir);
        if let Some(e) = self.entries.get_mut(&key) {
            e.flags = flags;
        }
        Ok(())
    }

    fn create_hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), StoreError> {
        if path == target {
            return Err(self.hostile(path, "a hardlink to itself"));
        }
        let Some(existing) = self.entries.get(&PathKey(target.to_vec())) else {
            return Err(self.hostile(
                path,
                format!(
                    "hardlink to '{}', which the layer has not had before it",
                    String::from_utf8_lossy(target)
                ),
            ));
        };
        if matches!(existing.kind, EntryKind::Dir | EntryKind::Whiteout) {
            return Err(self.hostile(path, "a hardlink to a directory or a deleted name"));
        }
        let kind = existing.kind;
        let (parent, _) = split_last(path);
        self.ensure_dir(parent)?;
        self.remove_existing(path)?;
        // The target may have been removed with what `path` replaced.
        let Some(target_entry) = self.entries.get_mut(&PathKey(target.to_vec())) else {
            return Err(self.hostile(path, "a hardlink to a name the entry itself replaced"));
        };
        if target_entry.hardlink_group == 0 {
            target_entry.hardlink_group = self.next_group;
            self.next_group += 1;
        }
        let mut record = target_entry.clone();
        record.path = path.to_vec();
        if matches!(kind, EntryKind::File | EntryKind::Symlink) {
            let (tparent, tname) = split_last(target);
            let (parent, name) = split_last(path);
            let tparent_fd = self.open_dir(tparent)?;
            let parent_fd = self.open_dir(parent)?;
            nix::unistd::linkat(&tparent_fd, tname, &parent_fd, name, AtFlags::empty())
                .map_err(|e| self.io_error("link", path, e))?;
        }
        self.entries.insert(PathKey(path.to_vec()), record);
        Ok(())
    }

    fn make_dir_on_disk(&mut self, path: &[u8]) -> Result<(), StoreError> {
        if path.is_empty() {
            return Ok(());
        }
        let (parent, name) = split_last(path);
        let fd = self.open_dir(parent)?;
        match nix::sys::stat::mkdirat(&fd, name, Mode::from_bits_truncate(DIR_DISK_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(self.io_error("mkdir", path, e)),
        }
    }

    fn write_file(
        &mut self,
        path: &[u8],
        mode: u32,
        data: &mut dyn Read,
    ) -> Result<(), StoreError> {
        let (parent, name) = split_last(path);
        let parent_fd = self.open_dir(parent)?;
        // setuid/setgid/sticky stay in the index: on disk they would act for the user.
        let disk_mode = Mode::from_bits_truncate((mode & 0o777) | 0o600);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&parent_fd, name, flags, disk_mode)
            .map_err(|e| self.io_error("create", path, e))?;
        let mut file = std::fs::File::from(fd);
        loop {
            let n = match data.read(&mut self.buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(StoreError::Image(ImageError::CorruptLayer {
                        layer: self.layer.clone(),
                        source: e,
                    }));
                }
            };
            file.write_all(&self.buffer[..n]).map_err(|e| {
                let path = self.tree_path.join(String::from_utf8_lossy(path).as_ref());
                StoreError::io("write", &path, e)
            })?;
        }
    }

    fn write_symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), StoreError> {
        let (parent, name) = split_last(path);
        let parent_fd = self.open_dir(parent)?;
        nix::unistd::symlinkat(target, &parent_fd, name)
            .map_err(|e| self.io_error("symlink", path, e))
    }

    /// Removes what this layer already has at `path` (tar's "the later entry wins"),
    /// from disk and from the index, children included.
    fn remove_existing(&mut self, path: &[u8]) -> Result<(), StoreError> {
        let key = PathKey(path.to_vec());
        let Some(existing) = self.entries.get(&key) else {
            return Ok(());
        };
        if path.is_empty() {
            return Err(self.hostile(path, "the layer's root cannot be replaced"));
        }
        let kind = existing.kind;
        let (parent, name) = split_last(path);
        match kind {
            EntryKind::File | EntryKind::Symlink => {
                let fd = self.open_dir(parent)?;
                nix::unistd::unlinkat(&fd, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| self.io_error("unlink", path, e))?;
            }
            EntryKind::Dir => {
                let fd = self.open_dir(parent)?;
                remove_tree_at(&fd, name).map_err(|e| self.io_error("remove", path, e))?;
                self.parent_cache = None;
                let mut prefix = path.to_vec();
                prefix.push(b'/');
                let doomed: Vec<PathKey> = self
                    .entries
                    .range(PathKey(prefix.clone())..)
                    .take_while(|(k, _)| k.0.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    self.entries.remove(&k);
                }
            }
            _ => {}
        }
        self.entries.remove(&key);
        Ok(())
    }

    /// Opens a directory of the tree, never through a symlink, never outside it.
    fn open_dir(&mut self, path: &[u8]) -> Result<OwnedFd, StoreError> {
        if let Some((cached, fd)) = &self.parent_cache
            && cached == path
        {
            return fd
                .try_clone()
                .map_err(|e| StoreError::io("dup", &self.tree_path, e));
        }
        let fd = open_beneath(
            self.tree.as_fd(),
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::EXDEV => {
                self.hostile(path, "its parent resolves through a symlink")
            }
            e => self.io_error("open", path, e),
        })?;
        let copy = fd
            .try_clone()
            .map_err(|e| StoreError::io("dup", &self.tree_path, e))?;
        self.parent_cache = Some((path.to_vec(), copy));
        Ok(fd)
    }
}

fn implicit_dir(path: Vec<u8>) -> IndexEntry {
    IndexEntry {
        path,
        kind: EntryKind::Dir,
        flags: FLAG_IMPLICIT,
        meta: Metadata {
            mode: 0o755,
            ..Metadata::default()
        },
        symlink_target: Vec::new(),
        xattrs: Vec::new(),
        hardlink_group: 0,
    }
}

/// Removes `name` under `dir`, recursively, without following symlinks.
pub fn remove_tree_at<Fd: AsFd>(dir: &Fd, name: &[u8]) -> Result<(), Errno> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::empty())?;
    // Our own trees are 0755 at least, but an upper or a foreign tree may not be.
    let _ = nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700));
    let names = crate::store::fsutil::dir_names(&fd)?;
    for child in names {
        remove_tree_at(&fd, &child)?;
    }
    nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)
}
