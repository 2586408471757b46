//! A plain directory as a lower layer, for strata-overlayfs: the lower directories
//! are read one merged directory at a time, the first time the union needs it, into
//! entries of the same flattened view an image's layers give (see `lower`): the
//! union has one code path and its lower view two sources.
//!
//! Read as kernel overlayfs and fuse-overlayfs read lowers: char 0/0 devices and
//! `.wh.NAME` files are whiteouts, `.wh..wh..opq` and the opaque xattrs
//! (`trusted.overlay.opaque`, `user.overlay.opaque`, `user.fuseoverlayfs.opaque`)
//! make a directory opaque, and an override xattr gives the owner and mode: in each
//! layer the one fuse-overlayfs would read there, chosen by the layer's root (see
//! `upper::layer_override_xattr`). Each directory is opened beneath its layer's root without following
//! symlinks. Sockets are left out (a layer index has no kind for them), though like
//! any non-directory they hide the name in the layers below.
//!
//! Link counts are the lower's own, as kernel overlayfs and fuse-overlayfs report
//! them: a file's is its st_nlink in its layer (names of it hidden by a layer above
//! still count: the other names are not known until their directories are read); a
//! directory of one layer says its st_nlink, a directory merged from several says 1
//! ("not counted", as kernel overlayfs says of merged directories).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};

use super::upper::{UpperEntry, UpperError, dir_override, read_overlay_dir};
use super::view::FlatEntry;
use crate::image::layer::{EntryKind, Metadata, split_last};
use crate::store::fsutil::open_beneath;
use crate::store::layer_index::IndexEntry;

#[derive(Debug, thiserror::Error)]
#[error("cannot read the lower directory {dir}: {reason}")]
pub struct DirLayerError {
    pub dir: PathBuf,
    pub reason: String,
    /// What a request that needed it is told.
    pub errno: Errno,
}

/// One name of a merged lower directory.
#[derive(Debug)]
pub struct MergedChild {
    /// The entry that shows (its path the full path), and the layer holding it.
    pub flat: FlatEntry,
    /// For a directory: the layers, top first, whose directories of this name merge
    /// into it (where its own children will be read from).
    pub dir_layers: Box<[u16]>,
    /// For a non-directory with other names in its layer: its st_dev and st_ino
    /// there, which all its names share.
    pub link: Option<(u64, u64)>,
}

/// A name while the layers are merged, top layer first.
#[derive(Default)]
struct Merging {
    /// The topmost layer's node of this name; None while no layer had one, and for
    /// good when a whiteout came first.
    top: Option<MergedChild>,
    dir_layers: Vec<u16>,
    /// No layer further down counts for this name: a whiteout, a non-directory or
    /// an opaque directory was met.
    closed: bool,
}

/// The lower directories of one mount, bottom first, and their names for messages.
pub struct DirLayers<'a> {
    pub trees: &'a [OwnedFd],
    pub names: &'a [PathBuf],
    /// The override xattr each layer's files carry.
    pub overrides: &'a [&'static str],
}

