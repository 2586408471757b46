//! A container's directory in the store: `containers/<id>/` with its record (see
//! store::containers), its writable layer (`upper`, `work`), the directory its root
//! is mounted on (`rootfs`) and the files strata binds into it (hosts, hostname,
//! resolv.conf). `locks/container-<id>.lock` is held for the container's whole
//! life by every process of strata that serves it, so a directory whose lock is
//! free belongs to a container that is not running.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::RunError;
use crate::store::Store;
use crate::store::containers::ContainerRecord;
use crate::store::lock::FileLock;

#[derive(Debug)]
pub struct ContainerDir {
    pub id: String,
    pub dir: PathBuf,
    lock_file: PathBuf,
    _lock: FileLock,
}

fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn failed(path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::ContainerDir { path, source }
}

impl ContainerDir {
    /// A new container directory, locked before it exists so that no sweep of
    /// another strata can take it for a leftover.
    pub fn create(store: &Store) -> Result<ContainerDir, RunError> {
        let id = new_id().map_err(failed(Path::new("/dev/urandom")))?;
        let lock_file = store.container_lock_path(&id);
        std::fs::create_dir_all(store.locks_dir()).map_err(failed(&store.locks_dir()))?;
        let lock = FileLock::exclusive(&lock_file).map_err(failed(&lock_file))?;
        let dir = store.container_dir(&id);
        for sub in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(failed(&dir))?;
        }
        Ok(ContainerDir {
            id,
            dir,
            lock_file,
            _lock: lock,
        })
    }

    /// A kept container's directory, to run it again; refused while it runs.
    pub fn open(store: &Store, record: &ContainerRecord) -> Result<ContainerDir, RunError> {
        let lock_file = store.container_lock_path(&record.id);
        let lock = FileLock::try_exclusive(&lock_file)
            .map_err(failed(&lock_file))?
            .ok_or_else(|| RunError::Running {
                name: record.name.clone().unwrap_or_else(|| record.id.clone()),
            })?;
        Ok(ContainerDir {
            id: record.id.clone(),
            dir: store.container_dir(&record.id),
            lock_file,
            _lock: lock,
        })
    }

    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// A file strata writes for the container (`hosts`, `hostname`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Removes the directory and, once it is gone, its lock file. Files of other ids
    /// (made inside a user namespace with a subordinate range) may resist outside
    /// it: the directory then stays for the next sweep.
    pub fn remove(self) {
        if remove(&self.dir).is_ok() {
            let _ = std::fs::remove_file(&self.lock_file);
        }
    }

    pub fn write_file(&self, name: &str, text: &str) -> Result<PathBuf, RunError> {
        let path = self.file(name);
        std::fs::write(&path, text).map_err(failed(&path))?;
        Ok(path)
    }
}

/// Removes a container directory (gone already is fine).
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes everything in `dir` but the entry `keep` (gone already is fine).
pub fn remove_all_but(dir: &Path, keep: &str) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == keep {
            continue;
        }
        let removed = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes the directories of `--rm` containers whose strata is gone (killed
/// before it could clean up), and of containers whose record was never written.
/// Runs inside a new container's user namespace, where the ids of their files are
/// mapped the same way. Kept containers are left alone.
pub fn sweep_stale(store: &Store, except: &str) {
    let Ok(entries) = std::fs::read_dir(store.containers_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str() else { continue };
        if id == except || id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let lock_file = store.container_lock_path(id);
        let Ok(Some(_held)) = FileLock::try_exclusive(&lock_file) else {
            continue;
        };
        let kept = std::fs::read(entry.path().join("container.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<ContainerRecord>(&b).ok())
            .is_some_and(|r| !r.remove_on_exit);
        if !kept && remove(&entry.path()).is_ok() {
            let _ = std::fs::remove_file(&lock_file);
        }
    }
}
