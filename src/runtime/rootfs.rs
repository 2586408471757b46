//! The container's root: /proc, /dev, /sys, the binds and strata's own files
//! mounted onto the union filesystem, then pivot_root into it. Runs in the
//! container's first process, in its own mount namespace, before any identity
//! change.
//!
//! Every target inside the container is resolved with openat2(RESOLVE_IN_ROOT):
//! an image's symlinks (say `/etc -> /host/etc`, or `../../..`) resolve inside the
//! container's root as they will after pivot_root, never onto a host path. Mounts
//! then go onto `/proc/self/fd/N`, exactly the object resolved.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::spec::Bind;
use super::sys::{fd_path, make_read_only_recursive};

/// What `enter` mounts.
pub struct RootfsPlan<'a> {
    pub root: &'a Path,
    /// The union has a writable layer: missing mount points may be created.
    pub writable: bool,
    /// The container has a network namespace of its own (then a fresh sysfs).
    pub own_network: bool,
    pub binds: &'a [Bind],
    /// Files of strata's (hosts, hostname, ...) and where they go.
    pub files: Vec<(PathBuf, &'static str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

type Result<T> = std::result::Result<T, String>;

fn failed(what: impl std::fmt::Display) -> impl FnOnce(Errno) -> String {
    move |e| format!("{what}: {}", e.desc())
}

/// Mounts everything and makes the union the root of this mount namespace.
pub fn enter(plan: &RootfsPlan<'_>) -> Result<()> {
    let root = nix::fcntl::open(
        plan.root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed(format!("open {}", plan.root.display())))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = need(&root, "/proc", Kind::Dir, plan.writable)?;
    mount_fs("proc", &proc, flags, None)?;
    mount_dev(&root, plan.writable)?;
    mount_sys(&root, plan)?;
    if !plan.writable {
        // --read-only: places programs expect to write, as podman's --read-only-tmpfs.
        for (dir, mode) in [("/tmp", "1777"), ("/var/tmp", "1777"), ("/run", "0755")] {
            if let Some(target) = resolve(&root, dir, Kind::Dir, false)? {
                let data = format!("mode={mode}");
                mount_fs(
                    "tmpfs",
                    &target,
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(&data),
                )?;
            }
        }
    }
    for (source, target) in &plan.files {
        if let Some(at) = resolve(&root, target, Kind::File, plan.writable)? {
            bind(source, &at, MsFlags::empty())?;
        }
    }
    for b in plan.binds {
        let kind = if b.source.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        };
        let at = need(&root, &b.target, kind, plan.writable)?;
        bind(&b.source, &at, MsFlags::MS_REC)?;
        if b.read_only {
            let mounted = need(&root, &b.target, kind, false)?;
            make_read_only_recursive(mounted.as_fd())
                .map_err(|e| format!("make the bind on {} read-only: {e}", b.target))?;
        }
    }
    pivot(&root)
}

/// A tmpfs with host device nodes bound in (a user namespace may not mknod them),
/// a devpts of its own, /dev/shm and /dev/mqueue.
fn mount_dev(root: &OwnedFd, writable: bool) -> Result<()> {
    let target = need(root, "/dev", Kind::Dir, writable)?;
    mount_fs(
        "tmpfs",
        &target,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    let dev = need(root, "/dev", Kind::Dir, false)?;
    let at = |name: &str| fd_path(dev.as_fd()).join(name);
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        nix::fcntl::openat(
            &dev,
            node,
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o666),
        )
        .map_err(failed(format!("create /dev/{node}")))?;
        nix::mount::mount(
            Some(Path::new("/dev").join(node).as_path()),
            &at(node),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(failed(format!("bind /dev/{node}")))?;
    }
    for (dir, fstype, flags, data) in [
        (
            "pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        ),
        (
            "shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "mode=1777,size=65536k",
        ),
        (
            "mqueue",
            "mqueue",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "",
        ),
    ] {
        nix::sys::stat::mkdirat(&dev, dir, Mode::from_bits_truncate(0o755))
            .map_err(failed(format!("create /dev/{dir}")))?;
        let data = (!data.is_empty()).then_some(data);
        nix::mount::mount(Some(fstype), &at(dir), Some(fstype), flags, data)
            .map_err(failed(format!("mount {fstype} on /dev/{dir}")))?;
    }
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        nix::unistd::symlinkat(target, &dev, name)
            .map_err(failed(format!("create /dev/{name}")))?;
    }
    Ok(())
}

