//! Putting a union filesystem on a directory and serving it.
//!
//! Where the caller may mount (root in its own user and mount namespace, as inside
//! `unshare -Urm` or strata's own containers) the mount is made by mount(2) with
//! allow_other, so every uid of the namespace reaches it; elsewhere the system's
//! fusermount3 mounts it, with allow_other only where /etc/fuse.conf permits.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, Session, SessionACL};
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::UnionError;
use super::fs::UnionFs;
use super::idmap::IdMap;
use super::lower::Lower;
use super::upper::{OverrideXattr, Upper};
use super::view::View;
use crate::store::{ImageRecord, Store};

/// How many threads serve requests: enough to overlap the kernel's parallel
/// lookups and readahead, not so many that a small machine thrashes.
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
}

/// Where a writable union keeps its changes.
#[derive(Debug, Clone)]
pub struct UpperDirs {
    pub upper: PathBuf,
    /// Beside the upper, on its filesystem: copy-ups are assembled there.
    pub work: PathBuf,
    /// Copy-ups are not fsynced (kernel overlayfs's `volatile`).
    pub volatile: bool,
}

impl UpperDirs {
    /// `upper`, with the work directory `work` or else `UPPER.work` beside it.
    pub fn new(upper: PathBuf, work: Option<PathBuf>, volatile: bool) -> UpperDirs {
        let work = work.unwrap_or_else(|| {
            let mut name = upper.file_name().unwrap_or_default().to_os_string();
            name.push(".work");
            upper.with_file_name(name)
        });
        UpperDirs {
            upper,
            work,
            volatile,
        }
    }

    /// Creates both directories if they are missing, and opens them.
    pub fn open(&self) -> Result<Upper, UnionError> {
        self.open_over(OverrideXattr::default(), &[])
    }

    /// As `open`, keeping overrides in `xattr`, over lowers whose roots (top first)
    /// may mark the upper's root.
    fn open_over(
        &self,
        xattr: OverrideXattr,
        lower_roots: &[&OwnedFd],
    ) -> Result<Upper, UnionError> {
        for dir in [&self.upper, &self.work] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| UnionError::Upper {
                    path: dir.clone(),
                    source: super::upper::UpperError::Open {
                        path: dir.clone(),
                        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    },
                })?;
        }
        Upper::open_with(&self.upper, &self.work, xattr, lower_roots).map_err(|source| {
            UnionError::Upper {
                path: self.upper.clone(),
                source,
            }
        })
    }
}

/// The union of an image's layers, ready to mount: read-only, or writable with
/// `upper` over them.
pub fn image_fs(
    store: &Store,
    image: &ImageRecord,
    upper: Option<&UpperDirs>,
) -> Result<UnionFs, UnionError> {
    let volatile = upper.is_some_and(|u| u.volatile);
    let upper = upper.map(UpperDirs::open).transpose()?;
    let diff_ids: Vec<_> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    let mut held = store.hold_layers(&diff_ids)?;
    held.push(store.hold_image(&image.id)?);
    let view = View::open(store, &diff_ids)?;
    let trees = diff_ids
        .iter()
        .map(|d| {
            let tree = store.layer_tree(d);
            nix::fcntl::open(
                &tree,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| UnionError::Layer {
                path: tree,
                source: e.into(),
            })
        })
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let fs = UnionFs::new(
        view,
        trees,
        IdMap::of_current("uid_map"),
        IdMap::of_current("gid_map"),
    );
    let fs = match upper {
        Some(upper) => fs.with_upper(upper, volatile),
        None => fs,
    };
    Ok(fs.holding(held))
}

