//! The read-only lower side of the union: a flattened view of a layer chain and the
//! layer trees that hold its data.
//!
//! Inode numbers are positions in the view (plus one, so the root is 1): the same on
//! every mount of the same chain, and never the backing files' dev/ino. The names of
//! one hardlinked node share the inode of the first of them. Everything but file data
//! is answered from the view in memory, with no syscall; reads go to the layer trees
//! through one descriptor per inode, opened beneath the layer's tree without following
//! any symlink.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use nix::fcntl::OFlag;

use super::idmap::IdMap;
use super::upper::NodeMeta;
use super::view::View;
use crate::image::layer::{EntryKind, split_last};
use crate::store::fsutil::open_beneath;

pub const BLOCK_SIZE: u32 = 4096;
/// Backing descriptors kept open at most; past it the cache starts afresh (readers
/// in flight keep theirs alive through their Arc).
const OPEN_FILES_LIMIT: usize = 4096;

/// The flattened lower layers of one mount.
pub struct Lower {
    pub view: View,
    /// Directory descriptors of each layer's `tree/`, bottom first.
    trees: Vec<OwnedFd>,
    /// Per view position: its inode (hardlinks share the first name's).
    inode: Vec<u64>,
    /// Per view position: the position of its parent directory.
    parent: Vec<u32>,
    /// Children of each directory: `children[child_start[i]..child_start[i + 1]]`.
    children: Vec<u32>,
    child_start: Vec<u32>,
    /// The positions of each hardlink group with more than one name, by inode.
    groups: HashMap<u64, Vec<u32>>,
    pub uids: IdMap,
    pub gids: IdMap,
    /// Backing files by inode, opened on first read. Bounded: see OPEN_FILES_LIMIT.
    open_files: Mutex<HashMap<u64, Arc<File>>>,
}

