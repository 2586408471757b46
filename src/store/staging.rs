//! Work areas under `tmp/`. Each is a directory with a sibling lock file that its
//! creator holds for as long as it lives; the kernel releases the lock when the
//! creator dies, however it dies. A work area whose lock can be taken is litter.

use std::fs;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::fsutil::{create_dir_private, unique_name};
use super::lock::FileLock;

const LOCK_SUFFIX: &str = ".lock";

/// A private work directory, removed on drop.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: FileLock,
}

impl Staging {
    pub fn new(tmp: &Path, purpose: &str) -> Result<Staging, StoreError> {
        let name = unique_name(purpose);
        let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
        // The lock comes first: a directory without its lock is dead by definition.
        let lock =
            FileLock::exclusive(&lock_path).map_err(|e| StoreError::io("lock", &lock_path, e))?;
        let dir = tmp.join(name);
        create_dir_private(&dir)?;
        Ok(Staging {
            dir,
            lock_path,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = remove_any(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Removes the work areas of commands that are no longer running.
pub fn clean_leftovers(tmp: &Path) -> Result<(), StoreError> {
    let listing = fs::read_dir(tmp).map_err(|e| StoreError::io("list", tmp, e))?;
    let names: Vec<String> = listing
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for name in &names {
        if let Some(base) = name.strip_suffix(LOCK_SUFFIX) {
            let lock_path = tmp.join(name);
            // Held: its owner is alive. Taken: its owner died; clear up after it.
            if let Ok(Some(_lock)) = FileLock::try_exclusive(&lock_path) {
                remove_any(&tmp.join(base))
                    .map_err(|e| StoreError::io("remove", &tmp.join(base), e))?;
                let _ = fs::remove_file(&lock_path);
            }
        } else if !names.contains(&format!("{name}{LOCK_SUFFIX}")) {
            let path = tmp.join(name);
            // The lock is created before the directory and removed after it, so a
            // directory without one was left by a command killed while cleaning.
            remove_any(&path).map_err(|e| StoreError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_work_survives_cleaning_and_dead_work_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let live = Staging::new(tmp.path(), "live").unwrap();
        fs::write(live.path().join("f"), b"x").unwrap();
        // A dead command's litter: a directory with an unheld lock, and one without.
        fs::create_dir(tmp.path().join("dead-1")).unwrap();
        fs::write(tmp.path().join("dead-1.lock"), b"").unwrap();
        fs::create_dir_all(tmp.path().join("dead-2/sub")).unwrap();
        clean_leftovers(tmp.path()).unwrap();
        assert!(live.path().join("f").exists());
        assert!(!tmp.path().join("dead-1").exists());
        assert!(!tmp.path().join("dead-1.lock").exists());
        assert!(!tmp.path().join("dead-2").exists());
        let dir = live.path().to_path_buf();
        drop(live);
        assert!(!dir.exists());
    }
}
