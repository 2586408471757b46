//! The writable layer on disk: an upper directory and a work directory beside it.
//!
//! Nothing here knows about FUSE: these are the on-disk operations the filesystem will
//! call. The formats are those kernel overlayfs (mounted with `userxattr`) and
//! fuse-overlayfs read, so an upper strata wrote can be mounted by either:
//!
//! - **Whiteout**: a character device 0/0 with the deleted name. An unprivileged
//!   process may mknod a 0/0 device (Linux ≥ 5.8). Only if mknod says EPERM do we fall
//!   back to an empty regular file `.wh.NAME` (the OCI tar form, which fuse-overlayfs
//!   also reads but kernel overlayfs does not); [`Whiteout`] says which was made.
//! - **Opaque directory**: xattr `user.overlay.opaque` = `y`. When reading, any of
//!   `trusted.overlay.opaque`, `user.overlay.opaque` and `user.fuseoverlayfs.opaque`
//!   equal to `y` makes a directory opaque.
//! - **Owner and mode the host cannot store**: xattr `user.containers.override_stat`
//!   = `UID:GID:MODE`, uid and gid in decimal, mode the permission bits (setuid,
//!   setgid, sticky included) in octal with a leading 0, e.g. `0:0:0755`.
//!   fuse-overlayfs reads it with `sscanf(buf, "%d:%d:%o")` and replaces the permission
//!   bits of the real st_mode, keeping the real file type
//!   (containers/fuse-overlayfs, utils.c, `override_mode`). It has no type or rdev, so
//!   for a node the host cannot make (a block or char device other than 0/0) we append
//!   a fourth field, `:block-MAJ-MIN`, `:char-MAJ-MIN`, `:pipe`, `:socket`, ... as
//!   containers/storage writes it; readers that know three fields stop before it.
//!   We write it only when the owner is not the daemon's own, or the type needs it.
//! - **The xattr of the override** is a property of the upper ([`OverrideXattr`]):
//!   `user.containers.override_stat` by default, as above. fuse-overlayfs's
//!   `xattr_permissions=1` and `=2` keep every regular file's and directory's owner
//!   and mode in `security.fuseoverlayfs.override_stat` or
//!   `user.fuseoverlayfs.override_stat` instead, never chowning; its readers then
//!   fail (ENODATA) on a file of that upper without one. So in those modes strata
//!   records the override on every regular file and directory it makes or changes,
//!   and marks the upper's root with it at mount (fuse-overlayfs decides from a
//!   layer's root which of the three names that layer's files carry: see
//!   [`layer_override_xattr`]). `security.*` needs CAP_SYS_ADMIN over the upper's
//!   filesystem: [`Upper::open_with`] tries it at once and says so if it is refused.
//!
//! Every path is relative to the upper (`"a/b/c"`, `""` for the root). The parent is
//! opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV) from the upper's descriptor, and the last component is used with
//! the *at() calls and AT_SYMLINK_NOFOLLOW / O_NOFOLLOW, so a symlink anywhere in the
//! path fails the operation (ELOOP or EXDEV) instead of leading out of the upper.
//!
//! Copy-up builds the new node in work/ (an O_TMPFILE when the filesystem has them,
//! else a `#strata-PID-N` name), sets data, xattrs, mode and times there, and only then
//! publishes it under its name with linkat or renameat2(RENAME_NOREPLACE). A crash
//! before that leaves litter in work/ and nothing at the destination. Work and upper
//! must be one filesystem for that rename; [`Upper::open`] checks it.
//!
//! - **Origin**: a copied-up regular file or directory carries
//!   `user.overlay.strata.origin` = its lower path, so it keeps its inode number on
//!   the next mount. Symlinks, fifos, sockets and devices take no `user.*` xattrs:
//!   their origins are listed on their directory (`user.overlay.strata.symlink-origins`).
//!   Both names are under `user.overlay.`, which kernel overlayfs keeps to itself.
//!
//! A metadata-only change (chmod, chown, utimens, xattr) copies the data too: kernel
//! overlayfs's metacopy files are refused with `userxattr`, so an upper that used them
//! could not be read by kernel overlayfs in a user namespace. The copy is a reflink
//! where the filesystem has them (btrfs, xfs), so it costs nothing there.
//!
//! Symlinks cannot carry `user.*` xattrs on Linux, so a symlink's owner is kept only
//! where the daemon may chown it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::store::fsutil::open_beneath;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, Whence};
use thiserror::Error;

use crate::image::layer::split_last;
use crate::store::unpack::remove_tree_at;

pub const OPAQUE_XATTR: &str = "user.overlay.opaque";
/// Every name under which some overlay implementation marks a directory opaque.
pub const OPAQUE_XATTRS_READ: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// The default override xattr (containers/storage's name, which fuse-overlayfs reads).
pub const OVERRIDE_XATTR: &str = "user.containers.override_stat";
/// fuse-overlayfs's `xattr_permissions=2`.
pub const USER_OVERRIDE_XATTR: &str = "user.fuseoverlayfs.override_stat";
/// fuse-overlayfs's `xattr_permissions=1`: CAP_SYS_ADMIN over the filesystem to write.
pub const PRIVILEGED_OVERRIDE_XATTR: &str = "security.fuseoverlayfs.override_stat";

/// Where an upper keeps the owners and modes it does not give its files on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OverrideXattr {
    /// [`OVERRIDE_XATTR`], only where the host cannot store the owner.
    #[default]
    Containers,
    /// [`PRIVILEGED_OVERRIDE_XATTR`], on every regular file and directory.
    Privileged,
    /// [`USER_OVERRIDE_XATTR`], on every regular file and directory.
    User,
}

impl OverrideXattr {
    /// What fuse-overlayfs's `xattr_permissions=N` asks for; None for other values.
    pub fn from_xattr_permissions(n: u32) -> Option<OverrideXattr> {
        match n {
            0 => Some(OverrideXattr::Containers),
            1 => Some(OverrideXattr::Privileged),
            2 => Some(OverrideXattr::User),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OverrideXattr::Containers => OVERRIDE_XATTR,
            OverrideXattr::Privileged => PRIVILEGED_OVERRIDE_XATTR,
            OverrideXattr::User => USER_OVERRIDE_XATTR,
        }
    }

    /// Every regular file and directory carries the override, whoever owns it.
    pub fn always(self) -> bool {
        self != OverrideXattr::Containers
    }
}

/// The override `name` of the open directory `dir`, if it has a well-formed one.
pub fn dir_override(dir: &OwnedFd, name: &str) -> Option<OverrideStat> {
    match fget_xattr(dir.as_fd(), name.as_bytes()) {
        Ok(Some(v)) if v.len() <= OVERRIDE_MAX => OverrideStat::decode(&v).ok(),
        _ => None,
    }
}

/// The override xattr the files of a lower layer carry, as fuse-overlayfs decides
/// it: the first of the privileged, the containers and the fuse-overlayfs user name
/// that the layer's root has. fuse-overlayfs reads none where the root has none;
/// strata reads the containers name there, as it always has (its own uppers mark
/// only the files whose owner the host could not store, never the root).
pub fn layer_override_xattr(root: &OwnedFd) -> &'static str {
    [
        PRIVILEGED_OVERRIDE_XATTR,
        OVERRIDE_XATTR,
        USER_OVERRIDE_XATTR,
    ]
    .into_iter()
    .find(|name| matches!(fget_xattr(root.as_fd(), name.as_bytes()), Ok(Some(_))))
    .unwrap_or(OVERRIDE_XATTR)
}

/// The prefix of a whiteout file where the kernel refuses a 0/0 device.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

const COPY_CHUNK: usize = 1 << 20;
/// Longest override value we accept back: fuse-overlayfs reads 63 bytes at most.
const OVERRIDE_MAX: usize = 63;

#[derive(Debug, Error)]
pub enum UpperError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Errno,
    },

    #[error(
        "the work directory {work} is not on the filesystem of the upper {upper}: copy-up renames from one into the other; put them side by side"
    )]
    CrossDevice { upper: PathBuf, work: PathBuf },

    #[error(
        "the upper {upper} (work directory {work}) is in use by another mount: unmount that one first, or give this mount another upper"
    )]
    InUse { upper: PathBuf, work: PathBuf },

    #[error("{op} '{path}' in the upper: {errno}")]
    Sys {
        op: &'static str,
        path: String,
        errno: Errno,
    },

    #[error("'{0}' is not a name strata can create in the upper")]
    BadName(String),

    #[error("malformed override xattr value '{0}'")]
    BadOverride(String),

    #[error(
        "xattr_permissions=1 keeps owners and modes in {PRIVILEGED_OVERRIDE_XATTR}, and the kernel refused to write it in {upper} ({errno}): security.* xattrs need CAP_SYS_ADMIN over that filesystem; use xattr_permissions=2 (user.fuseoverlayfs.override_stat) or mount as root"
    )]
    PrivilegedXattr { upper: PathBuf, errno: Errno },

    #[error("the lower file '{0}' changed size while it was copied up")]
    SourceChanged(String),
}

impl UpperError {
    /// The system error behind this error, if there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            UpperError::Open { source, .. } => Some(*source),
            UpperError::Sys { errno, .. } => Some(*errno),
            UpperError::BadName(_) => Some(Errno::EINVAL),
            UpperError::PrivilegedXattr { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The error of a failed system call on `path`. The path becomes a String only on
/// failure: this is made for every call, and most succeed.
fn sys<'p>(op: &'static str, path: &'p [u8]) -> impl FnOnce(Errno) -> UpperError + 'p {
    move |errno| UpperError::Sys {
        op,
        path: String::from_utf8_lossy(path).into_owned(),
        errno,
    }
}

/// What `create_whiteout` made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout {
    /// A character device 0/0 with the name itself: what kernel overlayfs reads.
    CharDevice,
    /// An empty file `.wh.NAME`: mknod was refused.
    WhFile,
}

/// The file type carried in an override's optional fourth field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    File,
    Dir,
    Symlink,
    Pipe,
    Socket,
    Block { major: u32, minor: u32 },
    Char { major: u32, minor: u32 },
}

/// The owner and mode of an override xattr (`user.containers.override_stat`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky: 0o7777 at most.
    pub mode: u32,
    pub kind: Option<OverrideKind>,
}

impl OverrideStat {
    pub fn encode(&self) -> String {
        let base = format!("{}:{}:0{:o}", self.uid, self.gid, self.mode & 0o7777);
        match self.kind {
            None => base,
            Some(kind) => format!("{base}:{}", encode_kind(kind)),
        }
    }

