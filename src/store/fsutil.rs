//! Small filesystem steps the store repeats: private directories, atomic replacement
//! of a file, durable renames.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, RenameFlags, ResolveFlag};
use std::os::fd::{BorrowedFd, OwnedFd};

use super::StoreError;

/// Creates `dir` and its missing parents, private to the user.
pub fn create_dir_private(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::io("create directory", dir, e))
}

/// A name no other process or thread will pick: pid, time and a counter.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Replaces `path` with `bytes` atomically and durably, private to the user.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_with(path, 0o600, |out| {
        out.write_all(bytes)
            .map_err(|e| StoreError::io("write", path, e))
    })
}

/// Creates or replaces `path` with what `fill` writes, atomically and durably: a
/// temporary file beside it (`.NAME.tmp-*`, created with `mode` less the umask),
/// fsynced, renamed over it, and the directory fsynced.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{name}.{}", unique_name("tmp")));
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| StoreError::io("create", &tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        fill(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| StoreError::io("write", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| StoreError::io("rename", path, e))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Opens `path` beneath the directory `root` without following any symlink or leaving
/// its filesystem: what every walk through a tree that untrusted content shaped uses
/// (layer trees, uppers). The empty path is `root` itself.
pub fn open_beneath(root: BorrowedFd<'_>, path: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    let target: &[u8] = if path.is_empty() { b"." } else { path };
    nix::fcntl::openat2(root, target, how)
}

/// The names in the directory `dir` (without "." and ".."), read through a
/// duplicate of its descriptor.
pub fn dir_names(dir: &OwnedFd) -> nix::Result<Vec<Vec<u8>>> {
    let dup = dir.try_clone().map_err(|_| nix::errno::Errno::EMFILE)?;
    let mut listing = nix::dir::Dir::from_fd(dup)?;
    Ok(listing
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect())
}

/// Makes a directory's entries (renames, creations) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io("sync", dir, e))
}

/// Renames `from` to `to` unless `to` exists. Returns whether it moved: content-
/// addressed objects that already exist are the same object, so losing is fine.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<bool, StoreError> {
    match nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => Ok(false),
        Err(e) => Err(StoreError::io("rename", to, e.into())),
    }
}
