//! A plain directory as a lower layer, for strata-overlayfs: its tree, in overlay
//! format, read once into the entries of a layer index. The union of directory
//! lowers is then the same flattened view, served by the same filesystem, as an
//! image's: the union has one code path and its lower view two sources.
//!
//! Read as kernel overlayfs and fuse-overlayfs read lowers: char 0/0 devices and
//! `.wh.NAME` files are whiteouts, `.wh..wh..opq` and the opaque xattrs
//! (`trusted.overlay.opaque`, `user.overlay.opaque`, `user.fuseoverlayfs.opaque`)
//! make a directory opaque, and `user.containers.override_stat` gives the owner and
//! mode. Every directory is opened beneath its parent's descriptor without following
//! symlinks. Sockets are left out: a layer index has no kind for them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};

use super::upper::{UpperEntry, UpperError, read_overlay_dir};
use crate::image::layer::{EntryKind, Metadata};
use crate::store::layer_index::{FLAG_OPAQUE, IndexEntry, LayerIndex, encode};

#[derive(Debug, thiserror::Error)]
#[error("cannot read the lower directory {dir}: {reason}")]
pub struct DirLayerError {
    pub dir: PathBuf,
    pub reason: String,
}

/// Indexes the lower directory `root` (named `name` in errors).
pub fn index_dir(root: OwnedFd, root_name: &Path) -> Result<LayerIndex, DirLayerError> {
    let fail = |reason: String| DirLayerError {
        dir: root_name.to_path_buf(),
        reason,
    };
    let root_stat = nix::sys::stat::fstat(&root).map_err(|e| fail(e.desc().into()))?;
    let mut entries = vec![entry(Vec::new(), &root_stat, None, Vec::new(), Vec::new())];
    let mut groups: HashMap<u64, u32> = HashMap::new();
    let mut pending: Vec<(OwnedFd, Vec<u8>, usize)> = vec![(root, Vec::new(), 0)];
    while let Some((dir, path, at)) = pending.pop() {
        let (children, opaque) = match read_overlay_dir(&dir, &path, true) {
            Ok(read) => read,
            // As fuse-overlayfs would fail only when that directory is used, one
            // directory we may not read does not fail the mount: it shows empty,
            // and we say so.
            Err(e) if e.errno() == Some(nix::errno::Errno::EACCES) && !path.is_empty() => {
                eprintln!(
                    "strata-overlayfs: warning: {}: {}; it shows empty",
                    root_name.display(),
                    upper_reason(&e)
                );
                continue;
            }
            Err(e) => return Err(fail(upper_reason(&e))),
        };
        if opaque && !path.is_empty() {
            entries[at].flags |= FLAG_OPAQUE;
        }
        for child in children {
            match child {
                UpperEntry::Whiteout { name } => {
                    let mut e = entry(join(&path, &name), &root_stat, None, Vec::new(), Vec::new());
                    e.kind = EntryKind::Whiteout;
                    e.meta = Metadata::default();
                    entries.push(e);
                }
                UpperEntry::Node {
                    name,
                    stat,
                    over,
                    xattrs,
                    ..
                } => {
                    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                    if kind == SFlag::S_IFSOCK {
                        continue;
                    }
                    let target = if kind == SFlag::S_IFLNK {
                        nix::fcntl::readlinkat(&dir, name.as_slice())
                            .map_err(|e| {
                                fail(format!("readlink {}: {e}", show(&join(&path, &name))))
                            })?
                            .into_encoded_bytes()
                    } else {
                        Vec::new()
                    };
                    let child_path = join(&path, &name);
                    let mut e = entry(child_path.clone(), &stat, over, xattrs, target);
                    if kind != SFlag::S_IFDIR && stat.st_nlink > 1 {
                        let next = groups.len() as u32 + 1;
                        e.hardlink_group = *groups.entry(stat.st_ino).or_insert(next);
                    }
                    entries.push(e);
                    if kind == SFlag::S_IFDIR {
                        let sub = nix::fcntl::openat(
                            &dir,
                            name.as_slice(),
                            OFlag::O_RDONLY
                                | OFlag::O_DIRECTORY
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        );
                        match sub {
                            Ok(sub) => pending.push((sub, child_path, entries.len() - 1)),
                            Err(nix::errno::Errno::EACCES) => eprintln!(
                                "strata-overlayfs: warning: {}: cannot open {}: permission denied; it shows empty",
                                root_name.display(),
                                show(&child_path)
                            ),
                            Err(e) => return Err(fail(format!("open {}: {e}", show(&child_path)))),
                        }
                    }
                }
            }
        }
    }
    let bytes = encode(&entries).map_err(|e| fail(e.to_string()))?;
    LayerIndex::from_bytes(bytes).map_err(fail)
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

fn entry(
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
    })
}
