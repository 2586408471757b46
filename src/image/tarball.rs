//! A plain root filesystem tarball (.tar, .tar.gz, .tar.zst) as a one-layer image:
//! the file itself is the layer blob, and the config says the host's platform, the
//! layer's diff_id, and no command (as `podman import` makes it).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::digest::HashingReader;
use super::source::ImageSource;
use super::spec::{Compression, Descriptor, Index, Manifest, Platform, media_type};
use super::{Digest, ImageError};

pub struct RootfsTarball {
    path: PathBuf,
    layer: Digest,
    index: Index,
    documents: HashMap<Digest, Vec<u8>>,
}

impl RootfsTarball {
    /// Reads the tarball once to learn its digests, and describes it as an image.
    pub fn open(path: &Path) -> Result<RootfsTarball, ImageError> {
        let what = path.display().to_string();
        let read_err = |e: io::Error| ImageError::Read {
            what: what.clone(),
            source: e,
        };
        let mut magic = [0u8; 4];
        let got = File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(read_err)?;
        let compression = Compression::sniff(&magic[..got]);
        let mut blob = HashingReader::new(File::open(path).map_err(read_err)?);
        let diff_id = {
            let decoded = compression.decoder(&mut blob).map_err(read_err)?;
            let corrupt = |e: io::Error| ImageError::BadLayout {
                path: path.to_path_buf(),
                reason: format!("it is not a readable (compressed) tar: {e}"),
            };
            let (diff_id, _) = HashingReader::new(decoded).finish().map_err(corrupt)?;
            diff_id
        };
        let (layer, size) = blob.finish().map_err(read_err)?;
        let platform = Platform::host();
        let created = now_rfc3339();
        let config = serde_json::json!({
            "created": created,
            "architecture": platform.architecture,
            "os": platform.os,
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
            "history": [{"created": created, "created_by": format!("strata import {}", path.display())}],
        });
        let config_bytes = serde_json::to_vec(&config).expect("a config serialises");
        let layer_type = match compression {
            Compression::None => media_type::OCI_LAYER_TAR,
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.into()),
            config: descriptor(media_type::OCI_CONFIG, &config_bytes),
            layers: vec![Descriptor {
                media_type: layer_type.into(),
                digest: layer.clone(),
                size,
                annotations: Default::default(),
                platform: None,
            }],
            annotations: Default::default(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let index = Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.into()),
            manifests: vec![descriptor(media_type::OCI_MANIFEST, &manifest_bytes)],
            annotations: Default::default(),
        };
        let documents = [config_bytes, manifest_bytes]
            .into_iter()
            .map(|b| (Digest::of(&b), b))
            .collect();
        Ok(RootfsTarball {
            path: path.to_path_buf(),
            layer,
            index,
            documents,
        })
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        annotations: Default::default(),
        platform: None,
    }
}

/// Now, as RFC 3339 UTC (no external time crate needed for one timestamp).
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl ImageSource for RootfsTarball {
    fn describe(&self) -> String {
        format!("rootfs tarball {}", self.path.display())
    }

    fn index(&self) -> Result<Index, ImageError> {
        Ok(self.index.clone())
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        if digest == &self.layer {
            let file = File::open(&self.path).map_err(|e| ImageError::Read {
                what: self.describe(),
                source: e,
            })?;
            return Ok(Box::new(file));
        }
        match self.documents.get(digest) {
            Some(bytes) => Ok(Box::new(&bytes[..])),
            None => Err(ImageError::MissingBlob {
                what: format!("blob {digest}"),
                source_name: self.describe(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20"), "{s}");
    }
}
