//! The FUSE filesystem over a flattened lower view.
//!
//! Inode numbers are positions in the view (plus one, so the root is 1): the same on
//! every mount of the same chain, and never the backing files' dev/ino. The names of
//! one hardlinked node share the inode of the first of them. Lookup, getattr, readdir,
//! readlink and xattrs are answered from the view in memory, with no syscall; only
//! reads touch the layer trees, through one descriptor per open inode, opened beneath
//! the layer's tree without following any symlink.
//!
//! Lower entries never change, so the kernel may cache attributes, entries and
//! negative lookups for as long as it likes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::fsutil::open_beneath;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use nix::fcntl::OFlag;

use super::idmap::IdMap;
use super::view::View;
use crate::image::layer::{EntryKind, split_last};
use crate::store::lock::FileLock;

/// How long the kernel may trust what we tell it about immutable lower entries.
pub const LOWER_TTL: Duration = Duration::from_secs(24 * 3600);
const GENERATION: Generation = Generation(1);
const BLOCK_SIZE: u32 = 4096;
/// Backing descriptors kept open at most; past it the cache starts afresh (readers
/// in flight keep theirs alive through their Arc).
const OPEN_FILES_LIMIT: usize = 4096;

/// The read-only union of a layer chain.
pub struct LowerFs {
    view: View,
    /// Directory descriptors of each layer's `tree/`, bottom first.
    trees: Vec<OwnedFd>,
    /// Per view position: its inode (hardlinks share the first name's).
    inode: Vec<u64>,
    /// Per view position: the position of its parent directory.
    parent: Vec<u32>,
    /// Children of each directory: `children[child_start[i]..child_start[i + 1]]`.
    children: Vec<u32>,
    child_start: Vec<u32>,
    uids: IdMap,
    gids: IdMap,
    /// Backing files by inode, opened on first read. Bounded: see OPEN_FILES_LIMIT.
    open_files: Mutex<HashMap<u64, Arc<File>>>,
    /// The kernel agreed to open files and directories without asking us: an open
    /// costs no round trip, and the page cache is kept.
    zero_message_open: bool,
    zero_message_opendir: bool,
    /// What the kernel may cache, and for how long (LOWER_TTL but in benchmarks).
    ttl: Duration,
    /// Shared locks that keep the layers from being collected while served.
    _held: Vec<FileLock>,
}

impl LowerFs {
    /// Serves `view`, whose layer `i` has its files under `trees[i]`.
    pub fn new(view: View, trees: Vec<OwnedFd>, uids: IdMap, gids: IdMap) -> LowerFs {
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
        let inode = (0..n)
            .map(|i| {
                let own = i as u64 + 1;
                match view.index.entry(i).hardlink_group() {
                    0 => own,
                    g => *first_of_group.entry(g).or_insert(own),
                }
            })
            .collect();
        LowerFs {
            view,
            trees,
            inode,
            parent,
            children,
            child_start,
            uids,
            gids,
            open_files: Mutex::new(HashMap::new()),
            zero_message_open: false,
            zero_message_opendir: false,
            ttl: LOWER_TTL,
            _held: Vec::new(),
        }
    }

    /// Keeps `locks` (the layers' use locks) for as long as the filesystem lives.
    pub fn holding(mut self, locks: Vec<FileLock>) -> LowerFs {
        self._held = locks;
        self
    }

    /// Sets how long the kernel may cache entries and attributes. Zero sends every
    /// lookup and stat to the daemon: what benchmarks of its own cost want.
    pub fn with_ttl(mut self, ttl: Duration) -> LowerFs {
        self.ttl = ttl;
        self
    }

    /// The view position an inode stands for.
    fn position(&self, ino: INodeNo) -> Option<usize> {
        let pos = ino.0.checked_sub(1)? as usize;
        (pos < self.view.len()).then_some(pos)
    }

    fn children_of(&self, pos: usize) -> &[u32] {
        let (start, end) = (
            self.child_start[pos] as usize,
            self.child_start[pos + 1] as usize,
        );
        &self.children[start..end]
    }

    fn lookup_child(&self, parent: usize, name: &[u8]) -> Option<usize> {
        let dir = self.view.index.entry(parent).path();
        let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() {
            path.extend_from_slice(dir);
            path.push(b'/');
        }
        path.extend_from_slice(name);
        self.view.index.search(&path).ok()
    }

