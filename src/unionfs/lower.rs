//! The read-only lower side of the union: a flattened view of a layer chain and the
//! layer trees that hold its data.
//!
//! The view has two sources. An image's is complete before the mount: the store
//! flattened its layers once (`View::open`). Plain lower directories (strata-
//! overlayfs) are read as the union is used: a merged directory's children are read
//! from every lower the first time that directory is looked in or listed, flattened
//! the same way into a small view of their own, and kept: the lowers do not change
//! while mounted. Both are held as pieces of one view: a piece is a `View` of
//! consecutive positions, either a whole image (whose directories' children are in
//! it too) or the children of one directory (whose directories' children are each a
//! piece of their own, once read). After that first read, a lookup is one search in
//! memory either way, and no request but the first in a directory costs a syscall.
//!
//! Inode numbers are positions in the view plus one (so the root is 1): the same on
//! every mount of the same image; for plain lowers, in the order their directories
//! were read, stable while mounted. Never the backing files' dev/ino. The names of
//! one hardlinked node share the inode of the first of them met (plain lowers: the
//! names of one st_dev/st_ino in one layer). Everything but file data is answered
//! from the view in memory; reads go to the layer trees through one descriptor per
//! inode, opened beneath the layer's tree without following any symlink.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use nix::fcntl::OFlag;

use super::dirlayer::{DirLayerError, DirLayers, MergedChild};
use super::grow::Grow;
use super::idmap::IdMap;
use super::upper::{NodeMeta, layer_override_xattr};
use super::view::{FlatEntry, View};
use crate::image::layer::{EntryKind, split_last};
use crate::store::StoreError;
use crate::store::fsutil::open_beneath;
use crate::store::layer_index::EntryRef;

pub const BLOCK_SIZE: u32 = 4096;
/// Backing descriptors kept open at most; past it the cache starts afresh (readers
/// in flight keep theirs alive through their Arc).
const OPEN_FILES_LIMIT: usize = 4096;

/// The flattened lower layers of one mount.
pub struct Lower {
    /// Positions from 0: an image's whole view, or the root of plain lowers.
    first: Piece,
    /// The pieces read since, in position order (plain lowers only).
    more: Grow<Piece>,
    /// Positions known: the end of the last piece.
    known: AtomicUsize,
    /// Where unread directories come from; None when the view is complete.
    dirs: Option<DirSource>,
    /// Directory descriptors of each layer's `tree/`, bottom first.
    trees: Vec<OwnedFd>,
    /// The positions of each hardlink group with more than one name, by inode.
    groups: RwLock<HashMap<u64, Vec<u32>>>,
    pub uids: IdMap,
    pub gids: IdMap,
    /// Backing files by inode, opened on first read. Bounded: see OPEN_FILES_LIMIT.
    open_files: Mutex<HashMap<u64, Arc<File>>>,
}

/// Consecutive positions of the view, from `base`.
struct Piece {
    base: usize,
    view: View,
    /// Per entry: its inode (hardlinks share the first name's).
    inode: Vec<u64>,
    /// Per entry: the position of its parent directory.
    parent: Vec<u32>,
    children: Children,
}

/// Where the directories of a piece find their children.
enum Children {
    /// In the piece itself (an image's whole view):
    /// `children[child_start[i]..child_start[i + 1]]`.
    Within {
        children: Vec<u32>,
        child_start: Vec<u32>,
    },
    /// Each directory's in a piece of its own, read on first use: per entry, the
    /// layers (top first) its directory merges, and the index in `more` of the
    /// piece its children were read into.
    Apart {
        layers: Vec<Box<[u16]>>,
        read: Vec<OnceLock<usize>>,
    },
}

/// Plain lower directories, read as they are used.
struct DirSource {
    /// The lower directories as they were given, bottom first, for messages.
    names: Vec<PathBuf>,
    /// The override xattr each layer's files carry, bottom first.
    overrides: Vec<&'static str>,
    /// Held while a directory is read: one read at a time, each directory once.
    /// By (layer, st_dev, st_ino): the inode of a hardlinked file's first name.
    links: Mutex<HashMap<(u16, u64, u64), u64>>,
}

impl Piece {
    fn len(&self) -> usize {
        self.view.len()
    }

    fn end(&self) -> usize {
        self.base + self.len()
    }
}

