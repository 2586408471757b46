//! The image list: `images/images.json`, one record per image (keyed by its ID, the
//! config digest) with the names that point at it. It is small, so it is rewritten
//! whole, atomically, under the store lock; readers need no lock.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fsutil::write_atomic;
use super::{Store, StoreError};
use crate::image::Digest;
use crate::image::reference::ImageName;

const DB_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub diff_id: Digest,
    /// The blob as the manifest names it (compressed).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub uncompressed_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config digest, as podman and docker define an image ID.
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub layers: Vec<LayerRecord>,
    /// `name:tag` strings.
    pub names: Vec<String>,
    /// The config's creation time, as it says it (RFC 3339), if it says.
    pub created: Option<String>,
    /// When this store imported the image, seconds since the epoch.
    pub imported: u64,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.uncompressed_size).sum()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageDb {
    pub version: u32,
    pub images: Vec<ImageRecord>,
}

impl ImageDb {
    /// Adds `record`, or merges its names into the image with the same ID. A name
    /// moves: the image that had it before loses it, as `tag` does in docker.
    pub fn add(&mut self, record: ImageRecord) {
        for name in &record.names {
            for other in &mut self.images {
                other.names.retain(|n| n != name);
            }
        }
        match self.images.iter_mut().find(|i| i.id == record.id) {
            Some(existing) => {
                for name in record.names {
                    existing.names.push(name);
                }
                existing.names.sort();
            }
            None => self.images.push(record),
        }
    }

    /// Removes the image with this ID and every name it had.
    pub fn remove(&mut self, id: &Digest) -> Option<ImageRecord> {
        let at = self.images.iter().position(|i| &i.id == id)?;
        Some(self.images.remove(at))
    }

    /// Takes `name` away from whichever image has it; whether one had it.
    pub fn untag(&mut self, name: &str) -> bool {
        let mut found = false;
        for image in &mut self.images {
            let before = image.names.len();
            image.names.retain(|n| n != name);
            found |= image.names.len() != before;
        }
        found
    }

    /// Gives `name` to the image `id`, moving it from the image that had it; returns
    /// that image's ID, unless it was `id` itself or nobody.
    pub fn tag(&mut self, id: &Digest, name: &str) -> Option<Digest> {
        let previous = self
            .images
            .iter()
            .find(|i| i.names.iter().any(|n| n == name))
            .map(|i| i.id.clone())
            .filter(|p| p != id);
        self.untag(name);
        if let Some(image) = self.images.iter_mut().find(|i| &i.id == id) {
            image.names.push(name.to_string());
            image.names.sort();
        }
        previous
    }

    /// The name `wanted` asks for, when it names `image` by one of its names (rather
    /// than by ID or digest).
    pub fn name_asked(wanted: &str, image: &ImageRecord) -> Option<String> {
        let name = wanted.parse::<ImageName>().ok()?.to_string();
        image.names.contains(&name).then_some(name)
    }

    /// Finds an image by `NAME[:TAG]`, an ID prefix, `sha256:<id>`, `@sha256:<digest>`
    /// or `NAME@sha256:<manifest digest>`.
    pub fn find(&self, wanted: &str) -> Result<&ImageRecord, StoreError> {
        let by_digest = wanted.rsplit_once('@').map_or(wanted, |(_, d)| d);
        if let Ok(digest) = by_digest.parse::<Digest>()
            && let Some(i) = self
                .images
                .iter()
                .find(|i| i.id == digest || i.manifest_digest == digest)
        {
            return Ok(i);
        }
        if let Ok(name) = wanted.parse::<ImageName>() {
            let full = name.to_string();
            if let Some(i) = self.images.iter().find(|i| i.names.contains(&full)) {
                return Ok(i);
            }
        }
        let is_hex = wanted.len() >= 3
            && wanted
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if is_hex {
            let matches: Vec<&ImageRecord> = self
                .images
                .iter()
                .filter(|i| i.id.hex().starts_with(wanted))
                .collect();
            match matches.len() {
                1 => return Ok(matches[0]),
                0 => {}
                count => {
                    return Err(StoreError::AmbiguousImage {
                        prefix: wanted.to_string(),
                        count,
                    });
                }
            }
        }
        Err(StoreError::ImageNotFound {
            name: wanted.to_string(),
            hint: self.hint(wanted),
        })
    }