    pub fn decode(value: &[u8]) -> Result<OverrideStat, UpperError> {
        let bad = || UpperError::BadOverride(String::from_utf8_lossy(value).into_owned());
        let text = std::str::from_utf8(value).map_err(|_| bad())?;
        // Writers in C may count the terminating NUL in the value.
        let text = text.trim_end_matches('\0');
        let mut fields = text.splitn(4, ':');
        let uid = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let gid = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        // fuse-overlayfs writes the whole st_mode, file type bits included
        // (`0:0:100644`), and keeps only the permission bits when it reads.
        let mode = fields
            .next()
            .and_then(|f| u32::from_str_radix(f, 8).ok())
            .filter(|m| m & !0o7777 == 0 || is_file_type(m & !0o7777))
            .map(|m| m & 0o7777)
            .ok_or_else(bad)?;
        let kind = match fields.next() {
            None => None,
            Some(f) => Some(decode_kind(f).ok_or_else(bad)?),
        };
        Ok(OverrideStat {
            uid,
            gid,
            mode,
            kind,
        })
    }
}

/// Whether `bits` are one file type of st_mode, nothing else.
fn is_file_type(bits: u32) -> bool {
    [
        libc::S_IFREG,
        libc::S_IFDIR,
        libc::S_IFLNK,
        libc::S_IFIFO,
        libc::S_IFSOCK,
        libc::S_IFCHR,
        libc::S_IFBLK,
    ]
    .contains(&bits)
}

fn encode_kind(kind: OverrideKind) -> String {
    match kind {
        OverrideKind::File => "file".into(),
        OverrideKind::Dir => "dir".into(),
        OverrideKind::Symlink => "symlink".into(),
        OverrideKind::Pipe => "pipe".into(),
        OverrideKind::Socket => "socket".into(),
        OverrideKind::Block { major, minor } => format!("block-{major}-{minor}"),
        OverrideKind::Char { major, minor } => format!("char-{major}-{minor}"),
    }
}