/// The union of plain lower directories (`lowers` top first, as fuse-overlayfs and
/// kernel overlayfs take them), read-only, or writable with `upper` over them. Only
/// the lowers' roots are opened here: their directories are read as they are used.
/// The upper keeps owners and modes in `override_xattr` (fuse-overlayfs's
/// xattr_permissions).
pub fn dirs_fs(
    lowers: &[PathBuf],
    upper: Option<&UpperDirs>,
    override_xattr: OverrideXattr,
) -> Result<UnionFs, UnionError> {
    if lowers.len() > usize::from(u16::MAX) {
        return Err(UnionError::LowerDir(super::dirlayer::DirLayerError {
            dir: lowers[0].clone(),
            reason: format!("{} lower directories, at most {}", lowers.len(), u16::MAX),
            errno: nix::errno::Errno::EINVAL,
        }));
    }
    let volatile = upper.is_some_and(|u| u.volatile);
    let names: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
    let trees = names
        .iter()
        .map(|dir| super::dirlayer::open_lower(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let top_first: Vec<&OwnedFd> = trees.iter().rev().collect();
    let upper = upper
        .map(|u| u.open_over(override_xattr, &top_first))
        .transpose()?;
    let lower = Lower::of_dirs(
        trees,
        names,
        IdMap::of_current("uid_map"),
        IdMap::of_current("gid_map"),
    )?;
    let fs = UnionFs::over(lower);
    Ok(match upper {
        Some(upper) => fs.with_upper(upper, volatile),
        None => fs,
    })
}

/// A mounted filesystem, answering the kernel once `serve` runs.
pub struct Mounted {
    session: Session<UnionFs>,
    mountpoint: PathBuf,
}

/// Mounts `fs` on `mountpoint`, read-only unless it has an upper. The kernel's first
/// request (INIT) has been answered when this returns.
///
/// Where we may (root of a user and mount namespace of our own) the mount is made
/// here by mount(2) and fuser only serves the descriptor: fuser's own mounts unmount
/// their mountpoint by path when the session ends, and when the mount is already
/// gone that path may by then hold the next mount of the same directory.
pub fn mount(fs: UnionFs, mountpoint: &Path) -> Result<Mounted, UnionError> {
    check_fuse_device()?;
    if !mountpoint.is_dir() {
        return Err(UnionError::BadMountpoint {
            path: mountpoint.to_path_buf(),
        });
    }
    let mount_error = |source| UnionError::Mount {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let acl = if may_allow_other() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let mut config = Config::default();
    config.n_threads = Some(default_threads());
    config.clone_fd = true;
    let read_only = !fs.is_writable();
    let session = match mount_directly(mountpoint, read_only).map_err(mount_error)? {
        Some(fd) => Session::from_fd(fs, fd, SessionACL::All, config).map_err(mount_error)?,
        None => {
            config.mount_options = vec![
                MountOption::FSName("strata".into()),
                MountOption::Subtype("strata".into()),
                MountOption::DefaultPermissions,
            ];
            if read_only {
                config.mount_options.push(MountOption::RO);
            }
            config.acl = acl;
            Session::new(fs, mountpoint, &config).map_err(mount_error)?
        }
    };
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// mount(2) of a FUSE filesystem on `mountpoint`, where the caller may; None where
/// it may not (then fusermount3 must).
fn mount_directly(mountpoint: &Path, read_only: bool) -> std::io::Result<Option<OwnedFd>> {
    if IdMap::of_current("uid_map") == IdMap::identity() && !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let fd: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?
        .into();
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions,allow_other",
        fd.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    match nix::mount::mount(
        Some("strata"),
        mountpoint,
        Some("fuse.strata"),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(fd)),
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Mounted {
    /// The mountpoint, for an unmount from another thread (a signal handler's).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serves requests until the filesystem is unmounted.
    pub fn serve(self) -> Result<(), UnionError> {
        self.session.run().map_err(UnionError::Serve)
    }

    /// Serves until unmounted, or until SIGINT, SIGTERM or SIGHUP unmounts it;
    /// unless `foreground`, first leaves the mount to a child in a session of its own
    /// and returns to the caller (the mount already answers: INIT is done).
    pub fn serve_until_stopped(self, foreground: bool) -> Result<(), UnionError> {
        if !foreground {
            detach().map_err(UnionError::Daemon)?;
        }
        // The signals are blocked before the serving threads exist, so they all
        // inherit the mask and only the waiting thread sees them.
        let mut set = SigSet::empty();
        for s in STOP_SIGNALS {
            set.add(s);
        }
        set.thread_block()
            .map_err(|e| UnionError::Daemon(e.into()))?;
        let mountpoint = self.mountpoint.clone();
        std::thread::Builder::new()
            .name("strata-signals".into())
            .spawn(move || {
                if set.wait().is_ok() {
                    let _ = unmount(&mountpoint);
                }
            })
            .map_err(UnionError::Daemon)?;
        self.serve()
    }
}

const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Leaves the mount to a child in its own session, with its standard streams on
/// /dev/null; the parent exits at once.
fn detach() -> std::io::Result<()> {
    // SAFETY: no thread has been started yet (the serving threads start later, in
    // the child), so the child is a full copy of a single-threaded process.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => {
            // Exit without running destructors: the mount belongs to the child now.
            std::process::exit(0)
        }
        nix::unistd::ForkResult::Child => {
            nix::unistd::setsid()?;
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            nix::unistd::dup2_stdin(&null)?;
            nix::unistd::dup2_stdout(&null)?;
            nix::unistd::dup2_stderr(&null)?;
            Ok(())
        }
    }
}

/// Unmounts a strata (or any FUSE) mount: directly where the caller may, else
/// through fusermount3.
pub fn unmount(mountpoint: &Path) -> Result<(), UnionError> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(nix::errno::Errno::EPERM) => {}
        Err(e) => {
            return Err(UnionError::Unmount {
                mountpoint: mountpoint.to_path_buf(),
                reason: e.desc().into(),
            });
        }
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .output()
        .map_err(|e| UnionError::Unmount {
            mountpoint: mountpoint.to_path_buf(),
            reason: format!("cannot run fusermount3: {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UnionError::Unmount {
            mountpoint: mountpoint.to_path_buf(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Says clearly when /dev/fuse cannot be used, before the mount fails vaguely.
pub fn check_fuse_device() -> Result<(), UnionError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(UnionError::FuseDevice)
}

/// allow_other: always in a user namespace of our own (we are root there and the
/// container's other uids must reach the mount); outside, only where
/// /etc/fuse.conf has user_allow_other, or for real root.
fn may_allow_other() -> bool {
    if IdMap::of_current("uid_map") != IdMap::identity() || nix::unistd::geteuid().is_root() {
        return true;
    }
    std::fs::read_to_string("/etc/fuse.conf")
        .map(|t| {
            t.lines()
                .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
        })
        .unwrap_or(false)
}