    fn attr(&self, pos: usize) -> FileAttr {
        let entry = self.view.index.entry(pos);
        let meta = entry.meta();
        let kind = file_type(entry.kind());
        let mtime = to_system_time(meta.mtime_sec, meta.mtime_nsec);
        let size = if kind == FileType::Directory {
            u64::from(BLOCK_SIZE)
        } else {
            meta.size
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

    /// The shared descriptor of an inode's backing file, opened on first use.
    fn backing_file(&self, pos: usize) -> Result<Arc<File>, Errno> {
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
            self.view.index.entry(pos).path(),
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

    /// The entries of a directory listing from `offset` on: ".", "..", then children.
    fn listing(&self, pos: usize, offset: u64) -> impl Iterator<Item = (u64, usize, &[u8])> {
        let dots = [
            (1u64, pos, &b"."[..]),
            (2, self.parent[pos] as usize, &b".."[..]),
        ];
        let kids = self
            .children_of(pos)
            .iter()
            .enumerate()
            .map(move |(k, &child)| {
                let name = split_last(self.view.index.entry(child as usize).path()).1;
                (k as u64 + 3, child as usize, name)
            });
        dots.into_iter().chain(kids).skip(offset as usize)
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

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDevice | EntryKind::Whiteout => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
    }
}

fn to_system_time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(u64::from(nsec))
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

impl Filesystem for LowerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is asked for alone: a kernel without one must not cost us the others.
        for flag in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_SPLICE_READ,
            InitFlags::FUSE_SPLICE_MOVE,
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
        raise_open_file_limit();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(dir) = self.position(parent) else {
            return reply.error(Errno::ENOENT);
        };
        match self.lookup_child(dir, name.as_bytes()) {
            Some(pos) => reply.entry_with_ttls(&self.ttl, &self.ttl, &self.attr(pos), GENERATION),
            None => {
                // Inode 0 with a timeout: the kernel remembers the name is absent.
                let mut absent = self.attr(dir);
                absent.ino = INodeNo(0);
                reply.entry_with_ttls(&self.ttl, &self.ttl, &absent, GENERATION);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.position(ino) {
            Some(pos) => reply.attr(&self.ttl, &self.attr(pos)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.position(ino).map(|p| self.view.index.entry(p)) {
            Some(e) if e.kind() == EntryKind::Symlink => reply.data(e.symlink_target()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(pos) = self.position(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // ENOSYS, once, tells a kernel that agreed to it never to send opens again;
        // it then keeps the page cache as FOPEN_KEEP_CACHE would.
        if self.zero_message_open {
            return reply.error(Errno::ENOSYS);
        }
        match self.backing_file(pos) {
            Ok(_) => reply.opened(FileHandle(self.inode[pos]), FopenFlags::FOPEN_KEEP_CACHE),
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
        let Some(pos) = self.position(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let file = match self.backing_file(pos) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        READ_BUFFER.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
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
        // Backing files stay cached for the next open of the inode.
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.zero_message_opendir {
            // As for files: the kernel then caches listings (FOPEN_CACHE_DIR).
            return reply.error(Errno::ENOSYS);
        }
        match self.position(ino).map(|p| self.view.index.entry(p).kind()) {
            // The listing never changes: let the kernel keep it.
            Some(EntryKind::Dir) => reply.opened(
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
        let Some(pos) = self.position(ino) else {
            return reply.error(Errno::ENOENT);
        };
        for (next, child, name) in self.listing(pos, offset) {
            let kind = file_type(self.view.index.entry(child).kind());
            if reply.add(
                INodeNo(self.inode[child]),
                next,
                kind,
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(pos) = self.position(ino) else {
            return reply.error(Errno::ENOENT);
        };
        for (next, child, name) in self.listing(pos, offset) {
            let attr = self.attr(child);
            if reply.add(
                attr.ino,
                next,
                OsStr::from_bytes(name),
                &self.ttl,
                &attr,
                GENERATION,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Some(tree) = self.trees.first() else {
            return reply.statfs(0, 0, 0, 0, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
        };
        match nix::sys::statvfs::fstatvfs(tree) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                self.view.len() as u64,
                0,
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(pos) = self.position(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let xattrs = self.view.index.entry(pos).xattrs();
        match xattrs.iter().find(|(n, _)| *n == name.as_bytes()) {
            Some((_, value)) => reply_sized(reply, size, value),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(pos) = self.position(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for (name, _) in self.view.index.entry(pos).xattrs() {
            names.extend_from_slice(name);
            names.push(0);
        }
        reply_sized(reply, size, &names);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked already.
        match self.position(ino) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}
