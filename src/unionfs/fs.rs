//! The FUSE filesystem: the lower view, and over it, when there is one, the writable
//! upper.
//!
//! Reading is answered from memory (the view, and what `merge` knows of the upper);
//! only file data and upper attributes touch the disk. Every change is made in the
//! upper first and then recorded in memory under one lock; the one slow step, copying
//! a lower file's data up, runs outside that lock, so a big copy-up never holds up
//! lookups elsewhere.
//!
//! The kernel is told to open files and directories without asking us (zero-message
//! open): data is found by inode, not by handle. So an unlinked file that is still
//! open stays readable because its node keeps the upper file open until the kernel
//! forgets the inode.
//!
//! The kernel's caches: all changes go through this mount, and the kernel's FUSE
//! layer updates or drops what it cached of every inode and directory an operation
//! names (new attributes from our replies, directory listings and parent attributes
//! invalidated on create, unlink and rename). What it cannot know of, a copy-up that
//! gives other names of a hardlinked file new data, concerns the same inode, so the
//! kernel's page cache of it stays right. Hence no notifier is needed for changes
//! through the mount. As with kernel overlayfs, changing the upper or the layers
//! behind a mounted union's back is not supported: what the kernel and this daemon
//! cached of them would go stale.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow,
};
use nix::sys::stat::{FileStat, SFlag};
use nix::sys::time::TimeSpec;

use super::idmap::IdMap;
use super::lower::{BLOCK_SIZE, Lower, file_type, to_system_time};
use super::merge::{DirState, Node, Slot, State, cookie};
use super::upper::{
    NewNode, OverrideStat, PreparedCopy, Upper, UpperEntry, UpperError, is_private_xattr,
};
use super::view::View;
use crate::image::layer::EntryKind;
use crate::store::lock::FileLock;

/// How long the kernel may trust what we tell it. Lower entries never change, and
/// every change to the upper goes through the kernel, which updates its caches.
pub const LOWER_TTL: Duration = Duration::from_secs(24 * 3600);
const GENERATION: Generation = Generation(1);
const ROOT: u64 = 1;
/// Copy-ups of different files run at once; of one file, one at a time.
const COPY_STRIPES: usize = 64;
const NAME_MAX: usize = 255;

type Res<T> = Result<T, Errno>;

fn errno(e: UpperError) -> Errno {
    Errno::from_i32(e.errno().map_or(libc::EIO, |e| e as i32))
}

fn nix_errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

/// The writable side: the upper on disk and what we know of it.
struct Writable {
    upper: Upper,
    state: RwLock<State>,
    copy_locks: Vec<Mutex<()>>,
    /// fsync copy-ups before they appear, as kernel overlayfs does by default.
    fsync_copy_up: bool,
}

/// The union of a layer chain, read-only or with a writable upper.
pub struct UnionFs {
    lower: Lower,
    writable: Option<Writable>,
    /// The kernel agreed to open files and directories without asking us.
    zero_message_open: bool,
    zero_message_opendir: bool,
    /// What the kernel may cache, and for how long (LOWER_TTL but in benchmarks).
    ttl: Duration,
    /// Shared locks that keep the layers from being collected while served.
    _held: Vec<FileLock>,
    shown: Presentation,
}

/// How the union presents what it holds (fuse-overlayfs's options of the same names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presentation {
    /// uidmapping / gidmapping: (shown id, stored id, count) ranges. An owner stored
    /// as `stored + k` shows as `shown + k`; owners given through the mount are
    /// stored the other way round. Empty: ids are shown as stored.
    pub uid_map: Vec<(u32, u32, u32)>,
    pub gid_map: Vec<(u32, u32, u32)>,
    /// Every owner shown as this uid (squash_to_root, squash_to_uid).
    pub squash_uid: Option<u32>,
    /// Every group shown as this gid (squash_to_root, squash_to_gid).
    pub squash_gid: Option<u32>,
    /// Directories say nlink 1 (as "unknown"), not 2 + subdirectories.
    pub static_nlink: bool,
    /// No extended attributes at all: ENOTSUP.
    pub no_xattrs: bool,
}

/// What a name resolves to, or that its directory must be scanned first.
enum Resolved {
    Found(u64),
    Absent,
    NeedScan,
    /// The lower directory could not be read.
    Failed(Errno),
}

impl UnionFs {
    /// Serves `view` read-only; its layer `i` has its files under `trees[i]`.
    pub fn new(view: View, trees: Vec<OwnedFd>, uids: IdMap, gids: IdMap) -> UnionFs {
        UnionFs::over(Lower::new(view, trees, uids, gids))
    }

    /// Serves `lower` read-only.
    pub fn over(lower: Lower) -> UnionFs {
        UnionFs {
            lower,
            writable: None,
            zero_message_open: false,
            zero_message_opendir: false,
            ttl: LOWER_TTL,
            _held: Vec::new(),
            shown: Presentation::default(),
        }
    }

    /// Presents owners, link counts and xattrs as `shown` says.
    pub fn with_presentation(mut self, shown: Presentation) -> UnionFs {
        self.shown = shown;
        self
    }