/// The children of a lower directory, as positions.
pub enum ChildIter<'a> {
    Listed(std::slice::Iter<'a, u32>),
    Run(Range<usize>),
}

impl Iterator for ChildIter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            ChildIter::Listed(it) => it.next().map(|&p| p as usize),
            ChildIter::Run(r) => r.next(),
        }
    }
}

fn dir_errno(e: &DirLayerError) -> Errno {
    Errno::from_i32(e.errno as i32)
}

impl Lower {
    /// The complete lower `view` of an image, whose layer `i` has its files under
    /// `trees[i]`.
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
        let first = Piece {
            base: 0,
            view,
            inode,
            parent,
            children: Children::Within {
                children,
                child_start,
            },
        };
        Lower::of_pieces(first, None, trees, groups, uids, gids)
    }

    /// The union of the plain lower directories `trees` (bottom first, named
    /// `names`), of which only the root is known yet: the rest is read as it is
    /// used.
    pub fn of_dirs(
        trees: Vec<OwnedFd>,
        names: Vec<PathBuf>,
        uids: IdMap,
        gids: IdMap,
    ) -> Result<Lower, DirLayerError> {
        let overrides: Vec<&'static str> = trees.iter().map(layer_override_xattr).collect();
        let root = DirLayers {
            trees: &trees,
            names: &names,
            overrides: &overrides,
        }
        .root()?;
        let first = dir_piece(0, 0, vec![root], vec![1]).map_err(|e| DirLayerError {
            dir: names.last().cloned().unwrap_or_default(),
            reason: e.to_string(),
            errno: nix::errno::Errno::EIO,
        })?;
        let source = DirSource {
            names,
            overrides,
            links: Mutex::new(HashMap::new()),
        };
        Ok(Lower::of_pieces(
            first,
            Some(source),
            trees,
            HashMap::new(),
            uids,
            gids,
        ))
    }

    fn of_pieces(
        first: Piece,
        dirs: Option<DirSource>,
        trees: Vec<OwnedFd>,
        groups: HashMap<u64, Vec<u32>>,
        uids: IdMap,
        gids: IdMap,
    ) -> Lower {
        Lower {
            known: AtomicUsize::new(first.end()),
            first,
            more: Grow::default(),
            dirs,
            trees,
            groups: RwLock::new(groups),
            uids,
            gids,
            open_files: Mutex::new(HashMap::new()),
        }
    }

    /// Positions known so far (all of them, for an image).
    pub fn len(&self) -> usize {
        self.known.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.first.len() == 0
    }

    /// The piece holding position `pos` (known), and `pos`'s place in it.
    fn locate(&self, pos: usize) -> (&Piece, usize) {
        if pos < self.first.end() {
            return (&self.first, pos);
        }
        let k = self.more.partition_point(|p| p.base <= pos);
        let piece = k
            .checked_sub(1)
            .and_then(|k| self.more.get(k))
            .filter(|p| pos < p.end())
            .unwrap_or_else(|| panic!("lower position {pos} is not known"));
        (piece, pos - piece.base)
    }

    /// The view position an inode stands for.
    pub fn position(&self, ino: u64) -> Option<usize> {
        let pos = ino.checked_sub(1)? as usize;
        (pos < self.len()).then_some(pos)
    }

    pub fn inode(&self, pos: usize) -> u64 {
        let (piece, i) = self.locate(pos);
        piece.inode[i]
    }

    pub fn kind(&self, pos: usize) -> EntryKind {
        let (piece, i) = self.locate(pos);
        piece.view.index.entry(i).kind()
    }

    pub fn path(&self, pos: usize) -> &[u8] {
        let (piece, i) = self.locate(pos);
        piece.view.index.entry(i).path()
    }

    pub fn name(&self, pos: usize) -> &[u8] {
        split_last(self.path(pos)).1
    }

    /// The size stat shows for `pos`; a regular file's is its data's length.
    pub fn size(&self, pos: usize) -> u64 {
        let entry = self.entry(pos);
        shown_size(&entry, entry.meta().size)
    }

    /// The view's entry at `pos`, read in place.
    pub fn entry(&self, pos: usize) -> EntryRef<'_> {
        let (piece, i) = self.locate(pos);
        piece.view.index.entry(i)
    }

    /// The inode of the directory holding `pos` (the root's is the root).
    pub fn parent_inode(&self, pos: usize) -> u64 {
        let (piece, i) = self.locate(pos);
        self.inode(piece.parent[i] as usize)
    }

    /// The piece that holds the children of the directory `pos`, read now if they
    /// were not yet; None for a non-directory.
    fn children_piece(&self, pos: usize) -> Result<Option<&Piece>, Errno> {
        let (piece, i) = self.locate(pos);
        match &piece.children {
            Children::Within { .. } => Ok(Some(piece)),
            Children::Apart { read, .. } => {
                if piece.view.index.entry(i).kind() != EntryKind::Dir {
                    return Ok(None);
                }
                let k = match read[i].get() {
                    Some(&k) => k,
                    None => self.read_dir(pos, piece, i)?,
                };
                Ok(self.more.get(k))
            }
        }
    }

    /// The children of the directory at `pos`, read from the lower directories if
    /// they were not yet.
    pub fn children_of(&self, pos: usize) -> Result<ChildIter<'_>, Errno> {
        let Some(piece) = self.children_piece(pos)? else {
            return Ok(ChildIter::Run(0..0));
        };
        Ok(match &piece.children {
            Children::Within {
                children,
                child_start,
            } => {
                let i = pos - piece.base;
                let (start, end) = (child_start[i] as usize, child_start[i + 1] as usize);
                ChildIter::Listed(children[start..end].iter())
            }
            Children::Apart { .. } => ChildIter::Run(piece.base..piece.end()),
        })
    }

    /// The child `name` of the directory at `pos`: one search of the piece that
    /// holds its children (read first if they were not yet).
    pub fn lookup_child(&self, parent: usize, name: &[u8]) -> Result<Option<usize>, Errno> {
        let Some(piece) = self.children_piece(parent)? else {
            return Ok(None);
        };
        let dir = self.path(parent);
        let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() {
            path.extend_from_slice(dir);
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Ok(piece.view.index.search(&path).ok().map(|i| piece.base + i))
    }

    /// The position of a lower path ("" the root), found name by name.
    pub fn find_path(&self, path: &[u8]) -> Result<Option<usize>, Errno> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut pos = 0;
        for name in path.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
            match self.lookup_child(pos, name)? {
                Some(p) => pos = p,
                None => return Ok(None),
            }
        }
        Ok(Some(pos))
    }

    /// Reads the children of the directory at `pos` (entry `i` of `piece`) from
    /// the lower directories into a piece of their own; returns its index in `more`.
    fn read_dir(&self, pos: usize, piece: &Piece, i: usize) -> Result<usize, Errno> {
        let (Some(source), Children::Apart { layers, read }) = (&self.dirs, &piece.children) else {
            return Err(Errno::EIO);
        };
        let mut links = source.links.lock().unwrap_or_else(|e| e.into_inner());
        // Another thread may have read it while we waited.
        if let Some(&k) = read[i].get() {
            return Ok(k);
        }
        let dirs = DirLayers {
            trees: &self.trees,
            names: &source.names,
            overrides: &source.overrides,
        };
        let merged = dirs.read_merged(self.path(pos), &layers[i]).map_err(|e| {
            eprintln!("strata-overlayfs: error: {e}");
            dir_errno(&e)
        })?;
        let base = self.len();
        let inode = self.number(base, &merged, &mut links);
        let new = dir_piece(base, pos, merged, inode).map_err(|e| {
            eprintln!(
                "strata-overlayfs: error: {}: {e}",
                String::from_utf8_lossy(self.path(pos))
            );
            Errno::EIO
        })?;
        let end = new.end();
        let k = self.more.push(new);
        self.known.store(end, Ordering::Release);
        let _ = read[i].set(k);
        Ok(k)
    }

    /// The inodes of `merged`, to be positions `base..`: their own, but for names
    /// of a hardlinked file met before, whose first name's they share.
    fn number(
        &self,
        base: usize,
        merged: &[MergedChild],
        links: &mut HashMap<(u16, u64, u64), u64>,
    ) -> Vec<u64> {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        merged
            .iter()
            .enumerate()
            .map(|(j, child)| {
                let own = (base + j) as u64 + 1;
                let Some((dev, ino)) = child.link else {
                    return own;
                };
                let first = *links
                    .entry((child.flat.layer as u16, dev, ino))
                    .or_insert(own);
                groups.entry(first).or_default().push((base + j) as u32);
                first
            })
            .collect()
    }

    /// Every name of the node at `pos` known so far: its hardlink group, or itself.
    /// (Plain lowers: names in directories not read yet are not known.)
    pub fn names_of(&self, pos: usize) -> Vec<usize> {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        match groups.get(&self.inode(pos)).filter(|g| g.len() > 1) {
            Some(group) => group.iter().map(|&p| p as usize).collect(),
            None => vec![pos],
        }
    }

    pub fn attr(&self, pos: usize) -> FileAttr {
        let (piece, i) = self.locate(pos);
        let entry = piece.view.index.entry(i);
        let meta = entry.meta();
        let kind = file_type(entry.kind());
        let mtime = to_system_time(meta.mtime_sec, meta.mtime_nsec);
        let size = shown_size(&entry, meta.size);
        FileAttr {
            ino: INodeNo(piece.inode[i]),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (meta.mode & 0o7777) as u16,
            nlink: piece.view.nlink(i),
            uid: self.uids.show(meta.uid),
            gid: self.gids.show(meta.gid),
            rdev: libc::makedev(meta.rdev_major, meta.rdev_minor) as u32,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// The xattrs of the entry at `pos`: (name, value).
    pub fn xattrs(&self, pos: usize) -> impl Iterator<Item = (&[u8], &[u8])> {
        let (piece, i) = self.locate(pos);
        piece.view.index.entry(i).xattrs().into_iter()
    }

    /// What a copy-up of `pos` gives its upper copy besides data.
    pub fn node_meta(&self, pos: usize) -> NodeMeta {
        let (piece, i) = self.locate(pos);
        let entry = piece.view.index.entry(i);
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
        let (piece, i) = self.locate(pos);
        let ino = piece.inode[i];
        if let Some(file) = self
            .open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
        {
            return Ok(file.clone());
        }
        let tree = &self.trees[piece.view.layer(i)];
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

/// The piece of one directory's children `merged`, read from plain lowers: at
/// positions from `base`, under the directory at `parent`, numbered `inode`.
fn dir_piece(
    base: usize,
    parent: usize,
    merged: Vec<MergedChild>,
    inode: Vec<u64>,
) -> Result<Piece, StoreError> {
    let n = merged.len();
    let mut layers = Vec::with_capacity(n);
    let mut flat: Vec<FlatEntry> = Vec::with_capacity(n);
    for child in merged {
        layers.push(child.dir_layers);
        flat.push(child.flat);
    }
    Ok(Piece {
        base,
        view: View::from_flat(flat)?,
        inode,
        parent: vec![parent as u32; n],
        children: Children::Apart {
            layers,
            read: (0..n).map(|_| OnceLock::new()).collect(),
        },
    })
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

/// The size stat shows for `entry`, whose metadata says `size`.
fn shown_size(entry: &EntryRef<'_>, size: u64) -> u64 {
    match file_type(entry.kind()) {
        FileType::Directory => u64::from(BLOCK_SIZE),
        // A symlink's size is its target's length (tar headers say 0).
        FileType::Symlink => entry.symlink_target().len() as u64,
        _ => size,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    /// Three plain lowers, bottom first: whiteouts, an opaque directory, a type
    /// change and a hardlink pair spread over two directories.
    fn lowers(root: &Path) -> Vec<PathBuf> {
        let l: Vec<PathBuf> = (0..3).map(|i| root.join(format!("l{i}"))).collect();
        let write = |p: PathBuf, text: &str| {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        write(l[0].join("etc/passwd"), "bottom");
        write(l[0].join("etc/group"), "bottom");
        write(l[0].join("usr/lib/old.so"), "old");
        write(l[0].join("usr/lib/deep/x"), "x");
        write(l[0].join("a/one"), "pair");
        fs::create_dir_all(l[0].join("b")).unwrap();
        fs::hard_link(l[0].join("a/one"), l[0].join("b/two")).unwrap();
        write(l[0].join("turns/file"), "under a file");
        write(l[1].join("etc/passwd"), "middle");
        write(l[1].join("etc/.wh.group"), "");
        write(l[1].join("usr/lib/.wh..wh..opq"), "");
        write(l[1].join("usr/lib/new.so"), "new");
        write(l[1].join("turns"), "now a file");
        write(l[2].join("top"), "top");
        l
    }

    fn open(dirs: &[PathBuf]) -> Lower {
        let trees = dirs
            .iter()
            .map(|d| super::super::dirlayer::open_lower(d).unwrap())
            .collect();
        Lower::of_dirs(trees, dirs.to_vec(), IdMap::identity(), IdMap::identity()).unwrap()
    }

    fn names(lower: &Lower, dir: usize) -> Vec<String> {
        lower
            .children_of(dir)
            .unwrap()
            .map(|p| String::from_utf8(lower.name(p).to_vec()).unwrap())
            .collect()
    }

    fn find(lower: &Lower, path: &str) -> Option<usize> {
        lower.find_path(path.as_bytes()).unwrap()
    }

    #[test]
    fn plain_lowers_are_read_a_directory_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = open(&lowers(tmp.path()));
        assert_eq!(lower.len(), 1, "only the root is known at mount");
        assert_eq!(names(&lower, 0), ["a", "b", "etc", "top", "turns", "usr"]);
        assert_eq!(lower.len(), 7);
        let etc = find(&lower, "etc").unwrap();
        assert_eq!(lower.len(), 7, "finding etc reads no more than the root");
        assert_eq!(names(&lower, etc), ["passwd"]);
        let passwd = find(&lower, "etc/passwd").unwrap();
        assert_eq!(lower.entry(passwd).meta().size, "middle".len() as u64);
        assert_eq!(lower.path(passwd), b"etc/passwd");
        assert_eq!(lower.inode(passwd), passwd as u64 + 1);
        assert_eq!(lower.parent_inode(passwd), lower.inode(etc));
        // Read once: the same positions again, nothing new.
        let known = lower.len();
        assert_eq!(find(&lower, "etc/passwd"), Some(passwd));
        assert_eq!(lower.len(), known);
    }

    #[test]
    fn opaque_dirs_and_type_changes_hide_what_is_below() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = open(&lowers(tmp.path()));
        let lib = find(&lower, "usr/lib").unwrap();
        assert_eq!(names(&lower, lib), ["new.so"]);
        assert_eq!(find(&lower, "usr/lib/deep/x"), None);
        let turns = find(&lower, "turns").unwrap();
        assert_eq!(lower.kind(turns), EntryKind::File);
        assert_eq!(lower.lookup_child(turns, b"file").unwrap(), None);
        // Merged from three layers: "not counted"; from one: its own count.
        assert_eq!(lower.attr(0).nlink, 1);
        assert_eq!(lower.attr(find(&lower, "a").unwrap()).nlink, 2);
    }

    #[test]
    fn hardlinks_are_one_node_once_both_names_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = open(&lowers(tmp.path()));
        let one = find(&lower, "a/one").unwrap();
        assert_eq!(lower.names_of(one), [one]);
        assert_eq!(lower.attr(one).nlink, 2, "the lower's own count");
        let two = find(&lower, "b/two").unwrap();
        assert_ne!(one, two);
        assert_eq!(lower.inode(two), lower.inode(one));
        assert_eq!(lower.attr(two).ino, lower.attr(one).ino);
        let mut group = lower.names_of(two);
        group.sort();
        assert_eq!(group, [one, two]);
        assert_eq!(lower.position(lower.inode(two)), Some(one));
    }

    #[test]
    fn an_unreadable_directory_shows_empty_when_it_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = lowers(tmp.path());
        let locked = dirs[2].join("locked");
        fs::create_dir(&locked).unwrap();
        fs::write(locked.join("secret"), "s").unwrap();
        let lower = open(&dirs);
        let perm = |mode| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&locked, fs::Permissions::from_mode(mode)).unwrap();
        };
        perm(0o000);
        let at = find(&lower, "locked");
        let listed = at.map(|p| names(&lower, p));
        perm(0o755);
        let at = at.expect("locked shows");
        if nix::unistd::geteuid().is_root() {
            return; // root reads it anyway
        }
        assert_eq!(listed, Some(Vec::<String>::new()));
        // Once read, it stays as it was read.
        assert_eq!(names(&lower, at), Vec::<String>::new());
    }
}