    /// "; did you mean ...": the names closest to what was asked for.
    fn hint(&self, wanted: &str) -> String {
        let base = wanted.split(':').next().unwrap_or(wanted);
        let mut scored: Vec<(usize, &str)> = self
            .images
            .iter()
            .flat_map(|i| i.names.iter())
            .map(|n| {
                (
                    edit_distance(base, n.split(':').next().unwrap_or(n)),
                    n.as_str(),
                )
            })
            .filter(|(d, n)| *d <= base.len().max(3) / 2 || n.contains(base))
            .collect();
        scored.sort();
        let close: Vec<&str> = scored.into_iter().take(3).map(|(_, n)| n).collect();
        if close.is_empty() {
            "; `strata images` lists what the store has".to_string()
        } else {
            format!("; did you mean {}?", close.join(", "))
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Access to the image list of one store.
pub struct ImageStore<'a> {
    store: &'a Store,
}

impl<'a> ImageStore<'a> {
    pub fn new(store: &'a Store) -> Self {
        ImageStore { store }
    }

    fn path(&self) -> PathBuf {
        self.store.images_dir().join("images.json")
    }

    /// Reads the list as it is now.
    pub fn load(&self) -> Result<ImageDb, StoreError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ImageDb {
                    version: DB_VERSION,
                    images: Vec::new(),
                });
            }
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        let db: ImageDb = serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptDb {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if db.version != DB_VERSION {
            return Err(StoreError::CorruptDb {
                path,
                reason: format!("version {}, this strata reads {DB_VERSION}", db.version),
            });
        }
        Ok(db)
    }

    /// Changes the list: the caller must hold the store lock.
    pub fn update<T>(&self, change: impl FnOnce(&mut ImageDb) -> T) -> Result<T, StoreError> {
        let mut db = self.load()?;
        let out = change(&mut db);
        let bytes = serde_json::to_vec_pretty(&db).expect("the image list serialises");
        write_atomic(&self.path(), &bytes)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seed: &[u8], names: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(seed),
            manifest_digest: Digest::of(&[seed, b"m"].concat()),
            manifest_media_type: "m".into(),
            layers: vec![],
            names: names.iter().map(|s| s.to_string()).collect(),
            created: None,
            imported: 0,
        }
    }

    #[test]
    fn finds_by_every_form() {
        let mut db = ImageDb::default();
        db.add(record(b"a", &["alpine:latest"]));
        db.add(record(b"b", &["busybox:1"]));
        let a = Digest::of(b"a");
        assert_eq!(db.find("alpine").unwrap().id, a);
        assert_eq!(db.find("alpine:latest").unwrap().id, a);
        assert_eq!(db.find(&a.hex()[..8]).unwrap().id, a);
        assert_eq!(db.find(&a.to_string()).unwrap().id, a);
        let m = db.images[0].manifest_digest.clone();
        assert_eq!(db.find(&format!("@{m}")).unwrap().id, a);
        assert_eq!(db.find(&format!("alpine@{m}")).unwrap().id, a);
        let err = db.find("alpin").unwrap_err().to_string();
        assert!(err.contains("did you mean alpine:latest"), "{err}");
        assert!(
            db.find("busybox").is_err(),
            "busybox:latest is not busybox:1"
        );
    }

    #[test]
    fn tag_untag_remove() {
        let mut db = ImageDb::default();
        db.add(record(b"a", &["a:1"]));
        db.add(record(b"b", &["b:1"]));
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(db.tag(&a, "a:2"), None);
        assert_eq!(db.find("a:2").unwrap().id, a);
        assert_eq!(db.tag(&a, "b:1"), Some(b.clone()));
        assert_eq!(db.images[0].names, ["a:1", "a:2", "b:1"]);
        assert!(db.images[1].names.is_empty());
        assert_eq!(
            db.tag(&a, "b:1"),
            None,
            "a name already there does not move"
        );
        assert_eq!(
            ImageDb::name_asked("a:2", &db.images[0]).as_deref(),
            Some("a:2")
        );
        assert_eq!(ImageDb::name_asked(&a.hex()[..8], &db.images[0]), None);
        assert!(db.untag("a:1"));
        assert!(!db.untag("a:1"));
        assert_eq!(db.remove(&a).unwrap().names, ["a:2", "b:1"]);
        assert!(db.remove(&a).is_none());
        assert_eq!(db.images.len(), 1);
    }

    #[test]
    fn names_move_between_images() {
        let mut db = ImageDb::default();
        db.add(record(b"a", &["app:latest"]));
        db.add(record(b"b", &["app:latest"]));
        assert!(db.images[0].names.is_empty());
        assert_eq!(db.find("app").unwrap().id, Digest::of(b"b"));
    }
}