    /// The owner to store for one given through the mount (a caller's, or chown's).
    fn stored_owner(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            map_id(&self.shown.uid_map, uid, Direction::Store),
            map_id(&self.shown.gid_map, gid, Direction::Store),
        )
    }

    fn present(&self, mut attr: FileAttr) -> FileAttr {
        attr.uid = map_id(&self.shown.uid_map, attr.uid, Direction::Show);
        attr.gid = map_id(&self.shown.gid_map, attr.gid, Direction::Show);
        if let Some(uid) = self.shown.squash_uid {
            attr.uid = uid;
        }
        if let Some(gid) = self.shown.squash_gid {
            attr.gid = gid;
        }
        if self.shown.static_nlink && attr.kind == FileType::Directory {
            attr.nlink = 1;
        }
        attr
    }

    /// Makes the union writable, with `upper` over the lower view. Copy-ups are
    /// fsynced before they appear unless `volatile` (kernel overlayfs's option of
    /// that name): then a power cut may leave a copied-up file empty.
    pub fn with_upper(mut self, upper: Upper, volatile: bool) -> UnionFs {
        let mut state = State::default();
        let root_lower = (!self.lower.is_empty()).then_some(0);
        let mut root = Node::upper(FileType::Directory, root_lower, (ROOT, Vec::new()));
        root.links.clear();
        // The root's override is not in any directory listing: read it here (an
        // upper of fuse-overlayfs's xattr_permissions always has one).
        root.over = upper.get_override(b"").ok().flatten();
        state.nodes.insert(ROOT, root);
        self.writable = Some(Writable {
            upper,
            state: RwLock::new(state),
            copy_locks: (0..COPY_STRIPES).map(|_| Mutex::new(())).collect(),
            fsync_copy_up: !volatile,
        });
        self
    }

    /// Keeps `locks` (the layers' use locks) for as long as the filesystem lives.
    pub fn holding(mut self, locks: Vec<FileLock>) -> UnionFs {
        self._held = locks;
        self
    }

    /// Sets how long the kernel may cache entries and attributes. Zero sends every
    /// lookup and stat to the daemon: what benchmarks of its own cost want.
    pub fn with_ttl(mut self, ttl: Duration) -> UnionFs {
        self.ttl = ttl;
        self
    }

    pub fn is_writable(&self) -> bool {
        self.writable.is_some()
    }

    fn w(&self) -> Res<&Writable> {
        self.writable.as_ref().ok_or(Errno::EROFS)
    }

    fn read_state(&self) -> Option<RwLockReadGuard<'_, State>> {
        self.writable
            .as_ref()
            .map(|w| w.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn write_state<'a>(&self, w: &'a Writable) -> RwLockWriteGuard<'a, State> {
        w.state.write().unwrap_or_else(|e| e.into_inner())
    }

    // ---------------------------------------------------------------------------
    // Resolving names and nodes

    /// Where a directory's lower names come from, without the upper.
    fn lower_dir_of(&self, st: Option<&State>, dir: u64) -> Option<usize> {
        match st.and_then(|s| s.nodes.get(&dir)) {
            Some(node) => node.lower,
            None => self.lower.position(dir),
        }
    }

    fn resolve_in(&self, st: Option<&State>, dir: u64, name: &[u8]) -> Resolved {
        if let Some(st) = st {
            if let Some(ds) = st.dirs.get(&dir) {
                return match ds.entries.get(name) {
                    Some(Slot::Node(ino)) => Resolved::Found(*ino),
                    Some(Slot::Whiteout) => Resolved::Absent,
                    None => self.lower_child(ds.lower, name),
                };
            }
            if st.is_upper(dir) {
                return Resolved::NeedScan;
            }
        }
        self.lower_child(self.lower_dir_of(st, dir), name)
    }

    fn lower_child(&self, dir: Option<usize>, name: &[u8]) -> Resolved {
        let Some(dir) = dir else {
            return Resolved::Absent;
        };
        match self.lower.lookup_child(dir, name) {
            Ok(Some(pos)) => Resolved::Found(self.lower.inode(pos)),
            Ok(None) => Resolved::Absent,
            Err(e) => Resolved::Failed(e),
        }
    }

    /// Resolves under the write lock, scanning the directory when it must.
    fn resolve_mut(&self, st: &mut State, dir: u64, name: &[u8]) -> Res<Option<u64>> {
        loop {
            match self.resolve_in(Some(st), dir, name) {
                Resolved::Found(ino) => return Ok(Some(ino)),
                Resolved::Absent => return Ok(None),
                Resolved::Failed(e) => return Err(e),
                Resolved::NeedScan => self.scan_dir(st, dir)?,
            }
        }
    }

    /// Resolves a name for a lookup: a read lock, and a write lock only to scan.
    fn resolve(&self, dir: u64, name: &[u8]) -> Res<Option<u64>> {
        {
            let st = self.read_state();
            match self.resolve_in(st.as_deref(), dir, name) {
                Resolved::Found(ino) => return Ok(Some(ino)),
                Resolved::Absent => return Ok(None),
                Resolved::Failed(e) => return Err(e),
                Resolved::NeedScan => {}
            }
        }
        let w = self.w()?;
        let mut st = self.write_state(w);
        self.resolve_mut(&mut st, dir, name)
    }

    /// Reads an upper directory into memory, once.
    fn scan_dir(&self, st: &mut State, dir: u64) -> Res<()> {
        let w = self.w()?;
        let path = self.path(st, dir).ok_or(Errno::ENOENT)?;
        let (entries, opaque) = w.upper.read_dir(&path).map_err(errno)?;
        let merged_lower = if opaque {
            None
        } else {
            st.nodes.get(&dir).and_then(|n| n.lower)
        };
        let mut ds = DirState::new(merged_lower);
        for entry in entries {
            match entry {
                UpperEntry::Whiteout { name } => {
                    ds.insert(name, Slot::Whiteout);
                }
                UpperEntry::Node {
                    name,
                    stat,
                    origin,
                    opaque,
                    over,
                    ..
                } => {
                    let (ino, lower) =
                        self.identify(&ds, &name, &stat, origin.as_deref(), opaque)?;
                    let ino = ino.unwrap_or_else(|| st.upper_born_ino(stat.st_ino, false));
                    let node = st.nodes.entry(ino).or_insert_with(|| Node {
                        kind: stat_kind(&stat),
                        lower,
                        in_upper: true,
                        links: Vec::new(),
                        file: None,
                        over,
                    });
                    node.in_upper = true;
                    if !node.links.iter().any(|(d, n)| *d == dir && *n == name) {
                        node.links.push((dir, name.clone()));
                    }
                    ds.insert(name, Slot::Node(ino));
                }
            }
        }
        if let Some(node) = st.nodes.get_mut(&dir) {
            node.lower = ds.lower;
        }
        st.dirs.insert(dir, ds);
        Ok(())
    }

    /// The inode of an upper entry that stands for a lower node (None: upper-born),
    /// and the lower position it stands for.
    fn identify(
        &self,
        parent: &DirState,
        name: &[u8],
        stat: &FileStat,
        origin: Option<&[u8]>,
        opaque: bool,
    ) -> Res<(Option<u64>, Option<usize>)> {
        let is_dir = stat_kind(stat) == FileType::Directory;
        let same_name = match parent.lower {
            Some(d) if is_dir => self.lower.lookup_child(d, name)?,
            _ => None,
        }
        .filter(|&p| self.lower.kind(p) == EntryKind::Dir);
        let from_origin = match origin {
            Some(o) => self.lower.find_path(o)?,
            None => None,
        };
        let merged = if opaque { None } else { same_name };
        Ok(match (from_origin, same_name) {
            (Some(pos), _) => (
                Some(self.lower.inode(pos)),
                if is_dir { merged } else { Some(pos) },
            ),
            (None, Some(pos)) if !opaque => (Some(self.lower.inode(pos)), Some(pos)),
            _ => (None, None),
        })
    }

    /// A node's path in the upper ("" for the root), if it still has a name.
    fn path(&self, st: &State, ino: u64) -> Option<Vec<u8>> {
        if ino == ROOT {
            return Some(Vec::new());
        }
        match st.nodes.get(&ino) {
            Some(node) => {
                let (dir, name) = node.links.first()?;
                let mut path = self.path(st, *dir)?;
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                Some(path)
            }
            None => self
                .lower
                .position(ino)
                .map(|p| self.lower.path(p).to_vec()),
        }
    }

    fn child_path(&self, st: &State, dir: u64, name: &[u8]) -> Res<Vec<u8>> {
        let mut path = self.path(st, dir).ok_or(Errno::ENOENT)?;
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Ok(path)
    }

    fn kind(&self, st: Option<&State>, ino: u64) -> Option<FileType> {
        match st.and_then(|s| s.nodes.get(&ino)) {
            Some(node) => Some(node.kind),
            None => self
                .lower
                .position(ino)
                .map(|p| file_type(self.lower.kind(p))),
        }
    }

    /// What stat says of a node.
    fn attr(&self, st: Option<&State>, ino: u64) -> Res<FileAttr> {
        self.stored_attr(st, ino).map(|a| self.present(a))
    }

    /// What the layers and the upper say of a node, before `present`.
    fn stored_attr(&self, st: Option<&State>, ino: u64) -> Res<FileAttr> {
        let node = st.and_then(|s| s.nodes.get(&ino));
        match node {
            Some(node) if node.in_upper || node.file.is_some() => {
                let stat = match (&node.file, st.and_then(|s| self.path(s, ino))) {
                    (Some(file), _) => nix::sys::stat::fstat(file.as_fd()).map_err(nix_errno)?,
                    (None, Some(path)) => self.w()?.upper.stat(&path).map_err(errno)?,
                    (None, None) => return Err(Errno::ENOENT),
                };
                let mut attr = self.upper_attr(ino, &stat, node.over.as_ref());
                if let Some(n) = st.and_then(|s| self.merged_dir_nlink(s, ino)) {
                    attr.nlink = n;
                }
                Ok(attr)
            }
            Some(node) => {
                let pos = node.lower.ok_or(Errno::ENOENT)?;
                let mut attr = self.lower.attr(pos);
                attr.ino = INodeNo(ino);
                if node.links.is_empty() {
                    attr.nlink = 0;
                }
                Ok(attr)
            }
            None => {
                let pos = self.lower.position(ino).ok_or(Errno::ENOENT)?;
                let mut attr = self.lower.attr(pos);
                if attr.nlink > 1
                    && attr.kind != FileType::Directory
                    && let Some(st) = st
                {
                    attr.nlink = self.visible_name_count(st, ino, pos, attr.nlink);
                }
                Ok(attr)
            }
        }
    }

    /// A directory with a lower beneath it says nlink 1, as on kernel overlayfs (and
    /// btrfs): "not counted", which find(1) and the like understand. Counting its
    /// subdirectories in the union costs a walk of its upper entries, and the kernel
    /// asks again after every change in it: deleting the 20,000 names of a lower
    /// directory took 91 s that way, 1.6 s this way.
    fn merged_dir_nlink(&self, st: &State, dir: u64) -> Option<u32> {
        st.dirs.get(&dir)?.lower.map(|_| 1)
    }

    /// How many names of a lower hardlink group still show it: its lower link count
    /// less the names the upper removed or replaced. (An image's count is its
    /// visible names, all known; plain lowers' is the lower's st_nlink, and a name
    /// in a directory not yet read cannot have been removed.)
    fn visible_name_count(&self, st: &State, ino: u64, pos: usize, nlink: u32) -> u32 {
        let gone = self
            .lower
            .names_of(pos)
            .into_iter()
            .filter(|&p| {
                let dir = self.lower.parent_inode(p);
                !matches!(
                    self.resolve_in(Some(st), dir, self.lower.name(p)),
                    Resolved::Found(i) if i == ino
                )
            })
            .count();
        nlink.saturating_sub(gone as u32).max(1)
    }

    fn upper_attr(&self, ino: u64, st: &FileStat, over: Option<&OverrideStat>) -> FileAttr {
        let time = |s: i64, ns: i64| to_system_time(s, ns as u32);
        let (uid, gid, perm) = match over {
            Some(o) => (
                self.lower.uids.show(o.uid),
                self.lower.gids.show(o.gid),
                o.mode as u16,
            ),
            None => (st.st_uid, st.st_gid, (st.st_mode & 0o7777) as u16),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: time(st.st_ctime, st.st_ctime_nsec),
            kind: stat_kind(st),
            perm,
            nlink: st.st_nlink as u32,
            uid,
            gid,
            rdev: st.st_rdev as u32,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// The names a directory shows, in cookie order: (cookie, inode, name).
    fn listing(&self, st: Option<&State>, dir: u64) -> Res<Vec<(u64, u64, Vec<u8>)>> {
        let mut out: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let ds = st.and_then(|s| s.dirs.get(&dir));
        let lower_dir = match ds {
            Some(ds) => ds.lower,
            None => self.lower_dir_of(st, dir),
        };
        if let Some(ds) = ds {
            for (name, slot) in &ds.entries {
                if let Slot::Node(ino) = slot {
                    out.push((cookie(name), *ino, name.clone()));
                }
            }
        }
        if let Some(lp) = lower_dir {
            for child in self.lower.children_of(lp)? {
                let name = self.lower.name(child);
                if ds.is_some_and(|d| d.entries.contains_key(name)) {
                    continue;
                }
                out.push((cookie(name), self.lower.inode(child), name.to_vec()));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn parent_of(&self, st: Option<&State>, dir: u64) -> u64 {
        match st.and_then(|s| s.nodes.get(&dir)) {
            Some(node) => node.links.first().map_or(ROOT, |l| l.0),
            None => self
                .lower
                .position(dir)
                .map_or(ROOT, |p| self.lower.parent_inode(p)),
        }
    }

    /// Hands `add` the entries of a directory after the cookie `offset` (".", ".."
    /// and the listing), until it says the reply is full.
    fn with_entries_after(
        &self,
        dir: u64,
        offset: u64,
        mut add: impl FnMut(Option<&State>, u64, u64, &[u8]) -> bool,
    ) -> Res<()> {
        self.ready_dir(dir)?;
        let st = self.read_state();
        let st = st.as_deref();
        let listing = self.listing(st, dir)?;
        let dots = [
            (1u64, dir, b".".to_vec()),
            (2, self.parent_of(st, dir), b"..".to_vec()),
        ];
        for (next, child, name) in dots.into_iter().chain(listing).filter(|e| e.0 > offset) {
            if add(st, next, child, &name) {
                break;
            }
        }
        Ok(())
    }

    /// Makes sure the directory can be listed: scans it if it is in the upper.
    fn ready_dir(&self, dir: u64) -> Res<()> {
        let needs = self.read_state().is_some_and(|st| {
            st.nodes.get(&dir).is_some_and(|n| {
                n.in_upper && n.kind == FileType::Directory && (dir == ROOT || !n.links.is_empty())
            }) && !st.dirs.contains_key(&dir)
        });
        if needs {
            let w = self.w()?;
            let mut st = self.write_state(w);
            if !st.dirs.contains_key(&dir) {
                self.scan_dir(&mut st, dir)?;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------
    // Copy-up

    /// Gives a directory its upper copy (its parents first) and scans it.
    fn ensure_upper_dir(&self, st: &mut State, dir: u64) -> Res<()> {
        let w = self.w()?;
        if st.is_upper(dir) {
            if !st.dirs.contains_key(&dir) {
                self.scan_dir(st, dir)?;
            }
            return Ok(());
        }
        let pos = self.lower.position(dir).ok_or(Errno::ENOENT)?;
        if self.lower.kind(pos) != EntryKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let parent = self.lower.parent_inode(pos);
        self.ensure_upper_dir(st, parent)?;
        let name = self.lower.name(pos).to_vec();
        let path = self.child_path(st, parent, &name)?;
        let mut meta = self.lower.node_meta(pos);
        meta.fsync = w.fsync_copy_up;
        let over = w.upper.copy_up_dir(&path, &meta).map_err(errno)?;
        let mut node = Node::upper(FileType::Directory, Some(pos), (parent, name.clone()));
        node.over = over;
        st.nodes.insert(dir, node);
        st.dirs.insert(dir, DirState::new(Some(pos)));
        if let Some(ds) = st.dirs.get_mut(&parent) {
            ds.insert(name, Slot::Node(dir));
        }
        Ok(())
    }

    /// The names under which a lower node shows now.
    fn visible_names(&self, st: &mut State, ino: u64, pos: usize) -> Res<Vec<(u64, Vec<u8>)>> {
        let mut names = Vec::new();
        for p in self.lower.names_of(pos) {
            let dir = self.lower.parent_inode(p);
            let name = self.lower.name(p).to_vec();
            if self.resolve_mut(st, dir, &name)? == Some(ino) {
                names.push((dir, name));
            }
        }
        Ok(names)
    }

    /// Copies a lower file up for a change to it, the data outside the state lock.
    /// `truncate`: the change empties it, so its data need not be copied.
    fn copy_up(&self, ino: u64, truncate: bool) -> Res<()> {
        let w = self.w()?;
        let _one_at_a_time = w.copy_locks[(ino as usize) % COPY_STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let kind = {
            let st = self.read_state().ok_or(Errno::EROFS)?;
            if st.is_upper(ino) || st.nodes.get(&ino).is_some_and(|n| n.file.is_some()) {
                return Ok(());
            }
            self.kind(Some(&st), ino).ok_or(Errno::ENOENT)?
        };
        if kind != FileType::RegularFile {
            let mut st = self.write_state(w);
            return self.copy_up_locked(&mut st, ino);
        }
        let pos = {
            let st = self.read_state();
            self.lower_pos_of(st.as_deref(), ino)?
        };
        let copy = self.prepare_file_copy(pos, truncate)?;
        let mut st = self.write_state(w);
        self.publish_file_copy(&mut st, ino, copy)
    }

    /// Copies a node up with the state lock held: for renames and links.
    fn copy_up_locked(&self, st: &mut State, ino: u64) -> Res<()> {
        if st.is_upper(ino) || st.nodes.get(&ino).is_some_and(|n| n.file.is_some()) {
            if st.is_upper(ino) && self.kind(Some(st), ino) == Some(FileType::Directory) {
                return self.ensure_upper_dir(st, ino);
            }
            return Ok(());
        }
        match self.kind(Some(st), ino).ok_or(Errno::ENOENT)? {
            FileType::Directory => self.ensure_upper_dir(st, ino),
            FileType::RegularFile => {
                let copy = self.prepare_file_copy(self.lower_pos_of(Some(st), ino)?, false)?;
                self.publish_file_copy(st, ino, copy)
            }
            _ => self.copy_up_special(st, ino),
        }
    }

    fn lower_pos_of(&self, st: Option<&State>, ino: u64) -> Res<usize> {
        match st.and_then(|s| s.nodes.get(&ino)) {
            Some(node) => node.lower.ok_or(Errno::ENOENT),
            None => self.lower.position(ino).ok_or(Errno::ENOENT),
        }
    }

    /// Copies the lower file at `pos` into work/; takes no lock of the state.
    fn prepare_file_copy(&self, pos: usize, truncate: bool) -> Res<PreparedCopy> {
        let w = self.w()?;
        let src = if truncate {
            None
        } else {
            Some(self.lower.backing_file(pos)?)
        };
        let mut meta = self.lower.node_meta(pos);
        meta.fsync = w.fsync_copy_up;
        w.upper
            .prepare_copy(src.as_deref(), self.lower.path(pos), &meta)
            .map_err(errno)
    }

    /// Puts a prepared copy under every name the node shows, or, if it has none
    /// left (unlinked while open), keeps it as the node's data.
    fn publish_file_copy(&self, st: &mut State, ino: u64, copy: PreparedCopy) -> Res<()> {
        let w = self.w()?;
        if st.is_upper(ino) {
            w.upper.discard_copy(copy);
            return Ok(());
        }
        let pos = match self.lower_pos_of(Some(st), ino) {
            Ok(p) => p,
            Err(e) => {
                w.upper.discard_copy(copy);
                return Err(e);
            }
        };
        let names = match self.visible_names(st, ino, pos) {
            Ok(n) => n,
            Err(e) => {
                w.upper.discard_copy(copy);
                return Err(e);
            }
        };
        let over = copy.over();
        let Some((first_dir, first_name)) = names.first().cloned() else {
            let file = copy.file().try_clone().map_err(|_| Errno::EMFILE)?;
            w.upper.discard_copy(copy);
            let node = st.nodes.entry(ino).or_insert_with(|| Node {
                kind: FileType::RegularFile,
                lower: Some(pos),
                in_upper: false,
                links: Vec::new(),
                file: None,
                over,
            });
            node.file = Some(Arc::new(file));
            return Ok(());
        };
        if let Err(e) = self.ensure_upper_dir(st, first_dir) {
            w.upper.discard_copy(copy);
            return Err(e);
        }
        let first_path = self.child_path(st, first_dir, &first_name)?;
        let file = w.upper.publish_copy(copy, &first_path).map_err(errno)?;
        for (dir, name) in names.iter().skip(1) {
            self.ensure_upper_dir(st, *dir)?;
            let path = self.child_path(st, *dir, name)?;
            w.upper.link(&first_path, &path, false).map_err(errno)?;
        }
        for (dir, name) in &names {
            if let Some(ds) = st.dirs.get_mut(dir) {
                ds.insert(name.clone(), Slot::Node(ino));
            }
        }
        st.nodes.insert(
            ino,
            Node {
                kind: FileType::RegularFile,
                lower: Some(pos),
                in_upper: true,
                links: names,
                file: Some(Arc::new(file)),
                over,
            },
        );
        st.kept_open();
        Ok(())
    }

    /// Copies up a symlink, fifo, socket or device node.
    fn copy_up_special(&self, st: &mut State, ino: u64) -> Res<()> {
        let w = self.w()?;
        let pos = self.lower_pos_of(Some(st), ino)?;
        let names = self.visible_names(st, ino, pos)?;
        let Some((dir, name)) = names.first().cloned() else {
            return Ok(());
        };
        self.ensure_upper_dir(st, dir)?;
        let path = self.child_path(st, dir, &name)?;
        let meta = self.lower.node_meta(pos);
        let entry = self.lower.entry(pos);
        // A symlink has nowhere to record an override.
        let over = match entry.kind() {
            EntryKind::Symlink => {
                w.upper
                    .copy_up_symlink(&path, entry.symlink_target(), &meta)
                    .map_err(errno)?;
                None
            }
            kind => {
                let m = entry.meta();
                let type_bits = match kind {
                    EntryKind::Fifo => libc::S_IFIFO,
                    EntryKind::CharDevice => libc::S_IFCHR,
                    EntryKind::BlockDevice => libc::S_IFBLK,
                    _ => return Err(Errno::EPERM),
                };
                let node = NewNode::Special {
                    mode: type_bits | meta.mode,
                    rdev: libc::makedev(m.rdev_major, m.rdev_minor),
                };
                let (_, _, over) = w
                    .upper
                    .create(&path, node, (meta.uid, meta.gid), false)
                    .map_err(errno)?;
                let mtime = Some(TimeSpec::new(meta.mtime.0, i64::from(meta.mtime.1)));
                w.upper.set_times(&path, mtime, mtime).map_err(errno)?;
                over
            }
        };
        // The other names of a hardlinked one follow it, as for files.
        for (other_dir, other_name) in names.iter().skip(1) {
            self.ensure_upper_dir(st, *other_dir)?;
            let other = self.child_path(st, *other_dir, other_name)?;
            w.upper.link(&path, &other, false).map_err(errno)?;
        }
        let kind = file_type(entry.kind());
        let mut node = Node::upper(kind, Some(pos), (dir, name.clone()));
        node.links = names.clone();
        node.over = over;
        st.nodes.insert(ino, node);
        for (d, n) in &names {
            if let Some(ds) = st.dirs.get_mut(d) {
                ds.insert(n.clone(), Slot::Node(ino));
            }
            self.sync_origin_record(st, *d, n)?;
        }
        Ok(())
    }

    /// Copies up a directory and everything in it that comes from a lower, then
    /// marks it opaque: it no longer needs its lower, so it may move anywhere.
    fn copy_up_tree(&self, st: &mut State, dir: u64) -> Res<()> {
        self.ensure_upper_dir(st, dir)?;
        if st.dirs.get(&dir).is_some_and(|d| d.lower.is_none()) {
            // Nothing beneath comes from a lower: what was moved in was made
            // self-contained when it moved.
            return Ok(());
        }
        let children: Vec<(u64, FileType)> = self
            .listing(Some(st), dir)?
            .into_iter()
            .filter_map(|(_, ino, _)| self.kind(Some(st), ino).map(|k| (ino, k)))
            .collect();
        for (child, kind) in children {
            if kind == FileType::Directory {
                self.copy_up_tree(st, child)?;
            } else {
                self.copy_up_locked(st, child)?;
            }
        }
        let has_lower = st.dirs.get(&dir).is_some_and(|d| d.lower.is_some());
        if has_lower {
            let path = self.path(st, dir).ok_or(Errno::ENOENT)?;
            self.w()?.upper.set_opaque(&path).map_err(errno)?;
            if let Some(ds) = st.dirs.get_mut(&dir) {
                ds.set_lower(None);
                ds.retain(|_, slot| *slot != Slot::Whiteout);
            }
        }
        Ok(())
    }

    /// The node's upper file, open (copied up already).
    fn upper_file(&self, ino: u64) -> Res<Arc<File>> {
        let w = self.w()?;
        {
            let st = self.read_state().ok_or(Errno::EROFS)?;
            if let Some(file) = st.nodes.get(&ino).and_then(|n| n.file.clone()) {
                return Ok(file);
            }
        }
        let mut st = self.write_state(w);
        if let Some(file) = st.nodes.get(&ino).and_then(|n| n.file.clone()) {
            return Ok(file);
        }
        let path = self.path(&st, ino).ok_or(Errno::ENOENT)?;
        let file = Arc::new(w.upper.open_file(&path).map_err(errno)?);
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.file = Some(file.clone());
        }
        st.kept_open();
        Ok(file)
    }

    /// The file to read a node's data from: its upper copy, else the lower.
    fn data_file(&self, ino: u64) -> Res<Arc<File>> {
        self.data_source(ino).map(|(file, _)| file)
    }

    /// `data_file`, with the file's length where it cannot change: a lower file's,
    /// from the layer index.
    fn data_source(&self, ino: u64) -> Res<(Arc<File>, Option<u64>)> {
        let upper = self.read_state().is_some_and(|st| {
            st.nodes
                .get(&ino)
                .is_some_and(|n| n.in_upper || n.file.is_some())
        });
        if upper {
            return Ok((self.upper_file(ino)?, None));
        }
        let st = self.read_state();
        let pos = self.lower_pos_of(st.as_deref(), ino)?;
        drop(st);
        Ok((self.lower.backing_file(pos)?, Some(self.lower.size(pos))))
    }

    // ---------------------------------------------------------------------------
    // Changes

    /// Creates a node in `parent`.
    fn make(&self, req: &Request, parent: u64, name: &[u8], node: NewNode) -> Res<FileAttr> {
        check_name(name)?;
        let w = self.w()?;
        let mut st = self.write_state(w);
        self.ensure_upper_dir(&mut st, parent)?;
        if self.resolve_mut(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let over_whiteout = Self::whited_out(&st, parent, name);
        let path = self.child_path(&st, parent, name)?;
        // The caller owns it (upper::create gives it a setgid parent's group).
        let owner = self.stored_owner(req.uid(), req.gid());
        let kind = match node {
            NewNode::File { .. } => FileType::RegularFile,
            NewNode::Dir { .. } => FileType::Directory,
            NewNode::Symlink { .. } => FileType::Symlink,
            NewNode::Special { mode, .. } => mode_kind(mode),
        };
        let (stat, file, over) = w
            .upper
            .create(&path, node, owner, over_whiteout)
            .map_err(errno)?;
        let ino = st.upper_born_ino(stat.st_ino, true);
        let mut new = Node::upper(kind, None, (parent, name.to_vec()));
        new.file = file.map(Arc::new);
        new.over = over;
        let attr = self.present(self.upper_attr(ino, &stat, new.over.as_ref()));
        let has_file = new.file.is_some();
        st.nodes.insert(ino, new);
        if has_file {
            st.kept_open();
        }
        if kind == FileType::Directory {
            st.dirs.insert(ino, DirState::default());
        }
        if let Some(ds) = st.dirs.get_mut(&parent) {
            ds.insert(name.to_vec(), Slot::Node(ino));
        }
        Ok(attr)
    }

    /// Whether the lower shows `name` in `dir` (so deleting it needs a whiteout).
    fn lower_has(&self, st: &State, dir: u64, name: &[u8]) -> Res<bool> {
        match st.dirs.get(&dir).and_then(|d| d.lower) {
            Some(lp) => Ok(self.lower.lookup_child(lp, name)?.is_some()),
            None => Ok(false),
        }
    }

    /// Whether the upper holds a whiteout for `name` in `dir`.
    fn whited_out(st: &State, dir: u64, name: &[u8]) -> bool {
        st.dirs
            .get(&dir)
            .is_some_and(|d| d.entries.get(name) == Some(&Slot::Whiteout))
    }

    /// ENOTEMPTY unless the directory `dir` shows nothing (scanned first if need be).
    fn check_empty(&self, st: &mut State, dir: u64) -> Res<()> {
        if st.is_upper(dir) && !st.dirs.contains_key(&dir) {
            self.scan_dir(st, dir)?;
        }
        if self.listing(Some(st), dir)?.is_empty() {
            Ok(())
        } else {
            Err(Errno::ENOTEMPTY)
        }
    }

    fn upper_has(st: &State, dir: u64, name: &[u8]) -> bool {
        st.dirs
            .get(&dir)
            .is_some_and(|d| matches!(d.entries.get(name), Some(Slot::Node(_))))
    }

    /// Before a node loses its last name: keep its upper data open, so that whoever
    /// has it open can go on reading and writing it (nlink 0, as on ext4).
    fn keep_data_if_last(&self, st: &mut State, ino: u64, path: &[u8]) {
        let Some(node) = st.nodes.get(&ino) else {
            return;
        };
        if node.links.len() > 1 || node.file.is_some() || node.kind != FileType::RegularFile {
            return;
        }
        if let Ok(w) = self.w()
            && let Ok(file) = w.upper.open_file(path)
            && let Some(node) = st.nodes.get_mut(&ino)
        {
            node.file = Some(Arc::new(file));
        }
    }

    /// Deletes `name` from `dir`: the upper node goes, a whiteout hides a lower one.
    fn remove(&self, parent: u64, name: &[u8], want_dir: bool) -> Res<()> {
        let w = self.w()?;
        let mut st = self.write_state(w);
        let ino = self
            .resolve_mut(&mut st, parent, name)?
            .ok_or(Errno::ENOENT)?;
        let is_dir = self.kind(Some(&st), ino) == Some(FileType::Directory);
        match (want_dir, is_dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if is_dir {
            self.check_empty(&mut st, ino)?;
        }
        self.ensure_upper_dir(&mut st, parent)?;
        let path = self.child_path(&st, parent, name)?;
        let lower_has = self.lower_has(&st, parent, name)?;
        if Self::upper_has(&st, parent, name) {
            self.keep_data_if_last(&mut st, ino, &path);
            w.upper.remove(&path, lower_has).map_err(errno)?;
        } else {
            w.upper.whiteout(&path).map_err(errno)?;
        }
        let recorded = self.kind(Some(&st), ino).is_some_and(takes_no_xattrs);
        self.forget_name(&mut st, parent, name, ino, lower_has);
        if recorded {
            self.sync_origin_record(&st, parent, name)?;
        }
        Ok(())
    }

    /// Brings the origin record of `dir`/`name` up to date: symlinks, fifos, sockets
    /// and devices take no user xattrs, so a copied-up one's origin lives on its
    /// directory.
    fn sync_origin_record(&self, st: &State, dir: u64, name: &[u8]) -> Res<()> {
        let origin = match st.dirs.get(&dir).and_then(|d| d.entries.get(name)) {
            Some(Slot::Node(ino)) => st
                .nodes
                .get(ino)
                .filter(|n| takes_no_xattrs(n.kind) && n.in_upper)
                .and_then(|n| n.lower)
                .map(|pos| self.lower.path(pos).to_vec()),
            _ => None,
        };
        let path = self.path(st, dir).ok_or(Errno::ENOENT)?;
        self.w()?
            .upper
            .set_symlink_origin(&path, name, origin.as_deref())
            .map_err(errno)
    }

    /// Records that `dir`/`name` no longer shows the node `ino`.
    fn forget_name(&self, st: &mut State, dir: u64, name: &[u8], ino: u64, whiteout: bool) {
        if let Some(ds) = st.dirs.get_mut(&dir) {
            if whiteout {
                ds.insert(name.to_vec(), Slot::Whiteout);
            } else {
                ds.remove(name);
            }
        }
        // A lower node needs no record: its data stays in the lower for whoever has
        // it open, and its other hardlinked names still show it.
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.remove_link(dir, name);
        }
        if self.kind(Some(st), ino) == Some(FileType::Directory) {
            st.dirs.remove(&ino);
        }
    }

    fn rename_op(&self, from: (u64, &[u8]), to: (u64, &[u8]), flags: RenameFlags) -> Res<()> {
        check_name(to.1)?;
        let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags)
            || flags.contains(RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE)
        {
            return Err(Errno::EINVAL);
        }
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        // The files that must be copied up are copied before the state lock is
        // taken, so that moving a big lower file holds up no lookup meanwhile.
        self.copy_up_file_unlocked(from)?;
        if exchange {
            self.copy_up_file_unlocked(to)?;
        }
        let w = self.w()?;
        let mut st = self.write_state(w);
        let x = self
            .resolve_mut(&mut st, from.0, from.1)?
            .ok_or(Errno::ENOENT)?;
        let y = self.resolve_mut(&mut st, to.0, to.1)?;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && y.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && y.is_none() {
            return Err(Errno::ENOENT);
        }
        if y == Some(x) {
            // Two names of one node, or the same name: rename does nothing.
            return Ok(());
        }
        let x_dir = self.kind(Some(&st), x) == Some(FileType::Directory);
        let y_dir = y.is_some_and(|y| self.kind(Some(&st), y) == Some(FileType::Directory));
        let recorded = [Some(x), y]
            .into_iter()
            .flatten()
            .any(|n| self.kind(Some(&st), n).is_some_and(takes_no_xattrs));
        if let (Some(y), false) = (y, exchange) {
            match (x_dir, y_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => self.check_empty(&mut st, y)?,
                _ => {}
            }
        }
        self.ensure_upper_dir(&mut st, from.0)?;
        self.ensure_upper_dir(&mut st, to.0)?;
        self.move_up(&mut st, x, x_dir)?;
        if exchange && let Some(y) = y {
            self.move_up(&mut st, y, y_dir)?;
        }
        let from_path = self.child_path(&st, from.0, from.1)?;
        let to_path = self.child_path(&st, to.0, to.1)?;
        if exchange {
            // Each directory lands where the lower may have one: nothing of that may
            // show through it.
            let y = y.expect("checked above");
            for (ino, is_dir, at, lands) in [(x, x_dir, &from_path, to), (y, y_dir, &to_path, from)]
            {
                if is_dir && self.lower_has(&st, lands.0, lands.1)? {
                    w.upper.set_opaque(at).map_err(errno)?;
                    if let Some(ds) = st.dirs.get_mut(&ino) {
                        ds.set_lower(None);
                    }
                }
            }
            w.upper
                .rename(
                    &from_path,
                    &to_path,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .map_err(errno)?;
            for (ino, a, b) in [(x, from, to), (y, to, from)] {
                if let Some(node) = st.nodes.get_mut(&ino) {
                    node.rename_link(a, b);
                }
            }
            if let Some(ds) = st.dirs.get_mut(&from.0) {
                ds.insert(from.1.to_vec(), Slot::Node(y));
            }
            if let Some(ds) = st.dirs.get_mut(&to.0) {
                ds.insert(to.1.to_vec(), Slot::Node(x));
            }
            if recorded {
                self.sync_origin_record(&st, from.0, from.1)?;
                self.sync_origin_record(&st, to.0, to.1)?;
            }
            return Ok(());
        }
        let src_lower = self.lower_has(&st, from.0, from.1)?;
        let dst_lower = self.lower_has(&st, to.0, to.1)?;
        let dst_whiteout = Self::whited_out(&st, to.0, to.1);
        if let Some(y) = y
            && Self::upper_has(&st, to.0, to.1)
        {
            self.keep_data_if_last(&mut st, y, &to_path);
            if y_dir {
                // Emptied already in the union; its whiteouts must go first.
                w.upper.remove(&to_path, false).map_err(errno)?;
            }
        }
        if x_dir && (dst_lower || dst_whiteout) {
            // Over a lower directory's name: nothing of it may show through.
            w.upper.set_opaque(&from_path).map_err(errno)?;
        }
        if dst_whiteout && x_dir {
            // A directory cannot replace a device: swap them, the whiteout lands on
            // the source name, where it is either needed or deleted.
            w.upper
                .rename(
                    &from_path,
                    &to_path,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .map_err(errno)?;
            if !src_lower {
                w.upper.remove(&from_path, false).map_err(errno)?;
            }
        } else {
            w.upper
                .rename(&from_path, &to_path, nix::fcntl::RenameFlags::empty())
                .map_err(errno)?;
            if src_lower {
                w.upper.whiteout(&from_path).map_err(errno)?;
            }
        }
        if let Some(y) = y {
            self.forget_name(&mut st, to.0, to.1, y, false);
        }
        if let Some(ds) = st.dirs.get_mut(&from.0) {
            if src_lower {
                ds.insert(from.1.to_vec(), Slot::Whiteout);
            } else {
                ds.remove(from.1);
            }
        }
        if let Some(ds) = st.dirs.get_mut(&to.0) {
            ds.insert(to.1.to_vec(), Slot::Node(x));
        }
        if let Some(node) = st.nodes.get_mut(&x) {
            node.rename_link(from, to);
        }
        if x_dir && (dst_lower || dst_whiteout) {
            if let Some(ds) = st.dirs.get_mut(&x) {
                ds.set_lower(None);
            }
            if let Some(node) = st.nodes.get_mut(&x) {
                node.lower = None;
            }
        }
        if recorded {
            self.sync_origin_record(&st, from.0, from.1)?;
            self.sync_origin_record(&st, to.0, to.1)?;
        }
        Ok(())
    }

    /// Copies up the regular file `dir`/`name` names, if it is one, outside the state
    /// lock (the rename that follows finds it copied, or copies what changed since).
    fn copy_up_file_unlocked(&self, (dir, name): (u64, &[u8])) -> Res<()> {
        let Some(ino) = self.resolve(dir, name)? else {
            return Ok(());
        };
        if self.kind(self.read_state().as_deref(), ino) == Some(FileType::RegularFile) {
            self.copy_up(ino, false)?;
        }
        Ok(())
    }

    /// Makes a node movable: a file copied up, a directory with all it holds.
    fn move_up(&self, st: &mut State, ino: u64, is_dir: bool) -> Res<()> {
        if is_dir {
            self.copy_up_tree(st, ino)
        } else {
            self.copy_up_locked(st, ino)
        }
    }

    fn link_op(&self, ino: u64, parent: u64, name: &[u8]) -> Res<FileAttr> {
        check_name(name)?;
        if self.kind(self.read_state().as_deref(), ino) == Some(FileType::RegularFile) {
            // As for rename: the data is copied before the state lock is taken.
            self.copy_up(ino, false)?;
        }
        let w = self.w()?;
        let mut st = self.write_state(w);
        if self.kind(Some(&st), ino) == Some(FileType::Directory) {
            return Err(Errno::EPERM);
        }
        if self.resolve_mut(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up_locked(&mut st, ino)?;
        self.ensure_upper_dir(&mut st, parent)?;
        let src = self.path(&st, ino).ok_or(Errno::ENOENT)?;
        let dst = self.child_path(&st, parent, name)?;
        let over_whiteout = Self::whited_out(&st, parent, name);
        w.upper.link(&src, &dst, over_whiteout).map_err(errno)?;
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.links.push((parent, name.to_vec()));
        }
        if let Some(ds) = st.dirs.get_mut(&parent) {
            ds.insert(name.to_vec(), Slot::Node(ino));
        }
        if self.kind(Some(&st), ino).is_some_and(takes_no_xattrs) {
            self.sync_origin_record(&st, parent, name)?;
        }
        self.attr(Some(&st), ino)
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr_op(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Res<FileAttr> {
        let w = self.w()?;
        let kind = self
            .kind(self.read_state().as_deref(), ino)
            .ok_or(Errno::ENOENT)?;
        if kind == FileType::Directory {
            let mut st = self.write_state(w);
            self.ensure_upper_dir(&mut st, ino)?;
        } else {
            self.copy_up(ino, size == Some(0))?;
        }
        if let Some(size) = size {
            let file = self.upper_file(ino)?;
            file.set_len(size).map_err(io_errno)?;
        }
        let mut st = self.write_state(w);
        let Some(path) = self.path(&st, ino) else {
            // Unlinked and open: changed through its descriptor, as on ext4.
            let file = st.nodes.get(&ino).and_then(|n| n.file.clone());
            if let Some(file) = file {
                set_attr_by_fd(&file, mode, uid, gid, atime, mtime)?;
            }
            return self.attr(Some(&st), ino);
        };
        let current = self.stored_attr(Some(&st), ino)?;
        if let Some(mode) = mode {
            let over = st.nodes.get(&ino).and_then(|n| n.over);
            match over {
                Some(mut o) => {
                    o.mode = mode & 0o7777;
                    w.upper.set_override(&path, &o).map_err(errno)?;
                    w.upper.chmod(&path, mode).map_err(errno)?;
                    if let Some(node) = st.nodes.get_mut(&ino) {
                        node.over = Some(o);
                    }
                }
                None if kind != FileType::Symlink => w.upper.chmod(&path, mode).map_err(errno)?,
                None => {}
            }
        }
        if uid.is_some() || gid.is_some() {
            let over = st.nodes.get(&ino).and_then(|n| n.over);
            let perm = mode.map_or(u32::from(current.perm), |m| m & 0o7777);
            let (cur_uid, cur_gid) = over.map_or((current.uid, current.gid), |o| (o.uid, o.gid));
            let (new_uid, new_gid) =
                self.stored_owner(uid.unwrap_or(cur_uid), gid.unwrap_or(cur_gid));
            let new_uid = if uid.is_some() { new_uid } else { cur_uid };
            let new_gid = if gid.is_some() { new_gid } else { cur_gid };
            let new = w
                .upper
                .chown(&path, new_uid, new_gid, perm, kind == FileType::Symlink)
                .map_err(errno)?;
            if let Some(node) = st.nodes.get_mut(&ino) {
                node.over = new;
            }
        }
        if atime.is_some() || mtime.is_some() {
            w.upper
                .set_times(&path, atime.map(time_spec), mtime.map(time_spec))
                .map_err(errno)?;
        }
        self.attr(Some(&st), ino)
    }

    fn entry_attr(&self, ino: u64) -> Res<FileAttr> {
        // A directory of the upper is scanned before its first stat, so that its
        // link count is the union's from the start.
        self.ready_dir(ino)?;
        let st = self.read_state();
        self.attr(st.as_deref(), ino)
    }

    /// Runs `f` on the node's upper path (copied up first).
    fn on_upper_path<T>(&self, ino: u64, f: impl FnOnce(&Upper, &[u8]) -> Res<T>) -> Res<T> {
        let w = self.w()?;
        let is_dir = self.kind(self.read_state().as_deref(), ino) == Some(FileType::Directory);
        let mut st = self.write_state(w);
        if is_dir {
            self.ensure_upper_dir(&mut st, ino)?;
        } else {
            drop(st);
            self.copy_up(ino, false)?;
            st = self.write_state(w);
        }
        let path = self.path(&st, ino).ok_or(Errno::ENOENT)?;
        f(&w.upper, &path)
    }

    /// Copies a regular file up for an xattr change (directories and the rest are
    /// copied up by on_upper_path).
    fn copy_up_for_xattr(&self, ino: u64) -> Res<()> {
        if self.kind(self.read_state().as_deref(), ino) == Some(FileType::RegularFile) {
            self.copy_up(ino, false)?;
        }
        Ok(())
    }

    /// The node's open upper file, if it has one: xattrs go through it, which also
    /// serves a file unlinked while open.
    fn open_upper_file(&self, ino: u64) -> Option<Arc<File>> {
        let st = self.read_state()?;
        st.nodes
            .get(&ino)
            .filter(|n| n.in_upper || n.links.is_empty())
            .and_then(|n| n.file.clone())
    }

    /// The xattrs of a node: from the view, or from its upper copy.
    fn xattr_names(&self, ino: u64) -> Res<Vec<Vec<u8>>> {
        if let Some(file) = self.open_upper_file(ino) {
            return super::upper::file_list_xattrs(&file).map_err(nix_errno);
        }
        let st = self.read_state();
        if let Some(st) = st.as_deref()
            && st.is_upper(ino)
        {
            let path = self.path(st, ino).ok_or(Errno::ENOENT)?;
            return self.w()?.upper.list_xattrs(&path).map_err(errno);
        }
        let pos = self.lower_pos_of(st.as_deref(), ino)?;
        Ok(self.lower.xattrs(pos).map(|(n, _)| n.to_vec()).collect())
    }

    fn xattr_value(&self, ino: u64, name: &[u8]) -> Res<Option<Vec<u8>>> {
        if is_private_xattr(name) {
            return Ok(None);
        }
        let st = self.read_state();
        if let Some(st) = st.as_deref()
            && st.is_upper(ino)
        {
            // The kernel asks for security.capability before every write: an open
            // file answers without a path walk.
            if let Some(file) = st.nodes.get(&ino).and_then(|n| n.file.as_ref()) {
                return super::upper::file_xattr(file, name).map_err(nix_errno);
            }
            let path = self.path(st, ino).ok_or(Errno::ENOENT)?;
            return self.w()?.upper.get_xattr(&path, name).map_err(errno);
        }
        let pos = self.lower_pos_of(st.as_deref(), ino)?;
        Ok(self
            .lower
            .xattrs(pos)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_vec()))
    }

    /// Forgets a node the kernel dropped, if it has no name left.
    fn drop_if_unlinked(&self, ino: u64) {
        let Some(w) = self.writable.as_ref() else {
            return;
        };
        let unlinked = self.read_state().is_some_and(|st| {
            st.nodes
                .get(&ino)
                .is_some_and(|n| n.links.is_empty() && ino != ROOT)
        });
        if unlinked {
            let mut st = self.write_state(w);
            if st.nodes.get(&ino).is_some_and(|n| n.links.is_empty()) {
                st.nodes.remove(&ino);
                st.dirs.remove(&ino);
            }
        }
    }
}

/// chmod, chown and utimens of an upper file through its descriptor.
fn set_attr_by_fd(
    file: &File,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
) -> Res<()> {
    if let Some(mode) = mode {
        nix::sys::stat::fchmod(
            file,
            nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
        )
        .map_err(nix_errno)?;
    }
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchown(
            file,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
        )
        .map_err(nix_errno)?;
    }
    if atime.is_some() || mtime.is_some() {
        let omit = TimeSpec::UTIME_OMIT;
        nix::sys::stat::futimens(
            file,
            &atime.map_or(omit, time_spec),
            &mtime.map_or(omit, time_spec),
        )
        .map_err(nix_errno)?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Direction {
    Show,
    Store,
}

/// An id through (shown, stored, count) ranges; one no range covers goes to the
/// overflow id, as the kernel shows an unmapped one. No ranges: unchanged.
fn map_id(ranges: &[(u32, u32, u32)], id: u32, way: Direction) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    for &(shown, stored, count) in ranges {
        let (from, to) = match way {
            Direction::Show => (stored, shown),
            Direction::Store => (shown, stored),
        };
        if id >= from && id - from < count {
            return to + (id - from);
        }
    }
    OVERFLOW_ID
}

const OVERFLOW_ID: u32 = 65534;

fn check_name(name: &[u8]) -> Res<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time_spec(t: TimeOrNow) -> TimeSpec {
    match t {
        TimeOrNow::Now => TimeSpec::UTIME_NOW,
        TimeOrNow::SpecificTime(t) => {
            let (s, ns) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => {
                    let d = e.duration();
                    let mut s = -(d.as_secs() as i64);
                    let mut ns = -i64::from(d.subsec_nanos());
                    if ns < 0 {
                        s -= 1;
                        ns += 1_000_000_000;
                    }
                    (s, ns)
                }
            };
            TimeSpec::new(s, ns)
        }
    }
}

/// Whether Linux refuses user.* xattrs on nodes of this kind.
fn takes_no_xattrs(kind: FileType) -> bool {
    !matches!(kind, FileType::RegularFile | FileType::Directory)
}

fn stat_kind(st: &FileStat) -> FileType {
    mode_kind(st.st_mode)
}

fn mode_kind(mode: u32) -> FileType {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => FileType::Directory,
        SFlag::S_IFLNK => FileType::Symlink,
        SFlag::S_IFCHR => FileType::CharDevice,
        SFlag::S_IFBLK => FileType::BlockDevice,
        SFlag::S_IFIFO => FileType::NamedPipe,
        SFlag::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

thread_local! {
    /// Each serving thread's read buffer, grown to the largest read it has served.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Backing files are kept open per inode; let the cache use what the hard limit allows.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Replies to an xattr request of `size` bytes with `value`, as getxattr(2) sizes it.
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

fn reply_entry(fs: &UnionFs, reply: ReplyEntry, result: Res<FileAttr>) {
    match result {
        Ok(attr) => reply.entry_with_ttls(&fs.ttl, &fs.ttl, &attr, GENERATION),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Res<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is asked for alone: a kernel without one must not cost us the others.
        //
        // Not asked for, measured on 6.18 (requests per operation of
        // scripts/bench-write.sh, counted at the daemon):
        // - FUSE_WRITEBACK_CACHE: the workloads that matter here write each file
        //   once, and with it an append to a copied-up file costs a READ (the
        //   partial page) and a SETATTR (mtime at close) more, a delete a SETATTR
        //   more; a new small file costs the same five (LOOKUP, MKNOD, GETATTR of the
        //   parent, GETXATTR security.capability, WRITE).
        // - FUSE_HANDLE_KILLPRIV_V2: the kernel still asks for security.capability
        //   at the first write to each inode (it only skips the question for later
        //   writes), and the server must then clear setuid/setgid itself on
        //   truncate when FATTR_KILL_SUIDGID says so, which fuser 0.18 does not pass
        //   on: it could not be done right.
        for flag in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Always READDIRPLUS, never READDIRPLUS_AUTO: in auto mode the kernel
            // reads a directory's later pages with plain READDIR, then asks a
            // LOOKUP for each name there (a first stat walk of the test image:
            // 949 READDIR + 942 READDIRPLUS + 520 LOOKUP). Attributes are in
            // memory here, so sending them always costs only bytes.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_SPLICE_READ,
            InitFlags::FUSE_SPLICE_MOVE,
            InitFlags::FUSE_BIG_WRITES,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config
            .set_max_readahead(u32::MAX)
            .or_else(|max| config.set_max_readahead(max));
        self.zero_message_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok();
        self.zero_message_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        if self.writable.is_some() {
            // New nodes get exactly the mode the kernel asked for (it applied the
            // caller's umask already).
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        }
        raise_open_file_limit();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.resolve(parent.0, name.as_bytes()) {
            Ok(Some(ino)) => reply_entry(self, reply, self.entry_attr(ino)),
            Ok(None) => {
                // Inode 0 with a timeout: the kernel remembers the name is absent (and
                // reads nothing else of the reply).
                let absent = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: SystemTime::UNIX_EPOCH,
                    mtime: SystemTime::UNIX_EPOCH,
                    ctime: SystemTime::UNIX_EPOCH,
                    crtime: SystemTime::UNIX_EPOCH,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: BLOCK_SIZE,
                    flags: 0,
                };
                reply.entry_with_ttls(&self.ttl, &self.ttl, &absent, GENERATION);
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // The kernel sends a node's whole count when it drops the inode (fuser's
        // batch_forget comes here for each node).
        self.drop_if_unlinked(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.entry_attr(ino.0) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.setattr_op(ino.0, mode, uid, gid, size, atime, mtime) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = self.read_state();
        if let Some(st) = st.as_deref()
            && st.is_upper(ino.0)
        {
            let target = self.path(st, ino.0).ok_or(Errno::ENOENT).and_then(|p| {
                let w = self.w()?;
                let node = w.upper.node(&p).map_err(errno)?;
                nix::fcntl::readlinkat(&node, "").map_err(nix_errno)
            });
            return match target {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(e),
            };
        }
        match self.lower_pos_of(st.as_deref(), ino.0) {
            Ok(p) if self.lower.kind(p) == EntryKind::Symlink => {
                reply.data(self.lower.entry(p).symlink_target())
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode_kind(mode) == FileType::CharDevice && rdev == 0 {
            // A 0/0 device in the upper is a whiteout: it cannot be a file of the union
            // (kernel overlayfs refuses it too).
            return reply.error(Errno::EPERM);
        }
        let node = if mode_kind(mode) == FileType::RegularFile {
            NewNode::File { mode }
        } else {
            NewNode::Special {
                mode,
                rdev: u64::from(rdev),
            }
        };
        reply_entry(self, reply, self.make(req, parent.0, name.as_bytes(), node));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let node = NewNode::Dir { mode };
        reply_entry(self, reply, self.make(req, parent.0, name.as_bytes(), node));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.remove(parent.0, name.as_bytes(), false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.remove(parent.0, name.as_bytes(), true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let node = NewNode::Symlink {
            target: target.as_os_str().as_bytes(),
        };
        reply_entry(
            self,
            reply,
            self.make(req, parent.0, link_name.as_bytes(), node),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.rename_op(
            (parent.0, name.as_bytes()),
            (newparent.0, newname.as_bytes()),
            flags,
        );
        reply_empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self,
            reply,
            self.link_op(ino.0, newparent.0, newname.as_bytes()),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.writable.is_none() && flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // ENOSYS, once, tells a kernel that agreed to it never to send opens again;
        // it then keeps the page cache as FOPEN_KEEP_CACHE would.
        if self.zero_message_open {
            return reply.error(Errno::ENOSYS);
        }
        match self.data_file(ino.0) {
            Ok(_) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        // Found by inode, not handle: with zero-message open there are no handles.
        let (file, len) = match self.data_source(ino.0) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        // The kernel asks for whole pages: where the length is known, the read
        // stops at the end instead of taking one more call to find it (a call per
        // file read, ~10,000 in a first read of the test image).
        let size = len.map_or(size as usize, |len| {
            (size as u64).min(len.saturating_sub(offset)) as usize
        });
        READ_BUFFER.with_borrow_mut(|buf| {
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let buf = &mut buf[..size];
            let mut filled = 0;
            while filled < buf.len() {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return reply.error(e.into()),
                }
            }
            reply.data(&buf[..filled]);
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self
            .copy_up(ino.0, false)
            .and_then(|()| self.upper_file(ino.0))
            .and_then(|f| f.write_all_at(data, offset).map_err(io_errno));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (writes are not buffered here, and locks are the
        // kernel's own): ENOSYS, once, and the kernel stops sending flushes.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Files stay open with their node, for the next open of the inode.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let upper = self.read_state().is_some_and(|st| {
            st.nodes
                .get(&ino.0)
                .is_some_and(|n| n.in_upper || n.file.is_some())
        });
        if !upper {
            // Nothing of it was written: nothing to sync.
            return reply.ok();
        }
        let result = self.upper_file(ino.0).and_then(|f| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(io_errno)
        });
        reply_empty(reply, result);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.zero_message_opendir {
            // As for files: the kernel then caches listings (FOPEN_CACHE_DIR), and
            // drops them itself when a change through the mount touches the directory.
            return reply.error(Errno::ENOSYS);
        }
        match self.kind(self.read_state().as_deref(), ino.0) {
            Some(FileType::Directory) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.with_entries_after(ino.0, offset, |st, next, child, name| {
            let kind = self.kind(st, child).unwrap_or(FileType::RegularFile);
            reply.add(INodeNo(child), next, kind, OsStr::from_bytes(name))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = self.with_entries_after(ino.0, offset, |st, next, child, name| {
            let Ok(attr) = self.attr(st, child) else {
                return false;
            };
            reply.add(
                attr.ino,
                next,
                OsStr::from_bytes(name),
                &self.ttl,
                &attr,
                GENERATION,
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let st = self.read_state();
            let Some(st) = st.as_deref().filter(|s| s.is_upper(ino.0)) else {
                return Ok(());
            };
            let path = self.path(st, ino.0).ok_or(Errno::ENOENT)?;
            let dir = self.w()?.upper.open_dir(&path).map_err(errno)?;
            nix::unistd::fsync(&dir).map_err(nix_errno)
        })();
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stat = match &self.writable {
            Some(w) => w.upper.statfs(),
            None => match self.lower.first_tree() {
                Some(tree) => nix::sys::statvfs::fstatvfs(tree),
                None => return reply.statfs(0, 0, 0, 0, 0, BLOCK_SIZE, 255, BLOCK_SIZE),
            },
        };
        match stat {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files().max(self.lower.len() as u64),
                s.files_free(),
                s.block_size() as u32,
                NAME_MAX as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(nix_errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if self.shown.no_xattrs {
            return reply.error(Errno::ENOTSUP);
        }
        if is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::EPERM);
        }
        let result =
            self.copy_up_for_xattr(ino.0)
                .and_then(|()| match self.open_upper_file(ino.0) {
                    Some(file) => {
                        super::upper::file_set_xattr(&file, name.as_bytes(), value, flags)
                            .map_err(nix_errno)
                    }
                    None => self.on_upper_path(ino.0, |upper, path| {
                        upper
                            .set_xattr(path, name.as_bytes(), value, flags)
                            .map_err(errno)
                    }),
                });
        reply_empty(reply, result);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.shown.no_xattrs {
            return reply.error(Errno::ENOTSUP);
        }
        match self.xattr_value(ino.0, name.as_bytes()) {
            Ok(Some(value)) => reply_sized(reply, size, &value),
            Ok(None) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.shown.no_xattrs {
            return reply.error(Errno::ENOTSUP);
        }
        match self.xattr_names(ino.0) {
            Ok(names) => {
                let mut out = Vec::new();
                for name in names {
                    out.extend_from_slice(&name);
                    out.push(0);
                }
                reply_sized(reply, size, &out);
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.shown.no_xattrs {
            return reply.error(Errno::ENOTSUP);
        }
        if is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::EPERM);
        }
        match self.xattr_value(ino.0, name.as_bytes()) {
            Ok(None) => return reply.error(Errno::ENODATA),
            Err(e) => return reply.error(e),
            Ok(Some(_)) => {}
        }
        let result =
            self.copy_up_for_xattr(ino.0)
                .and_then(|()| match self.open_upper_file(ino.0) {
                    Some(file) => {
                        super::upper::file_remove_xattr(&file, name.as_bytes()).map_err(nix_errno)
                    }
                    None => self.on_upper_path(ino.0, |upper, path| {
                        upper.remove_xattr(path, name.as_bytes()).map_err(errno)
                    }),
                });
        reply_empty(reply, result);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked already.
        match self.kind(self.read_state().as_deref(), ino.0) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // ENOSYS, once: the kernel then creates with MKNOD and opens with no message
        // at all (zero-message open), where CREATE would also bring a RELEASE at
        // close. Four requests for open-write-close of a new file instead of six.
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self
            .copy_up(ino.0, false)
            .and_then(|()| self.upper_file(ino.0))
            .and_then(|f| {
                nix::fcntl::fallocate(
                    f.as_fd(),
                    nix::fcntl::FallocateFlags::from_bits_truncate(mode),
                    offset as i64,
                    length as i64,
                )
                .map_err(nix_errno)
            });
        reply_empty(reply, result);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let result = self
            .copy_up(ino_out.0, false)
            .and_then(|()| Ok((self.data_file(ino_in.0)?, self.upper_file(ino_out.0)?)))
            .and_then(|(src, dst)| {
                let want = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30);
                super::upper::copy_file_range_once(
                    src.as_fd(),
                    offset_in as i64,
                    dst.as_fd(),
                    offset_out as i64,
                    want,
                )
                .map_err(nix_errno)
            });
        match result {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges_map_both_ways_and_others_overflow() {
        let ranges = [(0, 1000, 1), (1, 100_000, 65_536)];
        assert_eq!(map_id(&ranges, 1000, Direction::Show), 0);
        assert_eq!(map_id(&ranges, 100_032, Direction::Show), 33);
        assert_eq!(map_id(&ranges, 33, Direction::Store), 100_032);
        assert_eq!(map_id(&ranges, 0, Direction::Store), 1000);
        assert_eq!(map_id(&ranges, 5, Direction::Show), OVERFLOW_ID);
        assert_eq!(map_id(&[], 5, Direction::Show), 5);
    }
}