impl DirLayers<'_> {
    /// The root of the union: the top layer's root directory, over all the layers.
    pub fn root(&self) -> Result<MergedChild, DirLayerError> {
        let top = self
            .trees
            .len()
            .checked_sub(1)
            .ok_or_else(|| DirLayerError {
                dir: PathBuf::new(),
                reason: "no lower directory".into(),
                errno: Errno::EINVAL,
            })?;
        let stat = nix::sys::stat::fstat(&self.trees[top])
            .map_err(|e| self.fail(top as u16, e.desc().into(), e))?;
        let dir_layers: Box<[u16]> = (0..self.trees.len() as u16).rev().collect();
        // A root marked for its layer's overrides carries its own in the mark.
        let over = dir_override(&self.trees[top], self.overrides[top]);
        Ok(MergedChild {
            flat: FlatEntry {
                entry: entry(Vec::new(), &stat, over, Vec::new(), Vec::new()),
                layer: top,
                nlink: if dir_layers.len() > 1 {
                    1
                } else {
                    stat.st_nlink as u32
                },
            },
            dir_layers,
            link: None,
        })
    }

    /// The children of the merged directory `path` (its full path, "" for the
    /// root), read from `layers` (top first), sorted by name. A layer's directory
    /// that we may not read shows empty, with a warning, as one that fuse-overlayfs
    /// would fail on only when it is used.
    pub fn read_merged(
        &self,
        path: &[u8],
        layers: &[u16],
    ) -> Result<Vec<MergedChild>, DirLayerError> {
        let mut names: BTreeMap<Vec<u8>, Merging> = BTreeMap::new();
        for &layer in layers {
            let Some((dir, children, opaque)) = self.read_one(layer, path)? else {
                continue;
            };
            for child in children {
                self.merge(&mut names, layer, &dir, path, child)?;
            }
            // The root's opaque mark means nothing: there is nothing beneath it.
            if opaque && !path.is_empty() {
                break;
            }
        }
        Ok(names
            .into_values()
            .filter_map(|m| {
                let mut child = m.top?;
                child.dir_layers = m.dir_layers.into_boxed_slice();
                if child.flat.entry.kind == EntryKind::Dir && child.dir_layers.len() > 1 {
                    child.flat.nlink = 1;
                }
                Some(child)
            })
            .collect())
    }

    /// Layer `layer`'s directory `path`, open, its entries and whether it is
    /// opaque; None when we may not read it (said on stderr).
    fn read_one(
        &self,
        layer: u16,
        path: &[u8],
    ) -> Result<Option<(OwnedFd, Vec<UpperEntry>, bool)>, DirLayerError> {
        let tree = &self.trees[layer as usize];
        let dir = match open_beneath(tree.as_fd(), path, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(dir) => dir,
            Err(Errno::EACCES) => {
                self.warn(
                    layer,
                    &format!("cannot open {}: permission denied", show(path)),
                );
                return Ok(None);
            }
            Err(e) => {
                return Err(self.fail(layer, format!("open {}: {}", show(path), e.desc()), e));
            }
        };
        match read_overlay_dir(&dir, path, true, self.overrides[layer as usize]) {
            Ok((children, opaque)) => Ok(Some((dir, children, opaque))),
            Err(e) if e.errno() == Some(Errno::EACCES) => {
                self.warn(layer, &upper_reason(&e));
                Ok(None)
            }
            Err(e) => {
                let errno = e.errno().unwrap_or(Errno::EIO);
                Err(self.fail(layer, upper_reason(&e), errno))
            }
        }
    }

    /// Adds what layer `layer` says of one name to what the layers above said.
    fn merge(
        &self,
        names: &mut BTreeMap<Vec<u8>, Merging>,
        layer: u16,
        dir: &OwnedFd,
        dir_path: &[u8],
        child: UpperEntry,
    ) -> Result<(), DirLayerError> {
        let (name, stat, over, xattrs, opaque) = match child {
            UpperEntry::Whiteout { name } => {
                names.entry(name).or_default().closed = true;
                return Ok(());
            }
            UpperEntry::Node {
                name,
                stat,
                over,
                xattrs,
                opaque,
                ..
            } => (name, stat, over, xattrs, opaque),
        };
        let child_path = join(dir_path, &name);
        let m = names.entry(name).or_default();
        if m.closed {
            return Ok(());
        }
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let is_dir = kind == SFlag::S_IFDIR;
        match &m.top {
            None if kind == SFlag::S_IFSOCK => {}
            None => {
                let target = if kind == SFlag::S_IFLNK {
                    let name = split_last(&child_path).1;
                    nix::fcntl::readlinkat(dir, name)
                        .map_err(|e| {
                            let what = format!("readlink {}: {}", show(&child_path), e.desc());
                            self.fail(layer, what, e)
                        })?
                        .into_encoded_bytes()
                } else {
                    Vec::new()
                };
                let links = stat.st_nlink;
                m.top = Some(MergedChild {
                    flat: FlatEntry {
                        entry: entry(child_path, &stat, over, xattrs, target),
                        layer: layer as usize,
                        nlink: u32::try_from(links).unwrap_or(u32::MAX).max(1),
                    },
                    dir_layers: Box::default(),
                    link: (!is_dir && links > 1).then_some((stat.st_dev, stat.st_ino)),
                });
            }
            // Below a directory, only directories of the same name merge into it.
            Some(top) if top.flat.entry.kind == EntryKind::Dir && is_dir => {}
            Some(_) => {
                m.closed = true;
                return Ok(());
            }
        }
        if is_dir {
            m.dir_layers.push(layer);
        }
        // A non-directory hides the name below it; so does an opaque directory
        // (its own name still shows, from here).
        m.closed = !is_dir || opaque;
        Ok(())
    }

    fn warn(&self, layer: u16, what: &str) {
        eprintln!(
            "strata-overlayfs: warning: {}: {what}; it shows empty",
            self.names[layer as usize].display()
        );
    }

    fn fail(&self, layer: u16, reason: String, errno: Errno) -> DirLayerError {
        DirLayerError {
            dir: self.names[layer as usize].clone(),
            reason,
            errno,
        }
    }
}

fn upper_reason(e: &UpperError) -> String {
    e.to_string().replace(" in the upper", "")
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The entry of a node at `path` whose lstat is `st`, with the owner and mode of
/// its override (when it has one).
pub fn entry(
    path: Vec<u8>,
    st: &FileStat,
    over: Option<super::upper::OverrideStat>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    symlink_target: Vec<u8>,
) -> IndexEntry {
    let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => EntryKind::Dir,
        SFlag::S_IFLNK => EntryKind::Symlink,
        SFlag::S_IFCHR => EntryKind::CharDevice,
        SFlag::S_IFBLK => EntryKind::BlockDevice,
        SFlag::S_IFIFO => EntryKind::Fifo,
        _ => EntryKind::File,
    };
    let (uid, gid, mode) = match over {
        Some(o) => (o.uid, o.gid, o.mode),
        None => (st.st_uid, st.st_gid, st.st_mode & 0o7777),
    };
    let rdev = st.st_rdev;
    IndexEntry {
        path,
        kind,
        flags: 0,
        meta: Metadata {
            mode,
            uid,
            gid,
            size: if kind == EntryKind::File {
                st.st_size as u64
            } else {
                0
            },
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            rdev_major: libc::major(rdev),
            rdev_minor: libc::minor(rdev),
        },
        symlink_target,
        xattrs,
        hardlink_group: 0,
    }
}

/// Opens a lower directory given by path (the caller's own choice of directory, so
/// its path may hold symlinks; nothing below it is followed).
pub fn open_lower(path: &Path) -> Result<OwnedFd, DirLayerError> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| DirLayerError {
        dir: path.to_path_buf(),
        reason: e.desc().to_string(),
        errno: e,
    })
}