impl Lower {
    /// The lower `view`, whose layer `i` has its files under `trees[i]`.
    pub fn new(view: View, trees: Vec<OwnedFd>, uids: IdMap, gids: IdMap) -> Lower {
        let n = view.len();
        let parent = parents(&view);
        let mut counts = vec![0u32; n + 1];
        for &p in parent.iter().skip(1) {
            counts[p as usize + 1] += 1;
        }
        let child_start: Vec<u32> = counts
            .iter()
            .scan(0u32, |acc, &c| {
                *acc += c;
                Some(*acc)
            })
            .collect();
        let mut fill = child_start.clone();
        let mut children = vec![0u32; n.saturating_sub(1)];
        for (i, &p) in parent.iter().enumerate().skip(1) {
            children[fill[p as usize] as usize] = i as u32;
            fill[p as usize] += 1;
        }
        let mut first_of_group: HashMap<u32, u64> = HashMap::new();
        let mut groups: HashMap<u64, Vec<u32>> = HashMap::new();
        let inode = (0..n)
            .map(|i| {
                let own = i as u64 + 1;
                match view.index.entry(i).hardlink_group() {
                    0 => own,
                    g => {
                        let first = *first_of_group.entry(g).or_insert(own);
                        groups.entry(first).or_default().push(i as u32);
                        first
                    }
                }
            })
            .collect();
        groups.retain(|_, names| names.len() > 1);
        Lower {
            view,
            trees,
            inode,
            parent,
            children,
            child_start,
            groups,
            uids,
            gids,
            open_files: Mutex::new(HashMap::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.len() == 0
    }

    /// The view position an inode stands for.
    pub fn position(&self, ino: u64) -> Option<usize> {
        let pos = ino.checked_sub(1)? as usize;
        (pos < self.view.len()).then_some(pos)
    }

    pub fn inode(&self, pos: usize) -> u64 {
        self.inode[pos]
    }

    pub fn kind(&self, pos: usize) -> EntryKind {
        self.view.index.entry(pos).kind()
    }

    pub fn path(&self, pos: usize) -> &[u8] {
        self.view.index.entry(pos).path()
    }

    pub fn name(&self, pos: usize) -> &[u8] {
        split_last(self.path(pos)).1
    }

    /// The inode of the directory holding `pos` (the root's is the root).
    pub fn parent_inode(&self, pos: usize) -> u64 {
        self.inode[self.parent[pos] as usize]
    }

    pub fn children_of(&self, pos: usize) -> &[u32] {
        let (start, end) = (
            self.child_start[pos] as usize,
            self.child_start[pos + 1] as usize,
        );
        &self.children[start..end]
    }

    /// Every name of the node at `pos`: its hardlink group, or itself.
    pub fn names_of(&self, pos: usize) -> Vec<usize> {
        match self.groups.get(&self.inode[pos]) {
            Some(group) => group.iter().map(|&p| p as usize).collect(),
            None => vec![pos],
        }
    }

    pub fn lookup_child(&self, parent: usize, name: &[u8]) -> Option<usize> {
        let dir = self.path(parent);
        let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() {
            path.extend_from_slice(dir);
            path.push(b'/');
        }
        path.extend_from_slice(name);
        self.view.index.search(&path).ok()
    }

    pub fn attr(&self, pos: usize) -> FileAttr {
        let entry = self.view.index.entry(pos);
        let meta = entry.meta();
        let kind = file_type(entry.kind());
        let mtime = to_system_time(meta.mtime_sec, meta.mtime_nsec);
        let size = match kind {
            FileType::Directory => u64::from(BLOCK_SIZE),
            // A symlink's size is its target's length (tar headers say 0).
            FileType::Symlink => entry.symlink_target().len() as u64,
            _ => meta.size,
        };
        FileAttr {
            ino: INodeNo(self.inode[pos]),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (meta.mode & 0o7777) as u16,
            nlink: self.view.nlink(pos),
            uid: self.uids.show(meta.uid),
            gid: self.gids.show(meta.gid),
            rdev: libc::makedev(meta.rdev_major, meta.rdev_minor) as u32,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// The xattrs of the entry at `pos`: (name, value).
    pub fn xattrs(&self, pos: usize) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.view.index.entry(pos).xattrs().into_iter()
    }

    /// What a copy-up of `pos` gives its upper copy besides data.
    pub fn node_meta(&self, pos: usize) -> NodeMeta {
        let entry = self.view.index.entry(pos);
        let meta = entry.meta();
        NodeMeta {
            mode: meta.mode & 0o7777,
            // The image's own owner: kept in the override where the host cannot store
            // it, so that the upper (and a commit of it) loses nothing.
            uid: meta.uid,
            gid: meta.gid,
            mtime: (meta.mtime_sec, meta.mtime_nsec),
            atime: None,
            xattrs: self
                .xattrs(pos)
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            fsync: false,
            origin: Some(entry.path().to_vec()),
        }
    }

    /// The shared descriptor of an inode's backing file, opened on first use.
    pub fn backing_file(&self, pos: usize) -> Result<Arc<File>, Errno> {
        let ino = self.inode[pos];
        if let Some(file) = self
            .open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
        {
            return Ok(file.clone());
        }
        let tree = &self.trees[self.view.layer(pos)];
        let fd = open_beneath(
            tree.as_fd(),
            self.path(pos),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
        )
        .map_err(|e| Errno::from_i32(e as i32))?;
        let file = Arc::new(File::from(fd));
        let mut open = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= OPEN_FILES_LIMIT {
            open.clear();
        }
        Ok(open.entry(ino).or_insert(file).clone())
    }

    /// The descriptor of the bottom layer's tree, for statfs.
    pub fn first_tree(&self) -> Option<&OwnedFd> {
        self.trees.first()
    }
}

/// Per view position, the position of its parent directory.
fn parents(view: &View) -> Vec<u32> {
    let n = view.len();
    let mut parent = vec![0u32; n];
    let mut stack: Vec<usize> = Vec::new();
    for (i, parent_of_i) in parent.iter_mut().enumerate() {
        let path = view.index.entry(i).path();
        if !path.is_empty() {
            let (dir, _) = split_last(path);
            while let Some(&top) = stack.last() {
                if view.index.entry(top).path() == dir {
                    break;
                }
                stack.pop();
            }
            *parent_of_i = stack.last().copied().unwrap_or(0) as u32;
        }
        if view.index.entry(i).kind() == EntryKind::Dir {
            stack.push(i);
        }
    }
    parent
}

pub fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDevice | EntryKind::Whiteout => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
    }
}

pub fn to_system_time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(u64::from(nsec))
    }
}
