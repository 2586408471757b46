//! An OCI image layout directory: `oci-layout`, `index.json`, `blobs/<alg>/<hex>`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::source::{ImageSource, open_blob_file};
use super::spec::Index;
use super::{Digest, ImageError};

/// The layout version this reader understands (the only one the spec defines).
const LAYOUT_VERSION: &str = "1.0.0";
/// index.json is small; anything larger is not an index.
const INDEX_LIMIT: u64 = 16 << 20;

pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    /// Opens a layout directory after checking its `oci-layout` marker.
    pub fn open(root: &Path) -> Result<OciLayout, ImageError> {
        let bad = |reason: String| ImageError::BadLayout {
            path: root.to_path_buf(),
            reason,
        };
        let marker = root.join("oci-layout");
        let text = match std::fs::read_to_string(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad("it has no 'oci-layout' file".into()));
            }
            Err(e) => {
                return Err(ImageError::Read {
                    what: marker.display().to_string(),
                    source: e,
                });
            }
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ImageError::BadJson {
                what: marker.display().to_string(),
                source: e,
            })?;
        match value.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(LAYOUT_VERSION) => Ok(OciLayout {
                root: root.to_path_buf(),
            }),
            Some(other) => Err(bad(format!(
                "imageLayoutVersion {other} is not supported (only {LAYOUT_VERSION})"
            ))),
            None => Err(bad("'oci-layout' has no imageLayoutVersion".into())),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(Digest::ALGORITHM)
            .join(digest.hex())
    }
}

impl ImageSource for OciLayout {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.root.display())
    }

    fn index(&self) -> Result<Index, ImageError> {
        let path = self.root.join("index.json");
        let what = path.display().to_string();
        let file = File::open(&path).map_err(|e| ImageError::Read {
            what: what.clone(),
            source: e,
        })?;
        let mut text = Vec::new();
        file.take(INDEX_LIMIT + 1)
            .read_to_end(&mut text)
            .map_err(|e| ImageError::Read {
                what: what.clone(),
                source: e,
            })?;
        if text.len() as u64 > INDEX_LIMIT {
            return Err(ImageError::TooLarge {
                what,
                size: text.len() as u64,
                limit: INDEX_LIMIT,
            });
        }
        serde_json::from_slice(&text).map_err(|e| ImageError::BadJson { what, source: e })
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        open_blob_file(&self.blob_path(digest), digest, self)
    }
}
