//! A container's directory in the store: `containers/<id>/` with its writable layer
//! (`upper`, `work`), the directory its root is mounted on (`rootfs`) and the files
//! strata binds into it (hosts, hostname, resolv.conf). `locks/container-<id>.lock`
//! is held for the container's whole life by every process of strata that serves
//! it, so a directory whose lock is free belongs to a container that is gone.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::RunError;
use crate::store::Store;
use crate::store::lock::FileLock;

#[derive(Debug)]
pub struct ContainerDir {
    pub id: String,
    pub dir: PathBuf,
    lock_file: PathBuf,
    _lock: FileLock,
}

pub fn containers_dir(store: &Store) -> PathBuf {
    store.root().join("containers")
}

fn lock_path(store: &Store, id: &str) -> PathBuf {
    store.locks_dir().join(format!("container-{id}.lock"))
}

fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl ContainerDir {
    /// A new container directory, locked before it exists so that no sweep of
    /// another strata can take it for a leftover.
    pub fn create(store: &Store) -> Result<ContainerDir, RunError> {
        let fail = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunError::ContainerDir { path, source }
        };
        let id = new_id().map_err(fail(Path::new("/dev/urandom")))?;
        let lock_file = lock_path(store, &id);
        std::fs::create_dir_all(store.locks_dir()).map_err(fail(&store.locks_dir()))?;
        let lock = FileLock::exclusive(&lock_file).map_err(fail(&lock_file))?;
        let dir = containers_dir(store).join(&id);
        for sub in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(fail(&dir))?;
        }
        Ok(ContainerDir {
            id,
            dir,
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
        std::fs::write(&path, text).map_err(|source| RunError::ContainerDir {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// Removes a container directory. Inside the container's user namespace this can
/// remove files its processes made under other ids of the subordinate range; outside
/// it the caller may lack the right, and the directory is left for the next sweep.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the directories of containers whose strata is gone (killed before it
/// could clean up). Runs inside a new container's user namespace, where the ids of
/// their files are mapped the same way.
pub fn sweep_stale(store: &Store, except: &str) {
    let Ok(entries) = std::fs::read_dir(containers_dir(store)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str() else { continue };
        if id == except || id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let lock_file = lock_path(store, id);
        if let Ok(Some(_held)) = FileLock::try_exclusive(&lock_file)
            && remove(&entry.path()).is_ok()
        {
            let _ = std::fs::remove_file(&lock_file);
        }
    }
}
