//! Containers as users of images: `containers/<id>/container.json` records what a
//! container runs (a whole copy of its image record, so that its layers stay even
//! when the image is removed by force), its name and its options, and
//! `containers/<id>/exit.json` how it last ended. Whether it runs now is whether
//! `locks/container-<id>.lock` is held: the kernel drops that lock whatever ends
//! the strata serving the container, so no record can be stale.
//!
//! The store only keeps the records; what a container is and does is the
//! runtime's (the options are opaque JSON here).

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fsutil::write_atomic;
use super::images::ImageRecord;
use super::lock::FileLock;
use super::{Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    /// Unique among the store's containers; None for an unnamed (`--rm`) one.
    pub name: Option<String>,
    /// The image as it was when the container was made.
    pub image: ImageRecord,
    /// The image as the user named it.
    pub image_asked: String,
    /// The command line it runs (for listings).
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Removed when it exits.
    pub remove_on_exit: bool,
    /// The runtime's options, to start it again the same way.
    pub options: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub code: i32,
    /// Seconds since the epoch.
    pub finished: u64,
}

/// What a container is doing, as `ps` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    /// With its code, when strata saw it end.
    Exited(Option<ExitRecord>),
}

impl Store {
    pub fn containers_dir(&self) -> PathBuf {
        self.root().join("containers")
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    /// `locks/container-<id>.lock`: held by every strata process serving the
    /// container, for as long as it runs.
    pub fn container_lock_path(&self, id: &str) -> PathBuf {
        self.locks_dir().join(format!("container-{id}.lock"))
    }

    /// Every container's record (directories without one are being made or
    /// removed, and are skipped).
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let dir = self.containers_dir();
        let listing = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("list", &dir, e)),
        };
        let mut records = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            let path = entry.path().join("container.json");
            match fs::read(&path) {
                Ok(bytes) => records.push(serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::CorruptDb {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("read", &path, e)),
            }
        }
        records.sort_by_key(|r: &ContainerRecord| r.created);
        Ok(records)
    }

    /// The container named `wanted`, or whose ID starts with it.
    pub fn find_container(&self, wanted: &str) -> Result<ContainerRecord, StoreError> {
        let all = self.containers()?;
        if let Some(r) = all.iter().find(|r| r.name.as_deref() == Some(wanted)) {
            return Ok(r.clone());
        }
        let by_id: Vec<&ContainerRecord> = all
            .iter()
            .filter(|r| wanted.len() >= 3 && r.id.starts_with(wanted))
            .collect();
        match by_id.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::ContainerNotFound {
                name: wanted.to_string(),
            }),
            _ => Err(StoreError::AmbiguousContainer {
                prefix: wanted.to_string(),
                count: by_id.len(),
            }),
        }
    }

    /// Writes a new container's record, refusing a name another container has.
    /// A named container's is written durably and under the store lock, so two runs
    /// cannot both take one name; an unnamed one's lives only as long as its
    /// strata, so it costs neither (container start time is what it would cost).
    pub fn add_container(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        let path = self.container_dir(&record.id).join("container.json");
        let bytes = serde_json::to_vec_pretty(record).expect("a container record serializes");
        if record.name.is_none() {
            let tmp = path.with_extension("json.tmp");
            return fs::write(&tmp, &bytes)
                .and_then(|_| fs::rename(&tmp, &path))
                .map_err(|e| StoreError::io("write", &path, e));
        }
        let _lock = self.lock_for_change()?;
        if let Some(name) = &record.name
            && self
                .containers()?
                .iter()
                .any(|r| r.name.as_ref() == Some(name) && r.id != record.id)
        {
            return Err(StoreError::ContainerNameTaken { name: name.clone() });
        }
        write_atomic(&path, &bytes)
    }

    pub fn record_exit(&self, id: &str, exit: ExitRecord) -> Result<(), StoreError> {
        let path = self.container_dir(id).join("exit.json");
        let bytes = serde_json::to_vec(&exit).expect("an exit record serializes");
        write_atomic(&path, &bytes)
    }

    pub fn container_state(&self, id: &str) -> Result<ContainerState, StoreError> {
        let lock = self.container_lock_path(id);
        if FileLock::try_exclusive(&lock)
            .map_err(|e| StoreError::io("lock", &lock, e))?
            .is_none()
        {
            return Ok(ContainerState::Running);
        }
        let path = self.container_dir(id).join("exit.json");
        Ok(ContainerState::Exited(
            fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
        ))
    }

    /// The images containers were made from, kept or running: their layers and
    /// blobs stay through rmi --force and gc.
    pub fn images_of_containers(&self) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self.containers()?.into_iter().map(|r| r.image).collect())
    }
}