fn decode_kind(field: &str) -> Option<OverrideKind> {
    let device = |rest: &str| -> Option<(u32, u32)> {
        let (major, minor) = rest.split_once('-')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    Some(match field {
        "file" => OverrideKind::File,
        "dir" => OverrideKind::Dir,
        "symlink" => OverrideKind::Symlink,
        "pipe" => OverrideKind::Pipe,
        "socket" => OverrideKind::Socket,
        _ => {
            if let Some(rest) = field.strip_prefix("block-") {
                let (major, minor) = device(rest)?;
                OverrideKind::Block { major, minor }
            } else {
                let (major, minor) = device(field.strip_prefix("char-")?)?;
                OverrideKind::Char { major, minor }
            }
        }
    })
}

/// A stat of an upper entry is a whiteout: a character device 0/0.
pub fn is_whiteout(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && st.st_rdev == 0
}

/// The name a `.wh.` whiteout file hides, if `name` is one.
pub fn whiteout_file_target(name: &[u8]) -> Option<&[u8]> {
    name.strip_prefix(WHITEOUT_PREFIX).filter(|n| !n.is_empty())
}

/// What copy-up gives the new upper node besides its data.
#[derive(Debug, Clone, Default)]
pub struct NodeMeta {
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    /// The lower layers have no atime: None takes the mtime.
    pub atime: Option<(i64, u32)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// fsync the data and metadata before publishing.
    pub fsync: bool,
    /// The lower path it is a copy of, recorded in [`ORIGIN_XATTR`].
    pub origin: Option<Vec<u8>>,
}

impl NodeMeta {
    fn times(&self) -> (TimeSpec, TimeSpec) {
        let ts = |(s, ns): (i64, u32)| TimeSpec::new(s, i64::from(ns));
        (ts(self.atime.unwrap_or(self.mtime)), ts(self.mtime))
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name for something being built in work/: `#strata-PID-N`. The pid is read
/// once per upper (getpid is a system call, and a copy-up or whiteout needs a name);
/// the exclusive lock on work/ keeps any other process from building there.
fn temp_name(pid: u32) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("#strata-{pid}-{n}")
}

/// How many directory descriptors [`DirFds`] keeps at most. Each is an open file of
/// the daemon's; the limit keeps them well under the raised RLIMIT_NOFILE beside the
/// upper files the filesystem keeps open.
const DIR_FDS_LIMIT: usize = 1024;

/// O_PATH descriptors of upper directories, by path: an operation in a directory
/// (create, whiteout, copy-up, stat) then costs one *at() call instead of an
/// openat2 walk of its path and a close. Each was opened as a path walk would
/// (beneath the upper, no symlinks), and stays right for as long as its path names
/// the same directory: the renames and removals that could change that all go
/// through [`Upper::rename`] and [`Upper::remove`], which forget the paths they move.
/// (As for kernel overlayfs, changing the upper behind a mounted union's back is
/// not supported.)
#[derive(Default)]
struct DirFds {
    by_path: BTreeMap<Vec<u8>, Arc<OwnedFd>>,
    /// Moves on at every forget: a descriptor opened before is not kept (its path
    /// may have moved while it was opened without the lock).
    generation: u64,
}

impl DirFds {
    /// Forgets `path` and every path beneath it.
    fn forget(&mut self, path: &[u8]) {
        self.generation += 1;
        self.by_path.remove(path);
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        if path.is_empty() {
            self.by_path.clear();
            return;
        }
        let beneath: Vec<Vec<u8>> = self
            .by_path
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in beneath {
            self.by_path.remove(&k);
        }
    }
}

/// The upper and work directories of one writable layer.
pub struct Upper {
    upper: OwnedFd,
    work: OwnedFd,
    over_xattr: OverrideXattr,
    /// An exclusive flock on work/ for as long as the upper is in use: two daemons
    /// writing one upper would each trust a picture of it the other changes (kernel
    /// overlayfs refuses that too, with EBUSY).
    _in_use: nix::fcntl::Flock<File>,
    dirs: Mutex<DirFds>,
    /// The daemon's pid, for [`temp_name`].
    pid: u32,
    /// The daemon's effective uid and gid, read at the first node it makes (after
    /// any id mapping of its namespace): a node made with them needs no chown.
    own_ids: OnceLock<(u32, u32)>,
    /// FICLONE failed from a lower on this device: copy without trying it again.
    no_reflink_from: Mutex<Vec<u64>>,
}

/// How long a mount waits for the upper's previous mount to let go: the daemon of a
/// mount just unmounted takes a moment to exit, and a remount at once is common.
const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the exclusive lock on the work directory, waiting IN_USE_WAIT at most.
fn lock_work(dir: File, upper: &Path, work: &Path) -> Result<nix::fcntl::Flock<File>, UpperError> {
    let deadline = std::time::Instant::now() + IN_USE_WAIT;
    let mut dir = dir;
    loop {
        match nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                dir = back;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(UpperError::InUse {
                    upper: upper.to_path_buf(),
                    work: work.to_path_buf(),
                });
            }
            Err((_, source)) => {
                return Err(UpperError::Open {
                    path: work.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn open_dir_path(path: &Path) -> Result<OwnedFd, UpperError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::open(path, flags, Mode::empty()).map_err(|source| UpperError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn stat_dev(fd: &OwnedFd, path: &Path) -> Result<u64, UpperError> {
    nix::sys::stat::fstat(fd)
        .map(|st| st.st_dev)
        .map_err(|source| UpperError::Open {
            path: path.to_path_buf(),
            source,
        })
}

impl Upper {
    /// Opens an upper and its work directory, which must be one filesystem.
    pub fn open(upper: &Path, work: &Path) -> Result<Upper, UpperError> {
        let upper_fd = open_dir_path(upper)?;
        let work_fd = open_dir_path(work)?;
        if stat_dev(&upper_fd, upper)? != stat_dev(&work_fd, work)? {
            return Err(UpperError::CrossDevice {
                upper: upper.to_path_buf(),
                work: work.to_path_buf(),
            });
        }
        let dup = work_fd.try_clone().map_err(|_| UpperError::Open {
            path: work.to_path_buf(),
            source: Errno::EMFILE,
        })?;
        let in_use = lock_work(File::from(dup), upper, work)?;
        Ok(Upper {
            upper: upper_fd,
            work: work_fd,
            over_xattr: OverrideXattr::default(),
            _in_use: in_use,
            dirs: Mutex::new(DirFds::default()),
            pid: std::process::id(),
            own_ids: OnceLock::new(),
            no_reflink_from: Mutex::new(Vec::new()),
        })
    }

    /// Opens an upper that keeps overrides in `over_xattr`. Where that is on every
    /// file (fuse-overlayfs's xattr_permissions), the upper's root is marked with it
    /// now, as fuse-overlayfs marks it: with the first of `lower_roots` (top first)
    /// that has the same mark, else with the root's own owner and mode. A privileged
    /// name is tried here, so that a refusal is said at mount, not at the first write.
    pub fn open_with(
        upper: &Path,
        work: &Path,
        over_xattr: OverrideXattr,
        lower_roots: &[&OwnedFd],
    ) -> Result<Upper, UpperError> {
        let mut opened = Upper::open(upper, work)?;
        opened.over_xattr = over_xattr;
        if over_xattr.always() {
            opened.mark_root(upper, lower_roots)?;
        }
        Ok(opened)
    }

    fn mark_root(&self, upper: &Path, lower_roots: &[&OwnedFd]) -> Result<(), UpperError> {
        let name = self.over_xattr.name().as_bytes();
        let refused = |errno| match self.over_xattr {
            OverrideXattr::Privileged if matches!(errno, Errno::EPERM | Errno::ENOTSUP) => {
                UpperError::PrivilegedXattr {
                    upper: upper.to_path_buf(),
                    errno,
                }
            }
            _ => sys("setxattr", b"")(errno),
        };
        let value = match fget_xattr(self.upper.as_fd(), name).map_err(sys("getxattr", b""))? {
            // Set again, the same: the test of whether we may write it.
            Some(v) => v,
            None => self.root_mark_from(lower_roots)?,
        };
        fset_xattr(self.upper.as_fd(), name, &value).map_err(refused)
    }

    /// The mark a new upper root takes: a lower root's (by our name, or for the
    /// unprivileged one the containers name too), else the root's own stat.
    fn root_mark_from(&self, lower_roots: &[&OwnedFd]) -> Result<Vec<u8>, UpperError> {
        let mut names = vec![self.over_xattr.name()];
        if self.over_xattr == OverrideXattr::User {
            names.push(OVERRIDE_XATTR);
        }
        for root in lower_roots {
            for name in &names {
                if let Ok(Some(v)) = fget_xattr(root.as_fd(), name.as_bytes()) {
                    return Ok(v);
                }
            }
        }
        let st = nix::sys::stat::fstat(&self.upper).map_err(sys("stat", b""))?;
        let own = OverrideStat {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind: None,
        };
        Ok(own.encode().into_bytes())
    }

    /// The xattr this upper keeps overrides in.
    pub fn override_xattr(&self) -> OverrideXattr {
        self.over_xattr
    }

    /// Opens a directory of the upper, never through a symlink, never outside it.
    pub fn open_dir(&self, path: &[u8]) -> Result<OwnedFd, UpperError> {
        open_beneath(
            self.upper.as_fd(),
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(sys("open", path))
    }

    /// The parent directory of `path` (an O_PATH descriptor, for *at() calls) and
    /// its last component, which must be a name.
    fn parent<'p>(&self, path: &'p [u8]) -> Result<(Arc<OwnedFd>, &'p [u8]), UpperError> {
        let (parent, name) = split_last(path);
        if name.is_empty() || name == b"." || name == b".." || name.contains(&0) {
            return Err(UpperError::BadName(
                String::from_utf8_lossy(path).into_owned(),
            ));
        }
        Ok((self.dir_fd(parent)?, name))
    }

    fn lock_dirs(&self) -> std::sync::MutexGuard<'_, DirFds> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An O_PATH descriptor of the upper directory `path`, from [`DirFds`] or opened
    /// (and kept) now.
    fn dir_fd(&self, path: &[u8]) -> Result<Arc<OwnedFd>, UpperError> {
        let generation = {
            let dirs = self.lock_dirs();
            if let Some(fd) = dirs.by_path.get(path) {
                return Ok(fd.clone());
            }
            dirs.generation
        };
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let fd =
            Arc::new(open_beneath(self.upper.as_fd(), path, flags).map_err(sys("open", path))?);
        let mut dirs = self.lock_dirs();
        if dirs.generation == generation {
            if dirs.by_path.len() >= DIR_FDS_LIMIT {
                dirs.by_path.clear();
            }
            dirs.by_path.insert(path.to_vec(), fd.clone());
        }
        Ok(fd)
    }

    /// Forgets the descriptors of `path` and of everything beneath it: it is about to
    /// be renamed or removed.
    fn forget_dirs(&self, path: &[u8]) {
        self.lock_dirs().forget(path);
    }

    /// Whether a node the daemon makes gets the owner `uid:gid` without a chown.
    fn is_own(&self, uid: u32, gid: u32) -> bool {
        let own = self.own_ids.get_or_init(|| {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        });
        (uid, gid) == *own
    }

    fn temp_name(&self) -> String {
        temp_name(self.pid)
    }

    /// An O_PATH descriptor of the node itself, the last component not followed.
    fn open_node(&self, path: &[u8]) -> Result<OwnedFd, UpperError> {
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if path.is_empty() {
            return nix::fcntl::openat(&self.upper, ".", flags, Mode::empty())
                .map_err(sys("open", path));
        }
        let (parent, name) = self.parent(path)?;
        nix::fcntl::openat(&parent, name, flags, Mode::empty()).map_err(sys("open", path))
    }

    /// Creates a whiteout at `path`, replacing a non-directory there (atomically: the
    /// whiteout is made in work/ and renamed over it).
    pub fn create_whiteout(&self, path: &[u8]) -> Result<Whiteout, UpperError> {
        let (parent, name) = self.parent(path)?;
        let tmp = self.temp_name();
        let dev = nix::sys::stat::makedev(0, 0);
        match nix::sys::stat::mknodat(&self.work, tmp.as_str(), SFlag::S_IFCHR, Mode::empty(), dev)
        {
            Ok(()) => {
                self.publish_replacing(&tmp, &parent, name, path)?;
                Ok(Whiteout::CharDevice)
            }
            Err(Errno::EPERM) => {
                self.create_whiteout_file(&parent, name, path)?;
                Ok(Whiteout::WhFile)
            }
            Err(e) => Err(sys("mknod", path)(e)),
        }
    }

    fn create_whiteout_file(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), UpperError> {
        let mut wh_name = WHITEOUT_PREFIX.to_vec();
        wh_name.extend_from_slice(name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(
            parent,
            wh_name.as_slice(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(_) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(sys("create", path)(e)),
        }
    }

    /// Renames work/`tmp` over `parent`/`name`; on failure removes `tmp`.
    fn publish_replacing(
        &self,
        tmp: &str,
        parent: &OwnedFd,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), UpperError> {
        nix::fcntl::renameat(&self.work, tmp, parent, name).map_err(|e| {
            let _ = nix::unistd::unlinkat(&self.work, tmp, UnlinkatFlags::NoRemoveDir);
            sys("rename", path)(e)
        })
    }

    /// Marks the directory `path` opaque, as kernel overlayfs with userxattr reads it.
    pub fn set_opaque(&self, path: &[u8]) -> Result<(), UpperError> {
        let dir = self.open_dir(path)?;
        fset_xattr(dir.as_fd(), OPAQUE_XATTR.as_bytes(), b"y").map_err(sys("setxattr", path))
    }

    /// Whether the directory `path` carries any of the opaque marks.
    pub fn is_opaque(&self, path: &[u8]) -> Result<bool, UpperError> {
        dir_is_opaque(&self.open_dir(path)?, path)
    }

    /// Records the owner and mode of `path` in the upper's override xattr.
    pub fn set_override(&self, path: &[u8], stat: &OverrideStat) -> Result<(), UpperError> {
        let node = self.open_node(path)?;
        path_set_xattr(
            node.as_fd(),
            self.over_xattr.name().as_bytes(),
            stat.encode().as_bytes(),
            0,
        )
        .map_err(sys("setxattr", path))
    }

    /// The override recorded on `path`, if any.
    pub fn get_override(&self, path: &[u8]) -> Result<Option<OverrideStat>, UpperError> {
        let node = self.open_node(path)?;
        match path_get_xattr(&node, self.over_xattr.name().as_bytes()) {
            Ok(Some(v)) if v.len() <= OVERRIDE_MAX => OverrideStat::decode(&v).map(Some),
            Ok(Some(v)) => Err(UpperError::BadOverride(
                String::from_utf8_lossy(&v).into_owned(),
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(sys("getxattr", path)(e)),
        }
    }

    /// Copies the lower file `src` up to `path`, which must not exist in the upper.
    pub fn copy_up_file(&self, src: &File, path: &[u8], meta: &NodeMeta) -> Result<(), UpperError> {
        self.parent(path)?;
        let copy = self.prepare_copy(Some(src), path, meta)?;
        match self.publish_copy_ref(&copy, path) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.discard_copy(copy);
                Err(e)
            }
        }
    }

    fn create_temp_file(&self, path: &[u8]) -> Result<TempFile, UpperError> {
        let mode = Mode::from_bits_truncate(0o600);
        let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(&self.work, ".", flags, mode) {
            Ok(fd) => return Ok(TempFile::Anonymous(File::from(fd))),
            // Filesystems without O_TMPFILE say EOPNOTSUPP; old kernels EISDIR.
            Err(Errno::EOPNOTSUPP) | Err(Errno::EISDIR) => {}
            Err(e) => return Err(sys("create in work/ for", path)(e)),
        }
        let tmp = self.temp_name();
        let flags =
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.work, tmp.as_str(), flags, mode)
            .map_err(sys("create in work/ for", path))?;
        Ok(TempFile::Named(tmp, File::from(fd)))
    }

    /// Sets xattrs, the owner (or the override), mode and times, in that order: times
    /// last, since the others may touch them. Returns the override it recorded.
    fn apply_meta(
        &self,
        fd: BorrowedFd,
        path: &[u8],
        meta: &NodeMeta,
    ) -> Result<Option<OverrideStat>, UpperError> {
        for (name, value) in &meta.xattrs {
            fset_xattr(fd, name, value).map_err(sys("setxattr", path))?;
        }
        if let Some(origin) = &meta.origin {
            fset_xattr(fd, ORIGIN_XATTR.as_bytes(), origin).map_err(sys("setxattr", path))?;
        }
        let over = self.own_fd(fd, meta.uid, meta.gid, meta.mode, path)?;
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777))
            .map_err(sys("chmod", path))?;
        let (atime, mtime) = meta.times();
        nix::sys::stat::futimens(fd, &atime, &mtime).map_err(sys("utimens", path))?;
        Ok(over)
    }

    /// Copies a lower directory's metadata up to `path` as an empty directory.
    /// Returns the override it recorded.
    pub fn copy_up_dir(
        &self,
        path: &[u8],
        meta: &NodeMeta,
    ) -> Result<Option<OverrideStat>, UpperError> {
        let (parent, name) = self.parent(path)?;
        let tmp = self.temp_name();
        nix::sys::stat::mkdirat(&self.work, tmp.as_str(), Mode::from_bits_truncate(0o700))
            .map_err(sys("mkdir in work/ for", path))?;
        let result = self.fill_dir_and_publish(&tmp, &parent, name, path, meta);
        if result.is_err() {
            let _ = remove_tree_at(&self.work, tmp.as_bytes());
        }
        result
    }

    fn fill_dir_and_publish(
        &self,
        tmp: &str,
        parent: &OwnedFd,
        name: &[u8],
        path: &[u8],
        meta: &NodeMeta,
    ) -> Result<Option<OverrideStat>, UpperError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let dir = nix::fcntl::openat(&self.work, tmp, flags, Mode::empty())
            .map_err(sys("open in work/ for", path))?;
        let over = self.apply_meta(dir.as_fd(), path, meta)?;
        if meta.fsync {
            nix::unistd::fsync(&dir).map_err(sys("fsync", path))?;
        }
        // The rename moves the directory's ctime, never its mtime.
        rename_noreplace(&self.work, tmp, parent, name, path)?;
        Ok(over)
    }

    /// Copies a lower symlink up to `path`. Its owner and xattrs are not kept: Linux
    /// refuses user.* xattrs on symlinks.
    pub fn copy_up_symlink(
        &self,
        path: &[u8],
        target: &[u8],
        meta: &NodeMeta,
    ) -> Result<(), UpperError> {
        let (parent, name) = self.parent(path)?;
        let tmp = self.temp_name();
        nix::unistd::symlinkat(target, &self.work, tmp.as_str())
            .map_err(sys("symlink in work/ for", path))?;
        if !self.is_own(meta.uid, meta.gid) {
            // Where the daemon may; a symlink has nowhere to record an override.
            let _ = nix::unistd::fchownat(
                &self.work,
                tmp.as_str(),
                Some(nix::unistd::Uid::from_raw(meta.uid)),
                Some(nix::unistd::Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            );
        }
        let (atime, mtime) = meta.times();
        let result = nix::sys::stat::utimensat(
            &self.work,
            tmp.as_str(),
            &atime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys("utimens", path))
        .and_then(|()| rename_noreplace(&self.work, &tmp, &parent, name, path));
        if result.is_err() {
            let _ = nix::unistd::unlinkat(&self.work, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// lstat of `path` in the upper.
    pub fn stat(&self, path: &[u8]) -> Result<FileStat, UpperError> {
        if path.is_empty() {
            return nix::sys::stat::fstat(&self.upper).map_err(sys("stat", path));
        }
        let (parent, name) = self.parent(path)?;
        nix::sys::stat::fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(sys("stat", path))
    }
}

/// Where strata records the lower path a copied-up node came from, so that it keeps
/// its inode number across mounts. Under `user.overlay.`, which kernel overlayfs
/// (userxattr) keeps to itself and never shows, and never reads for this name.
pub const ORIGIN_XATTR: &str = "user.overlay.strata.origin";
/// Symlinks, fifos, sockets and devices take no user xattrs: their origins are kept
/// on their directory, as `NAME\0ORIGIN\0` pairs.
pub const SYMLINK_ORIGINS_XATTR: &str = "user.overlay.strata.symlink-origins";
/// The OCI tar form of an opaque marker, also read in uppers.
pub const OPAQUE_WH_FILE: &[u8] = b".wh..wh..opq";

/// Whether an xattr belongs to the overlay's bookkeeping, never shown to the container.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.overlay.")
        || name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
        || name == OVERRIDE_XATTR.as_bytes()
        || name == PRIVILEGED_OVERRIDE_XATTR.as_bytes()
}

/// One name of an upper directory, with what the union needs to know of it.
// Whiteouts are few beside nodes in any directory, so boxing the node's stat would
// cost an allocation per entry to save little.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum UpperEntry {
    /// A whiteout (char 0/0 or `.wh.NAME`) hiding the lower `name`.
    Whiteout { name: Vec<u8> },
    Node {
        name: Vec<u8>,
        stat: FileStat,
        /// The lower path it was copied up from ([`ORIGIN_XATTR`]).
        origin: Option<Vec<u8>>,
        /// For a directory: marked opaque.
        opaque: bool,
        over: Option<OverrideStat>,
        /// Its user-visible xattrs, when they were asked for.
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// A name in a directory and the lower path it was copied up from.
pub type NamedOrigin = (Vec<u8>, Vec<u8>);

/// What a new upper node is.
pub enum NewNode<'a> {
    File {
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: &'a [u8],
    },
    /// mknod: `mode` carries the file type.
    Special {
        mode: u32,
        rdev: u64,
    },
}

/// A lower file's copy, complete in work/, not yet under its name.
pub struct PreparedCopy {
    temp: TempFile,
    over: Option<OverrideStat>,
}

impl PreparedCopy {
    /// The override recorded on the copy, if the owner could not be stored.
    pub fn over(&self) -> Option<OverrideStat> {
        self.over
    }

    /// The copy itself, open read-write.
    pub fn file(&self) -> &File {
        match &self.temp {
            TempFile::Anonymous(f) | TempFile::Named(_, f) => f,
        }
    }
}

/// An xattr of an open file of the upper.
pub fn file_xattr(file: &File, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    fget_xattr(file.as_fd(), name)
}

/// Sets an xattr of an open file of the upper (setxattr(2) `flags`).
pub fn file_set_xattr(file: &File, name: &[u8], value: &[u8], flags: i32) -> Result<(), Errno> {
    fset_xattr_flags(file.as_fd(), name, value, flags)
}

/// Removes an xattr of an open file of the upper.
pub fn file_remove_xattr(file: &File, name: &[u8]) -> Result<(), Errno> {
    fremove_xattr(file.as_fd(), name)
}

/// The user-visible xattr names of an open file of the upper.
pub fn file_list_xattrs(file: &File) -> Result<Vec<Vec<u8>>, Errno> {
    let fd = file.as_raw_fd();
    let raw = read_xattr(|buf: &mut [u8]| {
        // SAFETY: buf is writable for its length; the descriptor is open.
        unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) }
    })?
    .unwrap_or_default();
    Ok(raw
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && !is_private_xattr(n))
        .map(<[u8]>::to_vec)
        .collect())
}

impl Upper {
    /// Gives the node `fd` holds (any descriptor, O_PATH too) the owner `uid:gid`,
    /// or, where the host cannot store it (an id our namespace does not map, no
    /// CAP_CHOWN) or the upper keeps every owner in the xattr, records it in the
    /// override xattr. Returns the override it recorded.
    fn own_fd(
        &self,
        fd: BorrowedFd,
        uid: u32,
        gid: u32,
        mode: u32,
        path: &[u8],
    ) -> Result<Option<OverrideStat>, UpperError> {
        if self.over_xattr.always() && self.takes_override(fd, path)? {
            return self.record_override(fd, uid, gid, mode, path).map(Some);
        }
        if self.is_own(uid, gid) {
            return Ok(None);
        }
        let result = nix::unistd::fchownat(
            fd,
            "",
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            AtFlags::AT_EMPTY_PATH,
        );
        match result {
            Ok(()) => Ok(None),
            Err(Errno::EPERM) | Err(Errno::EINVAL) => {
                self.record_override(fd, uid, gid, mode, path).map(Some)
            }
            Err(e) => Err(sys("chown", path)(e)),
        }
    }

    fn record_override(
        &self,
        fd: BorrowedFd,
        uid: u32,
        gid: u32,
        mode: u32,
        path: &[u8],
    ) -> Result<OverrideStat, UpperError> {
        let over = OverrideStat {
            uid,
            gid,
            mode: mode & 0o7777,
            kind: None,
        };
        let name = self.over_xattr.name().as_bytes();
        path_set_xattr(fd, name, over.encode().as_bytes(), 0).map_err(sys("setxattr", path))?;
        Ok(over)
    }

    /// A regular file or directory: what fuse-overlayfs keeps overrides for (the
    /// others take no `user.*` xattrs).
    fn takes_override(&self, fd: BorrowedFd, path: &[u8]) -> Result<bool, UpperError> {
        let st = nix::sys::stat::fstat(fd).map_err(sys("stat", path))?;
        Ok(!takes_no_xattrs(&st))
    }
}

impl Upper {
    /// The entries of the upper directory `path`, and whether it is opaque.
    pub fn read_dir(&self, path: &[u8]) -> Result<(Vec<UpperEntry>, bool), UpperError> {
        read_overlay_dir(&self.open_dir(path)?, path, false, self.over_xattr.name())
    }

    /// The origins recorded for the symlinks of the directory `path`.
    pub fn symlink_origins(&self, path: &[u8]) -> Result<Vec<NamedOrigin>, UpperError> {
        dir_symlink_origins(&self.open_dir(path)?, path)
    }

    /// Records (or with None, forgets) the origin of the symlink `name` in the
    /// directory `path`.
    pub fn set_symlink_origin(
        &self,
        path: &[u8],
        name: &[u8],
        origin: Option<&[u8]>,
    ) -> Result<(), UpperError> {
        let mut all = self.symlink_origins(path)?;
        let before = all.len();
        all.retain(|(n, _)| n != name);
        if origin.is_none() && all.len() == before {
            return Ok(());
        }
        if let Some(o) = origin {
            all.push((name.to_vec(), o.to_vec()));
        }
        let dir = self.open_dir(path)?;
        if all.is_empty() {
            return match fremove_xattr(dir.as_fd(), SYMLINK_ORIGINS_XATTR.as_bytes()) {
                Ok(()) | Err(Errno::ENODATA) => Ok(()),
                Err(e) => Err(sys("removexattr", path)(e)),
            };
        }
        let mut value = Vec::new();
        for (n, o) in &all {
            value.extend_from_slice(n);
            value.push(0);
            value.extend_from_slice(o);
            value.push(0);
        }
        fset_xattr(dir.as_fd(), SYMLINK_ORIGINS_XATTR.as_bytes(), &value)
            .map_err(sys("setxattr", path))
    }

    /// Creates `path`. Where a whiteout holds the name (`over_whiteout`) the node is
    /// made in work/ and renamed over it, so the name never shows the lower again;
    /// a directory made there is opaque. Returns its stat, a regular file open, and
    /// the override recorded for an owner the host cannot store.
    pub fn create(
        &self,
        path: &[u8],
        node: NewNode,
        owner: (u32, u32),
        over_whiteout: bool,
    ) -> Result<(FileStat, Option<File>, Option<OverrideStat>), UpperError> {
        let (parent, name) = self.parent(path)?;
        // A setgid directory gives its group to what is made in it.
        let parent_stat = nix::sys::stat::fstat(&parent).map_err(sys("stat", path))?;
        let owner = if parent_stat.st_mode & libc::S_ISGID != 0 {
            (owner.0, parent_stat.st_gid)
        } else {
            owner
        };
        // Only a node that replaces a whiteout is built in work/ first.
        let tmp = if over_whiteout {
            self.temp_name()
        } else {
            String::new()
        };
        let (at, at_name): (&OwnedFd, &[u8]) = if over_whiteout {
            (&self.work, tmp.as_bytes())
        } else {
            (&parent, name)
        };
        let (file, mode) = make_node(at, at_name, &node, path)?;
        let result = self.finish_new(at, at_name, file, mode, owner, path, &node, over_whiteout);
        let (file, over) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = remove_tree_at(at, at_name);
                return Err(e);
            }
        };
        if over_whiteout {
            let is_dir = matches!(node, NewNode::Dir { .. });
            if let Err(e) = self.replace_whiteout(&tmp, &parent, name, path, is_dir) {
                let _ = remove_tree_at(&self.work, tmp.as_bytes());
                return Err(e);
            }
        }
        let stat = nix::sys::stat::fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(sys("stat", path))?;
        Ok((stat, file, over))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_new(
        &self,
        at: &OwnedFd,
        at_name: &[u8],
        file: Option<File>,
        mode: u32,
        (uid, gid): (u32, u32),
        path: &[u8],
        node: &NewNode,
        opaque: bool,
    ) -> Result<(Option<File>, Option<OverrideStat>), UpperError> {
        if matches!(node, NewNode::Symlink { .. }) {
            if !self.is_own(uid, gid) {
                let _ = nix::unistd::fchownat(
                    at,
                    at_name,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                );
            }
            return Ok((file, None));
        }
        let held;
        let fd = match &file {
            Some(f) => f.as_fd(),
            None => {
                held = nix::fcntl::openat(
                    at,
                    at_name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                    Mode::empty(),
                )
                .or_else(|_| {
                    nix::fcntl::openat(
                        at,
                        at_name,
                        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                })
                .map_err(sys("open", path))?;
                held.as_fd()
            }
        };
        let over = self.own_fd(fd, uid, gid, mode, path)?;
        if opaque && matches!(node, NewNode::Dir { .. }) {
            fset_xattr(fd, OPAQUE_XATTR.as_bytes(), b"y").map_err(sys("setxattr", path))?;
        }
        Ok((file, over))
    }

    /// Puts work/`tmp` where the whiteout `parent`/`name` is. A directory cannot be
    /// renamed over a device: it is exchanged with it, and the whiteout deleted.
    fn replace_whiteout(
        &self,
        tmp: &str,
        parent: &OwnedFd,
        name: &[u8],
        path: &[u8],
        is_dir: bool,
    ) -> Result<(), UpperError> {
        if !is_dir {
            return nix::fcntl::renameat(&self.work, tmp, parent, name)
                .map_err(sys("rename", path));
        }
        match nix::fcntl::renameat2(&self.work, tmp, parent, name, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => {
                let _ = nix::unistd::unlinkat(&self.work, tmp, UnlinkatFlags::NoRemoveDir);
                Ok(())
            }
            // The whiteout was a .wh. file, or is gone: the name itself is free.
            Err(Errno::ENOENT) => {
                self.remove_wh_file(parent, name);
                rename_noreplace(&self.work, tmp, parent, name, path)
            }
            Err(e) => Err(sys("rename", path)(e)),
        }
    }

    fn remove_wh_file(&self, parent: &OwnedFd, name: &[u8]) {
        let mut wh = WHITEOUT_PREFIX.to_vec();
        wh.extend_from_slice(name);
        let _ = nix::unistd::unlinkat(parent, wh.as_slice(), UnlinkatFlags::NoRemoveDir);
    }

    /// Makes `to` another name of the upper node `from`, replacing a whiteout there.
    pub fn link(&self, from: &[u8], to: &[u8], over_whiteout: bool) -> Result<(), UpperError> {
        let (from_parent, from_name) = self.parent(from)?;
        let (to_parent, to_name) = self.parent(to)?;
        if !over_whiteout {
            return nix::unistd::linkat(
                &from_parent,
                from_name,
                &to_parent,
                to_name,
                AtFlags::empty(),
            )
            .map_err(sys("link", to));
        }
        let tmp = self.temp_name();
        nix::unistd::linkat(
            &from_parent,
            from_name,
            &self.work,
            tmp.as_str(),
            AtFlags::empty(),
        )
        .map_err(sys("link", to))?;
        nix::fcntl::renameat(&self.work, tmp.as_str(), &to_parent, to_name).map_err(|e| {
            let _ = nix::unistd::unlinkat(&self.work, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            sys("rename", to)(e)
        })
    }

    /// Removes the upper node `path` (a directory with everything in it: only
    /// whiteouts, once the union found it empty). With `whiteout`, a whiteout takes
    /// its place in the same step, so the lower name never shows through.
    pub fn remove(&self, path: &[u8], whiteout: bool) -> Result<(), UpperError> {
        let (parent, name) = self.parent(path)?;
        let st = nix::sys::stat::fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(sys("stat", path))?;
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if !is_dir {
            if whiteout {
                self.create_whiteout(path)?;
            } else {
                nix::unistd::unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(sys("unlink", path))?;
            }
            return Ok(());
        }
        // The directory goes to work/ in one rename, then is emptied there.
        self.forget_dirs(path);
        let tmp = self.temp_name();
        nix::fcntl::renameat(&parent, name, &self.work, tmp.as_str())
            .map_err(sys("rename", path))?;
        if whiteout {
            self.create_whiteout(path)?;
        }
        remove_tree_at(&self.work, tmp.as_bytes()).map_err(sys("remove", path))
    }

    /// A whiteout at `path`, where nothing is in the upper.
    pub fn whiteout(&self, path: &[u8]) -> Result<(), UpperError> {
        self.create_whiteout(path).map(drop)
    }

    /// renameat2 within the upper.
    pub fn rename(&self, from: &[u8], to: &[u8], flags: RenameFlags) -> Result<(), UpperError> {
        // Either may be a directory (or, exchanged or replaced, hold one).
        self.forget_dirs(from);
        self.forget_dirs(to);
        let (from_parent, from_name) = self.parent(from)?;
        let (to_parent, to_name) = self.parent(to)?;
        nix::fcntl::renameat2(&from_parent, from_name, &to_parent, to_name, flags)
            .map_err(sys("rename", to))
    }

    /// Opens the upper regular file `path`, read-write where we may, else read-only.
    pub fn open_file(&self, path: &[u8]) -> Result<File, UpperError> {
        let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        match open_beneath(self.upper.as_fd(), path, flags | OFlag::O_RDWR) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::EACCES) | Err(Errno::EROFS) | Err(Errno::ETXTBSY) => {
                open_beneath(self.upper.as_fd(), path, flags | OFlag::O_RDONLY)
                    .map(File::from)
                    .map_err(sys("open", path))
            }
            Err(e) => Err(sys("open", path)(e)),
        }
    }

    /// An O_PATH descriptor of `path` (the last component not followed).
    pub fn node(&self, path: &[u8]) -> Result<OwnedFd, UpperError> {
        self.open_node(path)
    }

    pub fn chmod(&self, path: &[u8], mode: u32) -> Result<(), UpperError> {
        let (parent, name) = self.parent_or_root(path)?;
        nix::sys::stat::fchmodat(
            &parent,
            name,
            Mode::from_bits_truncate(mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(sys("chmod", path))
    }

    /// chown; where the host cannot store the owner, records it in the override
    /// xattr instead. Returns the override now in force.
    pub fn chown(
        &self,
        path: &[u8],
        uid: u32,
        gid: u32,
        mode: u32,
        symlink: bool,
    ) -> Result<Option<OverrideStat>, UpperError> {
        if self.over_xattr.always() && !symlink {
            let node = self.open_node(path)?;
            if self.takes_override(node.as_fd(), path)? {
                return self
                    .record_override(node.as_fd(), uid, gid, mode, path)
                    .map(Some);
            }
        }
        let (parent, name) = self.parent_or_root(path)?;
        let result = nix::unistd::fchownat(
            &parent,
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        match result {
            Ok(()) => {
                if !symlink {
                    let node = self.open_node(path)?;
                    match path_remove_xattr(&node, self.over_xattr.name().as_bytes()) {
                        // Fifos, sockets and devices take no user.* xattrs at all.
                        Ok(()) | Err(Errno::ENODATA) | Err(Errno::EPERM) | Err(Errno::ENOTSUP) => {}
                        Err(e) => return Err(sys("removexattr", path)(e)),
                    }
                }
                Ok(None)
            }
            Err(Errno::EPERM) | Err(Errno::EINVAL) if !symlink => {
                let over = OverrideStat {
                    uid,
                    gid,
                    mode: mode & 0o7777,
                    kind: None,
                };
                self.set_override(path, &over)?;
                Ok(Some(over))
            }
            Err(e) => Err(sys("chown", path)(e)),
        }
    }

    /// utimensat, the last component not followed. None leaves a time as it is.
    pub fn set_times(
        &self,
        path: &[u8],
        atime: Option<TimeSpec>,
        mtime: Option<TimeSpec>,
    ) -> Result<(), UpperError> {
        let omit = TimeSpec::UTIME_OMIT;
        let (parent, name) = self.parent_or_root(path)?;
        nix::sys::stat::utimensat(
            &parent,
            name,
            &atime.unwrap_or(omit),
            &mtime.unwrap_or(omit),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys("utimens", path))
    }

    /// The user-visible xattrs of `path` (the private ones left out).
    pub fn list_xattrs(&self, path: &[u8]) -> Result<Vec<Vec<u8>>, UpperError> {
        let node = self.open_node(path)?;
        match path_list_xattrs(&node) {
            Ok(names) => Ok(names.into_iter().filter(|n| !is_private_xattr(n)).collect()),
            Err(e) => Err(sys("listxattr", path)(e)),
        }
    }

    pub fn get_xattr(&self, path: &[u8], name: &[u8]) -> Result<Option<Vec<u8>>, UpperError> {
        let node = self.open_node(path)?;
        path_get_xattr(&node, name).map_err(sys("getxattr", path))
    }

    pub fn set_xattr(
        &self,
        path: &[u8],
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), UpperError> {
        let node = self.open_node(path)?;
        path_set_xattr(node.as_fd(), name, value, flags).map_err(sys("setxattr", path))
    }

    pub fn remove_xattr(&self, path: &[u8], name: &[u8]) -> Result<(), UpperError> {
        let node = self.open_node(path)?;
        path_remove_xattr(&node, name).map_err(sys("removexattr", path))
    }

    pub fn statfs(&self) -> nix::Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::fstatvfs(&self.upper)
    }

    /// The parent of `path` and its name, or the upper itself and "." for the root.
    fn parent_or_root<'p>(&self, path: &'p [u8]) -> Result<(Arc<OwnedFd>, &'p [u8]), UpperError> {
        if path.is_empty() {
            return Ok((self.dir_fd(b"")?, b"."));
        }
        self.parent(path)
    }

    /// Copies `src` (all of it, or none with `src` None: a copy-up for O_TRUNC) into a
    /// new file in work/ with `meta`; nothing shows in the upper yet.
    pub fn prepare_copy(
        &self,
        src: Option<&File>,
        path: &[u8],
        meta: &NodeMeta,
    ) -> Result<PreparedCopy, UpperError> {
        let temp = self.create_temp_file(path)?;
        let result = (|| {
            if let Some(src) = src {
                self.copy_data(src.as_fd(), temp.fd(), path)?;
            }
            let over = self.apply_meta(temp.fd(), path, meta)?;
            if meta.fsync {
                nix::unistd::fsync(temp.fd()).map_err(sys("fsync", path))?;
            }
            Ok(over)
        })();
        match result {
            Ok(over) => Ok(PreparedCopy { temp, over }),
            Err(e) => {
                if let TempFile::Named(tmp, _) = &temp {
                    let _ =
                        nix::unistd::unlinkat(&self.work, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
                }
                Err(e)
            }
        }
    }

    /// Puts a prepared copy under `path` (which must be free) and gives back its file.
    pub fn publish_copy(&self, copy: PreparedCopy, path: &[u8]) -> Result<File, UpperError> {
        if let Err(e) = self.publish_copy_ref(&copy, path) {
            self.discard_copy(copy);
            return Err(e);
        }
        Ok(match copy.temp {
            TempFile::Anonymous(f) | TempFile::Named(_, f) => f,
        })
    }

    fn publish_copy_ref(&self, copy: &PreparedCopy, path: &[u8]) -> Result<(), UpperError> {
        let (parent, name) = self.parent(path)?;
        match &copy.temp {
            TempFile::Anonymous(file) => link_tmpfile(file.as_fd(), &parent, name, path),
            TempFile::Named(tmp, _) => rename_noreplace(&self.work, tmp, &parent, name, path),
        }
    }

    /// Copies all of `src` into the empty `dst`: a reflink if the filesystems share
    /// extents, else the data. A file with as many blocks as its size needs has no
    /// holes: one copy_file_range, without the SEEK_DATA/SEEK_HOLE walk and the
    /// truncate that keep a sparse file's holes (most files are small and whole).
    fn copy_data(&self, src: BorrowedFd, dst: BorrowedFd, path: &[u8]) -> Result<(), UpperError> {
        let st = nix::sys::stat::fstat(src).map_err(sys("stat lower of", path))?;
        if self.may_reflink(st.st_dev) {
            // SAFETY: FICLONE takes the source descriptor as its argument and reads
            // nothing else from our memory; both descriptors are open for the call.
            let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
            if cloned == 0 {
                return Ok(());
            }
            // Any FICLONE error just means no reflink here; a real problem with the
            // descriptors shows again below.
            if reflink_unsupported(Errno::last()) {
                self.no_reflink_from
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(st.st_dev);
            }
        }
        let size = st.st_size;
        if st.st_blocks.saturating_mul(512) >= size {
            return copy_range(src, dst, 0, size, path);
        }
        copy_sparse(src, dst, size, path)
    }

    /// Whether FICLONE is worth a try from a lower on the device `dev`.
    fn may_reflink(&self, dev: u64) -> bool {
        !self
            .no_reflink_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&dev)
    }

    /// Throws away a prepared copy that will not be published.
    pub fn discard_copy(&self, copy: PreparedCopy) {
        if let TempFile::Named(tmp, _) = &copy.temp {
            let _ = nix::unistd::unlinkat(&self.work, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Makes the node itself; returns a regular file open, and the mode it was given.
fn make_node(
    at: &OwnedFd,
    name: &[u8],
    node: &NewNode,
    path: &[u8],
) -> Result<(Option<File>, u32), UpperError> {
    match *node {
        NewNode::File { mode } => {
            let flags = OFlag::O_RDWR
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::openat(at, name, flags, Mode::from_bits_truncate(mode & 0o7777))
                .map_err(sys("create", path))?;
            Ok((Some(File::from(fd)), mode))
        }
        NewNode::Dir { mode } => {
            nix::sys::stat::mkdirat(at, name, Mode::from_bits_truncate(mode & 0o7777))
                .map_err(sys("mkdir", path))?;
            Ok((None, mode))
        }
        NewNode::Symlink { target } => {
            nix::unistd::symlinkat(target, at, name).map_err(sys("symlink", path))?;
            Ok((None, 0o777))
        }
        NewNode::Special { mode, rdev } => {
            let kind = SFlag::from_bits_truncate(mode) & SFlag::S_IFMT;
            nix::sys::stat::mknodat(
                at,
                name,
                kind,
                Mode::from_bits_truncate(mode & 0o7777),
                rdev,
            )
            .map_err(sys("mknod", path))?;
            Ok((None, mode))
        }
    }
}

/// Whether the directory `dir` carries any of the opaque marks.
fn dir_is_opaque(dir: &OwnedFd, path: &[u8]) -> Result<bool, UpperError> {
    for name in OPAQUE_XATTRS_READ {
        match fget_xattr(dir.as_fd(), name.as_bytes()) {
            Ok(Some(v)) if v == b"y" => return Ok(true),
            Ok(_) => {}
            // Reading trusted.* unprivileged gives nothing, not an error, but some
            // filesystems say EPERM or ENOTSUP: then that name is simply absent.
            Err(Errno::EPERM) | Err(Errno::ENOTSUP) => {}
            Err(e) => return Err(sys("getxattr", path)(e)),
        }
    }
    Ok(false)
}

/// The origins recorded on `dir` for its symlinks, fifos, sockets and devices.
fn dir_symlink_origins(dir: &OwnedFd, path: &[u8]) -> Result<Vec<NamedOrigin>, UpperError> {
    let raw = match fget_xattr(dir.as_fd(), SYMLINK_ORIGINS_XATTR.as_bytes()) {
        Ok(v) => v.unwrap_or_default(),
        Err(Errno::ENOTSUP) => Vec::new(),
        Err(e) => return Err(sys("getxattr", path)(e)),
    };
    let fields: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    Ok(fields
        .chunks_exact(2)
        .filter(|pair| !pair[0].is_empty())
        .map(|pair| (pair[0].to_vec(), pair[1].to_vec()))
        .collect())
}

/// The entries of a directory in overlay format (an upper, or a lower directory of
/// strata-overlayfs), and whether it is opaque: whiteouts as char 0/0 devices or
/// `.wh.NAME` files, `.wh..wh..opq`, the opaque xattrs, origins and overrides. With
/// `with_xattrs`, each node's user-visible xattrs too.
pub fn read_overlay_dir(
    dir: &OwnedFd,
    path: &[u8],
    with_xattrs: bool,
    override_xattr: &str,
) -> Result<(Vec<UpperEntry>, bool), UpperError> {
    let mut opaque = dir_is_opaque(dir, path)?;
    let symlink_origins = dir_symlink_origins(dir, path)?;
    let names = crate::store::fsutil::dir_names(dir).map_err(sys("read", path))?;
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        if name == OPAQUE_WH_FILE {
            opaque = true;
            continue;
        }
        if let Some(hidden) = whiteout_file_target(&name) {
            entries.push(UpperEntry::Whiteout {
                name: hidden.to_vec(),
            });
            continue;
        }
        let stat = match nix::sys::stat::fstatat(dir, name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
        {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(sys("stat", &name)(e)),
        };
        if is_whiteout(&stat) {
            entries.push(UpperEntry::Whiteout { name });
            continue;
        }
        let marks = private_marks(dir, &name, &stat, with_xattrs, override_xattr)?;
        let mut origin = marks.origin;
        if origin.is_none() && takes_no_xattrs(&stat) {
            origin = symlink_origins
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, o)| o.clone());
        }
        entries.push(UpperEntry::Node {
            name,
            stat,
            origin,
            opaque: marks.opaque,
            over: marks.over,
            xattrs: marks.xattrs,
        });
    }
    Ok((entries, opaque))
}

/// What an overlay-format node's xattrs say.
#[derive(Default)]
struct Marks {
    origin: Option<Vec<u8>>,
    opaque: bool,
    over: Option<OverrideStat>,
    /// The user-visible ones, when asked for.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The marks of `name` in `dir`: one listxattr, then only the values that are there.
fn private_marks(
    dir: &OwnedFd,
    name: &[u8],
    stat: &FileStat,
    with_xattrs: bool,
    override_xattr: &str,
) -> Result<Marks, UpperError> {
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        return Ok(Marks::default());
    }
    let node = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open", name))?;
    let names = path_list_xattrs(&node).map_err(sys("listxattr", name))?;
    let get = |x: &[u8]| path_get_xattr(&node, x).map_err(sys("getxattr", name));
    let has = |n: &str| names.iter().any(|x| x == n.as_bytes());
    let mut marks = Marks::default();
    if has(ORIGIN_XATTR) {
        marks.origin = get(ORIGIN_XATTR.as_bytes())?;
    }
    if kind == SFlag::S_IFDIR {
        marks.opaque = OPAQUE_XATTRS_READ
            .iter()
            .any(|x| has(x) && get(x.as_bytes()).ok().flatten().as_deref() == Some(b"y"));
    }
    if has(override_xattr) {
        marks.over = match get(override_xattr.as_bytes()) {
            Ok(Some(v)) if v.len() <= OVERRIDE_MAX => OverrideStat::decode(&v).ok(),
            _ => None,
        };
    }
    if with_xattrs {
        for x in names.iter().filter(|x| !is_private_xattr(x)) {
            match path_get_xattr(&node, x) {
                Ok(Some(v)) => marks.xattrs.push((x.clone(), v)),
                // Gone meanwhile, or not readable unprivileged (trusted.*, security.*
                // on some filesystems): not part of what the union shows.
                Ok(None) | Err(Errno::EPERM) | Err(Errno::EACCES) | Err(Errno::ENOTSUP) => {}
                Err(e) => return Err(sys("getxattr", name)(e)),
            }
        }
    }
    Ok(marks)
}

fn path_list_xattrs(fd: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let path = proc_fd_path(fd.as_fd());
    let raw = read_xattr(|buf: &mut [u8]| {
        // SAFETY: path is NUL-terminated; buf is writable for its length.
        unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })?
    .unwrap_or_default();
    Ok(raw
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Symlinks, fifos, sockets and devices: Linux refuses user.* xattrs on them.
fn takes_no_xattrs(st: &FileStat) -> bool {
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    kind != SFlag::S_IFREG && kind != SFlag::S_IFDIR
}

fn fremove_xattr(fd: BorrowedFd, name: &[u8]) -> Result<(), Errno> {
    let name = c_name(name)?;
    // SAFETY: name is NUL-terminated; the descriptor is open for the call.
    let r = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
    Errno::result(r).map(drop)
}

fn path_remove_xattr(fd: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let name = c_name(name)?;
    let path = proc_fd_path(fd.as_fd());
    // SAFETY: path and name are NUL-terminated.
    let r = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    Errno::result(r).map(drop)
}

enum TempFile {
    /// An O_TMPFILE: no name until linked, gone by itself if we crash.
    Anonymous(File),
    /// A named file in work/, for filesystems without O_TMPFILE.
    Named(String, File),
}

impl TempFile {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            TempFile::Anonymous(f) | TempFile::Named(_, f) => f.as_fd(),
        }
    }
}

fn rename_noreplace(
    work: &OwnedFd,
    tmp: &str,
    parent: &OwnedFd,
    name: &[u8],
    path: &[u8],
) -> Result<(), UpperError> {
    nix::fcntl::renameat2(work, tmp, parent, name, RenameFlags::RENAME_NOREPLACE)
        .map_err(sys("rename into place", path))
}

/// Gives an O_TMPFILE its name. linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH
/// before Linux 6.10; the /proc/self/fd link works for the file's opener everywhere.
fn link_tmpfile(
    fd: BorrowedFd,
    parent: &OwnedFd,
    name: &[u8],
    path: &[u8],
) -> Result<(), UpperError> {
    match nix::unistd::linkat(fd, "", parent, name, AtFlags::AT_EMPTY_PATH) {
        Ok(()) => return Ok(()),
        Err(Errno::ENOENT) | Err(Errno::EPERM) => {}
        Err(e) => return Err(sys("link into place", path)(e)),
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        proc_path.as_str(),
        parent,
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(sys("link into place", path))
}

/// What FICLONE's failure says: this pair of filesystems shares no extents (so
/// no file from that lower will reflink), or something about this one call.
fn reflink_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS
    )
}

/// Copies `src` from `offset` to its end into `dst`, data extent by data extent, so
/// that holes stay holes, then sets the size (a trailing hole has no data to copy).
fn copy_sparse(src: BorrowedFd, dst: BorrowedFd, size: i64, path: &[u8]) -> Result<(), UpperError> {
    let mut offset = 0i64;
    while offset < size {
        let data = match nix::unistd::lseek(src, offset, Whence::SeekData) {
            Ok(d) => d,
            // No data past `offset`: the rest is one hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(sys("seek lower of", path)(e)),
        };
        let hole = nix::unistd::lseek(src, data, Whence::SeekHole)
            .map_err(sys("seek lower of", path))?
            .min(size);
        copy_range(src, dst, data, hole - data, path)?;
        offset = hole;
    }
    nix::unistd::ftruncate(dst, size).map_err(sys("truncate", path))
}

/// One copy_file_range(2) of up to `len` bytes from `src` at `off_in` to `dst` at
/// `off_out`: how many it copied.
pub fn copy_file_range_once(
    src: BorrowedFd,
    off_in: i64,
    dst: BorrowedFd,
    off_out: i64,
    len: usize,
) -> Result<usize, Errno> {
    let (mut off_in, mut off_out) = (off_in, off_out);
    // SAFETY: the offsets are valid i64s we own for the call; the kernel reads and
    // updates them and touches no other memory of ours.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    };
    Errno::result(n).map(|n| n as usize)
}

/// Copies `len` bytes at `offset` of `src` to the same offset of `dst`.
fn copy_range(
    src: BorrowedFd,
    dst: BorrowedFd,
    offset: i64,
    len: i64,
    path: &[u8],
) -> Result<(), UpperError> {
    let mut done = 0i64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(COPY_CHUNK);
        let n = copy_file_range_once(src, offset + done, dst, offset + done, want);
        let n = match n {
            Ok(0) => {
                return Err(UpperError::SourceChanged(
                    String::from_utf8_lossy(path).into_owned(),
                ));
            }
            Ok(n) => n as i64,
            Err(Errno::EINTR) => continue,
            // Across filesystems on old kernels, or special files: copy by hand.
            Err(Errno::EXDEV)
            | Err(Errno::EINVAL)
            | Err(Errno::ENOSYS)
            | Err(Errno::EOPNOTSUPP) => {
                return copy_range_by_hand(src, dst, offset + done, len - done, path);
            }
            Err(e) => return Err(sys("copy", path)(e)),
        };
        done += n;
    }
    Ok(())
}

fn copy_range_by_hand(
    src: BorrowedFd,
    dst: BorrowedFd,
    offset: i64,
    len: i64,
    path: &[u8],
) -> Result<(), UpperError> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0i64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(COPY_CHUNK);
        let n = match nix::sys::uio::pread(src, &mut buf[..want], offset + done) {
            Ok(0) => {
                return Err(UpperError::SourceChanged(
                    String::from_utf8_lossy(path).into_owned(),
                ));
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(sys("read lower of", path)(e)),
        };
        let mut written = 0;
        while written < n {
            match nix::sys::uio::pwrite(dst, &buf[written..n], offset + done + written as i64) {
                Ok(w) => written += w,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(sys("write", path)(e)),
            }
        }
        done += n as i64;
    }
    Ok(())
}

fn c_name(name: &[u8]) -> Result<std::ffi::CString, Errno> {
    std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)
}

fn fset_xattr(fd: BorrowedFd, name: &[u8], value: &[u8]) -> Result<(), Errno> {
    fset_xattr_flags(fd, name, value, 0)
}

/// fsetxattr(2) with its `flags` (XATTR_CREATE, XATTR_REPLACE).
fn fset_xattr_flags(fd: BorrowedFd, name: &[u8], value: &[u8], flags: i32) -> Result<(), Errno> {
    let name = c_name(name)?;
    // SAFETY: name is NUL-terminated, value is valid for value.len() bytes, and the
    // kernel only reads them during the call.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    Errno::result(r).map(drop)
}

fn fget_xattr(fd: BorrowedFd, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    let name = c_name(name)?;
    read_xattr(|buf: &mut [u8]| {
        // SAFETY: name is NUL-terminated and buf is writable for buf.len() bytes.
        unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// xattrs of a node held by an O_PATH descriptor: f*xattr refuse those, so the call
/// goes through the descriptor's /proc link, which names exactly that inode (it is our
/// own descriptor, not a path anything in the upper controls).
fn proc_fd_path(fd: BorrowedFd) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("a formatted number has no NUL")
}

fn path_set_xattr(fd: BorrowedFd, name: &[u8], value: &[u8], flags: i32) -> Result<(), Errno> {
    let name = c_name(name)?;
    let path = proc_fd_path(fd.as_fd());
    // SAFETY: path and name are NUL-terminated, value is valid for value.len() bytes.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    Errno::result(r).map(drop)
}

fn path_get_xattr(fd: &OwnedFd, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    let name = c_name(name)?;
    let path = proc_fd_path(fd.as_fd());
    read_xattr(|buf: &mut [u8]| {
        // SAFETY: path and name are NUL-terminated; buf is writable for its length.
        unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// Reads an xattr value with `get`, growing the buffer while the value does not fit.
fn read_xattr(mut get: impl FnMut(&mut [u8]) -> isize) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 256];
    loop {
        match Errno::result(get(&mut buf)) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
            Err(Errno::ENODATA) => return Ok(None),
            Err(Errno::ERANGE) if buf.len() < 1 << 16 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    fn setup() -> (tempfile::TempDir, Upper) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("upper")).unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let upper = Upper::open(&dir.path().join("upper"), &dir.path().join("work")).unwrap();
        (dir, upper)
    }

    fn own_meta(mode: u32) -> NodeMeta {
        NodeMeta {
            mode,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mtime: (1_500_000_000, 123_456_789),
            ..NodeMeta::default()
        }
    }

    fn work_entries(dir: &tempfile::TempDir) -> Vec<String> {
        std::fs::read_dir(dir.path().join("work"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn one_upper_serves_one_mount_at_a_time() {
        let (dir, first) = setup();
        let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
        match Upper::open(&upper, &work) {
            Err(UpperError::InUse { .. }) => {}
            other => panic!("a second open of a held upper: {:?}", other.err()),
        }
        drop(first);
        Upper::open(&upper, &work).expect("the upper is free again once the first is closed");
    }

    #[test]
    fn whiteout_is_char_0_0_and_reads_back() {
        let (dir, upper) = setup();
        std::fs::write(dir.path().join("upper/gone"), b"x").unwrap();
        let made = upper.create_whiteout(b"gone").unwrap();
        let st = upper.stat(b"gone").unwrap();
        match made {
            Whiteout::CharDevice => {
                assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
                assert_eq!(st.st_rdev, 0);
                assert!(is_whiteout(&st));
            }
            // Only where mknod is refused: the old name stays, the marker is beside it.
            Whiteout::WhFile => assert!(dir.path().join("upper/.wh.gone").exists()),
        }
        assert!(work_entries(&dir).is_empty());
        assert_eq!(whiteout_file_target(b".wh.gone"), Some(&b"gone"[..]));
        assert_eq!(whiteout_file_target(b".wh."), None);
    }

    #[test]
    fn a_regular_file_is_not_a_whiteout() {
        let (dir, upper) = setup();
        std::fs::write(dir.path().join("upper/f"), b"").unwrap();
        assert!(!is_whiteout(&upper.stat(b"f").unwrap()));
    }

    #[test]
    fn opaque_round_trip() {
        let (dir, upper) = setup();
        std::fs::create_dir_all(dir.path().join("upper/a/b")).unwrap();
        assert!(!upper.is_opaque(b"a/b").unwrap());
        upper.set_opaque(b"a/b").unwrap();
        assert!(upper.is_opaque(b"a/b").unwrap());
        let raw = fget_xattr(
            upper.open_dir(b"a/b").unwrap().as_fd(),
            OPAQUE_XATTR.as_bytes(),
        );
        assert_eq!(raw.unwrap().as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn fuse_overlayfs_opaque_mark_is_read() {
        let (dir, upper) = setup();
        std::fs::create_dir(dir.path().join("upper/d")).unwrap();
        let fd = upper.open_dir(b"d").unwrap();
        fset_xattr(fd.as_fd(), b"user.fuseoverlayfs.opaque", b"y").unwrap();
        assert!(upper.is_opaque(b"d").unwrap());
    }

    #[test]
    fn override_encode_decode() {
        let plain = OverrideStat {
            uid: 0,
            gid: 42,
            mode: 0o4755,
            kind: None,
        };
        assert_eq!(plain.encode(), "0:42:04755");
        assert_eq!(OverrideStat::decode(b"0:42:04755").unwrap(), plain);
        // fuse-overlayfs's sscanf("%o") takes the mode without its leading 0 too.
        assert_eq!(OverrideStat::decode(b"0:42:4755").unwrap(), plain);
        // fuse-overlayfs's form: the whole st_mode, the file type included.
        assert_eq!(OverrideStat::decode(b"0:42:104755").unwrap(), plain);
        assert_eq!(OverrideStat::decode(b"0:42:40755").unwrap().mode, 0o755);
        let dev = OverrideStat {
            uid: 1000,
            gid: 1000,
            mode: 0o660,
            kind: Some(OverrideKind::Block { major: 8, minor: 1 }),
        };
        assert_eq!(dev.encode(), "1000:1000:0660:block-8-1");
        assert_eq!(OverrideStat::decode(dev.encode().as_bytes()).unwrap(), dev);
        for kind in [
            OverrideKind::File,
            OverrideKind::Dir,
            OverrideKind::Symlink,
            OverrideKind::Pipe,
            OverrideKind::Socket,
            OverrideKind::Char { major: 1, minor: 3 },
        ] {
            let s = OverrideStat {
                kind: Some(kind),
                ..plain
            };
            assert_eq!(OverrideStat::decode(s.encode().as_bytes()).unwrap(), s);
        }
        for bad in [
            &b""[..],
            b"1:2",
            b"a:2:0755",
            b"1:2:0999",
            b"1:2:037777",
            b"1:2:0200755",
            b"1:2:0755:tape",
        ] {
            assert!(OverrideStat::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn xattr_permissions_upper_keeps_every_owner_in_its_xattr() {
        let dir = tempfile::tempdir().unwrap();
        let (up, work, low) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("lower"),
        );
        for d in [&up, &work, &low] {
            std::fs::create_dir(d).unwrap();
        }
        let lower = nix::fcntl::open(&low, OFlag::O_RDONLY, Mode::empty()).unwrap();
        fset_xattr(lower.as_fd(), OVERRIDE_XATTR.as_bytes(), b"7:8:0711").unwrap();
        assert_eq!(layer_override_xattr(&lower), OVERRIDE_XATTR);
        fset_xattr(lower.as_fd(), USER_OVERRIDE_XATTR.as_bytes(), b"1:2:0755").unwrap();
        assert_eq!(
            layer_override_xattr(&lower),
            OVERRIDE_XATTR,
            "the containers name comes before fuse-overlayfs's user name"
        );
        let upper = Upper::open_with(&up, &work, OverrideXattr::User, &[&lower]).unwrap();
        // The root mark comes from the lower's root: the containers name counts too.
        let root = nix::fcntl::open(&up, OFlag::O_RDONLY, Mode::empty()).unwrap();
        assert_eq!(layer_override_xattr(&root), USER_OVERRIDE_XATTR);
        assert_eq!(upper.get_override(b"").unwrap().unwrap().uid, 1);
        let own = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let (_, _, over) = upper
            .create(b"f", NewNode::File { mode: 0o640 }, own, false)
            .unwrap();
        let want = OverrideStat {
            uid: own.0,
            gid: own.1,
            mode: 0o640,
            kind: None,
        };
        assert_eq!(over, Some(want), "recorded although the owner is our own");
        assert_eq!(upper.get_override(b"f").unwrap(), Some(want));
        let node = upper.open_node(b"f").unwrap();
        assert_eq!(
            path_get_xattr(&node, OVERRIDE_XATTR.as_bytes()).unwrap(),
            None
        );
        let (_, _, over) = upper
            .create(
                b"p",
                NewNode::Special {
                    mode: libc::S_IFIFO | 0o600,
                    rdev: 0,
                },
                own,
                false,
            )
            .unwrap();
        assert_eq!(over, None, "a fifo takes no user.* xattr");
        let chowned = upper.chown(b"f", own.0, own.1, 0o600, false).unwrap();
        assert_eq!(chowned.map(|o| o.mode), Some(0o600));
        let (entries, _) = upper.read_dir(b"").unwrap();
        let f = entries.iter().find_map(|e| match e {
            UpperEntry::Node { name, over, .. } if name == b"f" => Some(*over),
            _ => None,
        });
        assert_eq!(f.flatten().map(|o| o.mode), Some(0o600));
    }

    #[test]
    fn override_xattr_on_a_real_file() {
        let (dir, upper) = setup();
        std::fs::write(dir.path().join("upper/f"), b"").unwrap();
        assert_eq!(upper.get_override(b"f").unwrap(), None);
        let stat = OverrideStat {
            uid: 0,
            gid: 0,
            mode: 0o755,
            kind: None,
        };
        upper.set_override(b"f", &stat).unwrap();
        assert_eq!(upper.get_override(b"f").unwrap(), Some(stat));
        let node = upper.open_node(b"f").unwrap();
        let raw = path_get_xattr(&node, OVERRIDE_XATTR.as_bytes()).unwrap();
        assert_eq!(raw.as_deref(), Some(&b"0:0:0755"[..]));
    }

    fn sparse_source(dir: &tempfile::TempDir) -> File {
        let path = dir.path().join("lower");
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .mode(0o644)
            .open(&path)
            .unwrap();
        f.set_len(10 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0xab; 8192]).unwrap();
        f.seek(SeekFrom::Start(7 << 20)).unwrap();
        f.write_all(&[0xcd; 4096]).unwrap();
        f.sync_all().unwrap();
        File::open(&path).unwrap()
    }

    #[test]
    fn copy_up_keeps_content_mode_mtime_xattrs_and_holes() {
        let (dir, upper) = setup();
        std::fs::create_dir(dir.path().join("upper/d")).unwrap();
        let src = sparse_source(&dir);
        let mut meta = own_meta(0o751);
        meta.xattrs = vec![(b"user.test".to_vec(), b"value".to_vec())];
        meta.fsync = true;
        upper.copy_up_file(&src, b"d/f", &meta).unwrap();

        let dst = dir.path().join("upper/d/f");
        let want = std::fs::read(dir.path().join("lower")).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), want);
        let md = std::fs::symlink_metadata(&dst).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o751);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 123_456_789));
        assert_eq!(md.len(), 10 << 20);
        // 12 KiB of data; a copy that filled the holes would hold 10 MiB.
        assert!(md.blocks() * 512 < 1 << 20, "{} blocks", md.blocks());
        let fd = File::open(&dst).unwrap();
        let x = fget_xattr(fd.as_fd(), b"user.test").unwrap();
        assert_eq!(x.as_deref(), Some(&b"value"[..]));
        assert_eq!(upper.get_override(b"d/f").unwrap(), None);
        assert!(work_entries(&dir).is_empty());
    }

    #[test]
    fn copy_up_of_a_whole_file_and_of_an_empty_one() {
        let (dir, upper) = setup();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("whole"), &data).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let meta = own_meta(0o644);
        for name in ["whole", "empty"] {
            let src = File::open(dir.path().join(name)).unwrap();
            upper.copy_up_file(&src, name.as_bytes(), &meta).unwrap();
        }
        assert_eq!(std::fs::read(dir.path().join("upper/whole")).unwrap(), data);
        assert_eq!(std::fs::read(dir.path().join("upper/empty")).unwrap(), b"");
        assert!(work_entries(&dir).is_empty());
    }

    /// The kept directory descriptors follow renames and removals made through the
    /// upper: a path always means the directory that has that name now.
    #[test]
    fn a_path_names_the_directory_that_has_it_now() {
        let (dir, upper) = setup();
        let up = dir.path().join("upper");
        let mkdir = |p: &[u8]| {
            upper
                .create(p, NewNode::Dir { mode: 0o755 }, own_ids(), false)
                .unwrap();
        };
        let touch = |p: &[u8]| {
            upper
                .create(p, NewNode::File { mode: 0o644 }, own_ids(), false)
                .unwrap();
        };
        mkdir(b"a");
        mkdir(b"a/b");
        touch(b"a/b/one");
        // Renamed away: a new a/b is another directory.
        upper.rename(b"a", b"c", RenameFlags::empty()).unwrap();
        mkdir(b"a");
        mkdir(b"a/b");
        touch(b"a/b/two");
        assert!(up.join("a/b/two").exists());
        assert!(!up.join("c/b/two").exists());
        assert!(up.join("c/b/one").exists());
        // Removed and made again.
        upper.remove(b"a/b/two", false).unwrap();
        upper.remove(b"a/b", false).unwrap();
        mkdir(b"a/b");
        touch(b"a/b/three");
        assert!(up.join("a/b/three").exists());
        assert_eq!(upper.stat(b"a/b/three").unwrap().st_size, 0);
        // Exchanged: each name now holds the other directory.
        upper
            .rename(b"a/b", b"c/b", RenameFlags::RENAME_EXCHANGE)
            .unwrap();
        touch(b"a/b/four");
        assert!(up.join("a/b/four").exists() && up.join("a/b/one").exists());
        assert!(up.join("c/b/three").exists() && !up.join("c/b/four").exists());
    }

    fn own_ids() -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }

    #[test]
    fn kept_directories_are_forgotten_beneath_a_path() {
        let mut dirs = DirFds::default();
        let fd = || Arc::new(open_dir_path(Path::new("/")).unwrap());
        for p in [&b"a"[..], b"a/b", b"a/b/c", b"ab", b"a.b", b"b"] {
            dirs.by_path.insert(p.to_vec(), fd());
        }
        let before = dirs.generation;
        dirs.forget(b"a");
        let left: Vec<&[u8]> = dirs.by_path.keys().map(Vec::as_slice).collect();
        assert_eq!(left, vec![&b"a.b"[..], b"ab", b"b"]);
        assert!(dirs.generation > before);
    }

    #[test]
    fn copy_up_of_a_foreign_owner_records_the_override() {
        let (dir, upper) = setup();
        let src = sparse_source(&dir);
        let mut meta = own_meta(0o640);
        meta.uid = 12345;
        meta.gid = 54321;
        upper.copy_up_file(&src, b"f", &meta).unwrap();
        // Root (in CI) may chown for real: then the owner is the file's own.
        if nix::unistd::geteuid().is_root() {
            let st = upper.stat(b"f").unwrap();
            assert_eq!((st.st_uid, st.st_gid), (12345, 54321));
            assert!(upper.get_override(b"f").unwrap().is_none());
        } else {
            let got = upper.get_override(b"f").unwrap().unwrap();
            assert_eq!((got.uid, got.gid, got.mode), (12345, 54321, 0o640));
        }
    }

    #[test]
    fn copy_up_never_replaces_an_existing_name() {
        let (dir, upper) = setup();
        std::fs::write(dir.path().join("upper/f"), b"mine").unwrap();
        let src = sparse_source(&dir);
        let err = upper
            .copy_up_file(&src, b"f", &own_meta(0o644))
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EEXIST));
        assert_eq!(std::fs::read(dir.path().join("upper/f")).unwrap(), b"mine");
        assert!(work_entries(&dir).is_empty());
    }

    #[test]
    fn failed_copy_up_leaves_nothing_at_the_destination() {
        let (dir, upper) = setup();
        drop(sparse_source(&dir));
        // A write-only source: its size and extents can be seen, its data cannot be
        // read, so the copy fails after it started.
        let src = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("lower"))
            .unwrap();
        let err = upper
            .copy_up_file(&src, b"f", &own_meta(0o644))
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EBADF), "{err}");
        assert!(!dir.path().join("upper/f").exists());
        assert!(work_entries(&dir).is_empty());
    }

    #[test]
    fn copy_up_dir_and_symlink() {
        let (dir, upper) = setup();
        let mut meta = own_meta(0o1775);
        meta.xattrs = vec![(OPAQUE_XATTR.as_bytes().to_vec(), b"y".to_vec())];
        upper.copy_up_dir(b"d", &meta).unwrap();
        let md = std::fs::symlink_metadata(dir.path().join("upper/d")).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.mode() & 0o7777, 0o1775);
        assert_eq!(md.mtime(), 1_500_000_000);
        assert!(upper.is_opaque(b"d").unwrap());

        upper
            .copy_up_symlink(b"d/l", b"../target", &own_meta(0o777))
            .unwrap();
        let link = dir.path().join("upper/d/l");
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../target"));
        let md = std::fs::symlink_metadata(&link).unwrap();
        assert_eq!(md.mtime(), 1_500_000_000);
        assert!(work_entries(&dir).is_empty());
    }

    #[test]
    fn a_symlinked_component_is_never_followed() {
        let (dir, upper) = setup();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("upper/esc")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("upper/root")).unwrap();
        let src = sparse_source(&dir);
        let escape = |r: Result<(), UpperError>| {
            let e = r.unwrap_err();
            assert!(
                matches!(e.errno(), Some(Errno::ELOOP) | Some(Errno::EXDEV)),
                "{e}"
            );
        };
        let meta = own_meta(0o755);
        escape(upper.create_whiteout(b"esc/f").map(drop));
        escape(upper.set_opaque(b"esc"));
        escape(upper.set_opaque(b"root/tmp"));
        escape(upper.is_opaque(b"esc").map(drop));
        let stat = OverrideStat {
            uid: 0,
            gid: 0,
            mode: 0o755,
            kind: None,
        };
        escape(upper.set_override(b"esc/f", &stat));
        escape(upper.get_override(b"esc/f").map(drop));
        escape(upper.copy_up_file(&src, b"esc/new", &meta));
        escape(upper.copy_up_dir(b"esc/newdir", &meta).map(drop));
        escape(upper.copy_up_symlink(b"esc/newlink", b"x", &meta));
        escape(upper.stat(b"esc/f").map(drop));
        escape(upper.open_dir(b"../outside").map(drop));
        // The last component itself a symlink: the override goes on no target.
        let e = upper.set_override(b"esc", &stat).unwrap_err();
        assert!(e.errno().is_some(), "{e}");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "nothing was written outside"
        );
        assert!(work_entries(&dir).is_empty());
    }

    #[test]
    fn bad_names_are_refused() {
        let (_dir, upper) = setup();
        for bad in [&b""[..], b"a/..", b"a/.", b"a/"] {
            let e = upper.create_whiteout(bad).unwrap_err();
            assert_eq!(e.errno(), Some(Errno::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn work_on_another_filesystem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // /proc is a filesystem of its own on every Linux.
        let err = Upper::open(dir.path(), Path::new("/proc/self")).err();
        match err {
            Some(UpperError::CrossDevice { .. }) | Some(UpperError::Open { .. }) => {}
            other => panic!("{other:?}"),
        }
        let err = Upper::open(dir.path(), Path::new("/dev")).err();
        assert!(
            matches!(err, Some(UpperError::CrossDevice { .. })),
            "{err:?}"
        );
    }
}