/// A fresh read-only sysfs where the container has its own network namespace (its
/// interfaces then show); else the host's /sys bound read-only, as the kernel only
/// lets the owner of a network namespace mount sysfs.
fn mount_sys(root: &OwnedFd, plan: &RootfsPlan<'_>) -> Result<()> {
    let target = need(root, "/sys", Kind::Dir, plan.writable)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    if plan.own_network && mount_fs("sysfs", &target, flags, None).is_ok() {
        return Ok(());
    }
    bind(Path::new("/sys"), &target, MsFlags::MS_REC)?;
    let mounted = need(root, "/sys", Kind::Dir, false)?;
    make_read_only_recursive(mounted.as_fd()).map_err(|e| format!("make /sys read-only: {e}"))
}

fn mount_fs(fstype: &str, target: &OwnedFd, flags: MsFlags, data: Option<&str>) -> Result<()> {
    nix::mount::mount(
        Some(fstype),
        &fd_path(target.as_fd()),
        Some(fstype),
        flags,
        data,
    )
    .map_err(failed(format!("mount {fstype}")))
}

fn bind(source: &Path, target: &OwnedFd, extra: MsFlags) -> Result<()> {
    nix::mount::mount(
        Some(source),
        &fd_path(target.as_fd()),
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(failed(format!("bind {}", source.display())))
}

/// Makes `path` in the container's root `root` an empty file where it is missing,
/// with the directories above it: a mount point for one of strata's files.
pub fn make_file_mount_point(root: &OwnedFd, path: &str) -> Result<()> {
    resolve(root, path, Kind::File, true).map(drop)
}

/// `path` in the container, created if missing where the union is writable; an
/// error names what is missing otherwise.
fn need(root: &OwnedFd, path: &str, kind: Kind, create: bool) -> Result<OwnedFd> {
    resolve(root, path, kind, create)?.ok_or_else(|| {
        format!(
            "the image has no {path} and --read-only keeps strata from creating it: add it to the image"
        )
    })
}

fn open_in_root(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(root, if rel.is_empty() { "." } else { rel }, how)
}

/// `path` in the container (an O_PATH descriptor), or None when it is missing and
/// `create` is false.
fn resolve(root: &OwnedFd, path: &str, kind: Kind, create: bool) -> Result<Option<OwnedFd>> {
    let rel = path.trim_start_matches('/');
    match open_in_root(root, rel) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::ENOENT) if create => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(format!("{path} in the container: {}", e.desc())),
    }
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    for i in 0..parts.len() {
        let prefix = parts[..=i].join("/");
        match open_in_root(root, &prefix) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(format!("/{prefix} in the container: {}", e.desc())),
        }
        let parent = open_in_root(root, &parts[..i].join("/")).map_err(failed(format!(
            "/{} in the container",
            parts[..i].join("/")
        )))?;
        let last = i + 1 == parts.len();
        let made = if last && kind == Kind::File {
            nix::fcntl::openat(
                &parent,
                parts[i],
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            nix::sys::stat::mkdirat(&parent, parts[i], Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("create /{prefix} in the container: {}", e.desc())),
        }
    }
    open_in_root(root, rel)
        .map(Some)
        .map_err(failed(format!("{path} in the container")))
}

/// pivot_root(".", "."): the old root ends up stacked on the new one and is
/// detached at once, so no path to the host's tree remains.
fn pivot(root: &OwnedFd) -> Result<()> {
    nix::unistd::fchdir(root).map_err(failed("enter the container's root"))?;
    nix::unistd::pivot_root(".", ".").map_err(failed("pivot_root"))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(failed("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(failed("chdir /"))
}
