//! Work that the process serving the union does through it while the container's
//! first process is still making its mounts, so that the first process finds it
//! done instead of waiting for it:
//! - the mount points of strata's own files (/etc/hosts, ...) made in the writable
//!   layer where the image has none (the first process makes them only if they are
//!   still missing when it gets there, and reports what fails);
//! - the command's executable read into the union's page cache. Every container
//!   gets a fresh FUSE superblock, so without this its exec reads the binary
//!   through FUSE, page fault by page fault, while the first process waits; here
//!   the reads are queued at once, as readahead, and served while it mounts.
//!
//! Nothing here changes what the container sees, and every failure is ignored: the
//! first process does the same lookups again and says what is wrong.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

use super::rootfs;
use super::spec::ContainerSpec;

/// Readahead is queued in pieces of this size: the kernel reads at most one
/// readahead window (128 KiB by default) for each request of posix_fadvise.
const PIECE: i64 = 128 * 1024;

/// Executables larger than this are read ahead only up to it: what a program
/// touches at its start is near its beginning and in its first pages of code.
const AT_MOST: i64 = 16 * 1024 * 1024;

/// Does the work described above for the union mounted on `rootfs`.
pub fn prepare_root(rootfs: &Path, spec: &ContainerSpec, mount_points: &[&str], writable: bool) {
    let Ok(root) = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    if writable {
        for target in mount_points {
            let _ = rootfs::make_file_mount_point(&root, target);
        }
    }
    if let Some(file) = find_executable(&root, spec) {
        read_ahead(&file);
    }
}

/// The file the container's execve will run, as `process::exec` searches it:
/// argv[0] itself when it has a slash, else the first executable regular file in
/// PATH. Relative names are taken from the working directory.
fn find_executable(root: &OwnedFd, spec: &ContainerSpec) -> Option<OwnedFd> {
    let name = spec.argv.first()?;
    let in_workdir = |p: &str| {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{p}", spec.workdir)
        }
    };
    if name.contains('/') {
        return open_executable(root, &in_workdir(name));
    }
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(super::spec::DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .find_map(|d| open_executable(root, &in_workdir(&format!("{d}/{name}"))))
}

/// `path` in the container's root, opened for reading when it is an executable
/// regular file. O_NONBLOCK: a FIFO of that name must not block the open.
fn open_executable(root: &OwnedFd, path: &str) -> Option<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = path.trim_start_matches('/');
    let fd = nix::fcntl::openat2(root, if rel.is_empty() { "." } else { rel }, how).ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    let regular = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
    (regular && st.st_mode & 0o111 != 0).then_some(fd)
}

/// Reads the whole file (up to `AT_MOST`) into the union's page cache, one piece
/// at a time: readahead of a piece, then a wait for its last byte (no copy of the
/// rest). One read at a time in the union's queue, because pid 1's own lookups
/// (/etc/passwd, ...) would otherwise wait behind a dozen of them.
fn read_ahead(file: &OwnedFd) {
    let Ok(st) = nix::sys::stat::fstat(file) else {
        return;
    };
    let end = st.st_size.min(AT_MOST);
    let mut offset = 0;
    while offset < end {
        if advise_will_need(file, offset, PIECE).is_err() {
            return;
        }
        let last = (offset + PIECE).min(end) - 1;
        if nix::sys::uio::pread(file, &mut [0u8; 1], last).is_err() {
            return;
        }
        offset += PIECE;
    }
}

fn advise_will_need(file: &OwnedFd, offset: i64, len: i64) -> nix::Result<()> {
    // SAFETY: posix_fadvise only reads its integer arguments; `file` is open for
    // the duration of the call.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
    // posix_fadvise returns the error number rather than setting errno.
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spec(argv: &str, path: Option<&str>, workdir: &str) -> ContainerSpec {
        let config: crate::image::spec::ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let options = super::super::spec::RunOptions {
            command: vec![argv.to_string()],
            ..Default::default()
        };
        let mut spec = ContainerSpec::resolve(&config, &options, "h".into(), |_| None)
            .unwrap_or_else(|_| panic!("a spec"));
        spec.env.retain(|(k, _)| k != "PATH");
        if let Some(p) = path {
            spec.env.push(("PATH".into(), p.into()));
        }
        spec.workdir = workdir.into();
        spec
    }

    fn found(root: &OwnedFd, spec: &ContainerSpec) -> Option<u64> {
        find_executable(root, spec).map(|fd| nix::sys::stat::fstat(&fd).unwrap().st_ino)
    }

    #[test]
    fn finds_the_file_exec_will_run_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for d in ["usr/bin", "bin", "opt/tools", "host"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let tool = |p: &str, mode: u32| {
            std::fs::write(dir.join(p), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(dir.join(p)).map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        };
        let tool_ino = tool("usr/bin/tool", 0o755).unwrap();
        tool("bin/tool", 0o644).unwrap();
        let rel_ino = tool("opt/tools/run", 0o755).unwrap();
        // An absolute link resolves inside the root, never on the host.
        std::os::unix::fs::symlink("/usr/bin/tool", dir.join("bin/link")).unwrap();
        std::os::unix::fs::symlink("/host", dir.join("bin/escape")).unwrap();
        nix::unistd::mkfifo(&dir.join("bin/fifo"), Mode::from_bits_truncate(0o755)).unwrap();
        let root = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        // PATH order, skipping what is not executable.
        let spec_in = |a, p| spec(a, Some(p), "/");
        assert_eq!(
            found(&root, &spec_in("tool", "/bin:/usr/bin")),
            Some(tool_ino)
        );
        assert_eq!(found(&root, &spec_in("link", "/bin")), Some(tool_ino));
        assert_eq!(found(&root, &spec_in("tool", "/bin")), None);
        // A FIFO is neither opened for long nor taken.
        assert_eq!(found(&root, &spec_in("fifo", "/bin")), None);
        assert_eq!(found(&root, &spec_in("escape", "/bin")), None);
        assert_eq!(found(&root, &spec_in("/usr/bin/tool", "")), Some(tool_ino));
        // Relative names and PATH entries from the working directory.
        assert_eq!(
            found(&root, &spec("./run", None, "/opt/tools")),
            Some(rel_ino)
        );
        assert_eq!(
            found(&root, &spec("run", Some("tools"), "/opt")),
            Some(rel_ino)
        );
        assert_eq!(found(&root, &spec("missing", None, "/")), None);
    }
}
