//! Choosing one image from a source and reading its manifest and config, verified.
//!
//! An OCI layout may hold several manifests (named by `ref.name` annotations) and
//! indexes of per-platform manifests. We pick by the ref the user gave, else the only
//! image, else the one for the host's platform, and refuse to guess beyond that.

use std::io::Read;

use super::digest::HashingReader;
use super::source::ImageSource;
use super::spec::{Compression, Descriptor, ImageConfig, Index, Manifest, Platform, media_type};
use super::{Digest, ImageError};

/// Manifests, indexes and configs are read into memory; a real one is a few KiB.
const DOCUMENT_LIMIT: u64 = 16 << 20;
/// Indexes may nest; more than this is a loop or an attack.
const MAX_INDEX_DEPTH: usize = 4;

/// One image's verified manifest and config, ready to import.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    /// The ref name the source gave this image, if any (an OCI layout's ref.name).
    pub ref_name: Option<String>,
}

impl ResolvedImage {
    pub fn config_digest(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// Each layer's descriptor with its diff_id and compression, in order bottom-up.
    pub fn layers(&self) -> impl Iterator<Item = (&Descriptor, &Digest, Compression)> {
        self.manifest
            .layers
            .iter()
            .zip(&self.config.rootfs.diff_ids)
            .map(|(d, id)| {
                // resolve() checked every media type, so this cannot fail.
                let c =
                    Compression::of_layer_media_type(&d.media_type).unwrap_or(Compression::None);
                (d, id, c)
            })
    }
}

/// Picks the image named `want_ref` (or the only one, or the host platform's) from
/// `source`, and returns its manifest and config, digests and sizes checked.
pub fn resolve(
    source: &dyn ImageSource,
    want_ref: Option<&str>,
    platform: &Platform,
) -> Result<ResolvedImage, ImageError> {
    let index = source.index()?;
    let top = pick_from_index(source, &index, want_ref, platform)?;
    let ref_name = top.ref_name().map(str::to_string);
    let mut desc = top.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        match desc.media_type.as_str() {
            media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => {
                let bytes = read_verified(source, &desc, &format!("index {}", desc.digest))?;
                let nested: Index = parse_json(&bytes, &format!("index {}", desc.digest))?;
                desc = pick_from_index(source, &nested, None, platform)?.clone();
            }
            media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => {
                return read_image(source, &desc, ref_name);
            }
            other => {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!("manifest {}", desc.digest),
                    media_type: other.to_string(),
                });
            }
        }
    }
    Err(ImageError::NoManifest(format!(
        "{}: indexes nest deeper than {MAX_INDEX_DEPTH} levels; refusing to follow them",
        source.describe()
    )))
}

fn pick_from_index<'a>(
    source: &dyn ImageSource,
    index: &'a Index,
    want_ref: Option<&str>,
    platform: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    let refs = || {
        let names: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.ref_name())
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let candidates: Vec<&Descriptor> = match want_ref {
        Some(r) => index
            .manifests
            .iter()
            .filter(|d| d.ref_name() == Some(r))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    match candidates.as_slice() {
        [] if want_ref.is_some() => Err(ImageError::NoManifest(format!(
            "{} has no image named '{}' (its refs: {})",
            source.describe(),
            want_ref.unwrap_or_default(),
            refs()
        ))),
        [] => Err(ImageError::NoManifest(format!(
            "{} holds no image",
            source.describe()
        ))),
        [one] => Ok(one),
        many => {
            let fitting: Vec<&&Descriptor> = many
                .iter()
                .filter(|d| d.platform.as_ref().is_some_and(|p| p.runs_on(platform)))
                .collect();
            match fitting.as_slice() {
                [one] => Ok(one),
                [] if many.iter().any(|d| d.platform.is_some()) => {
                    Err(ImageError::NoManifest(format!(
                        "{} has no image for this host's platform {}/{}",
                        source.describe(),
                        platform.os,
                        platform.architecture
                    )))
                }
                _ => Err(ImageError::NoManifest(format!(
                    "{} holds {} images: name one as oci:PATH:REF (its refs: {})",
                    source.describe(),
                    many.len(),
                    refs()
                ))),
            }
        }
    }
}

fn read_image(
    source: &dyn ImageSource,
    desc: &Descriptor,
    ref_name: Option<String>,
) -> Result<ResolvedImage, ImageError> {
    let what = format!("manifest {}", desc.digest);
    let manifest_bytes = read_verified(source, desc, &what)?;
    let manifest: Manifest = parse_json(&manifest_bytes, &what)?;
    if let Some(mt) = &manifest.media_type
        && mt != &desc.media_type
    {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("{what} (its descriptor says {})", desc.media_type),
            media_type: mt.clone(),
        });
    }
    let config_desc = &manifest.config;
    if !matches!(
        config_desc.media_type.as_str(),
        media_type::OCI_CONFIG | media_type::DOCKER_CONFIG
    ) {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("config {}", config_desc.digest),
            media_type: config_desc.media_type.clone(),
        });
    }
    for layer in &manifest.layers {
        if Compression::of_layer_media_type(&layer.media_type).is_none() {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("layer {}", layer.digest),
                media_type: layer.media_type.clone(),
            });
        }
    }
    let config_what = format!("config {}", config_desc.digest);
    let config_bytes = read_verified(source, config_desc, &config_what)?;
    let config: ImageConfig = parse_json(&config_bytes, &config_what)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::LayerCountMismatch {
            config: config_desc.digest.clone(),
            diff_ids: config.rootfs.diff_ids.len(),
            layers: manifest.layers.len(),
        });
    }
    Ok(ResolvedImage {
        manifest_digest: desc.digest.clone(),
        manifest_media_type: desc.media_type.clone(),
        manifest_bytes,
        manifest,
        config_bytes,
        config,
        ref_name,
    })
}

/// Reads a small blob whole and checks its size and digest against `desc`.
pub fn read_verified(
    source: &dyn ImageSource,
    desc: &Descriptor,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    if desc.size > DOCUMENT_LIMIT {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            size: desc.size,
            limit: DOCUMENT_LIMIT,
        });
    }
    let mut reader = HashingReader::new(source.open_blob(&desc.digest)?.take(desc.size + 1));
    let mut bytes = Vec::with_capacity(desc.size as usize);
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Read {
            what: what.to_string(),
            source: e,
        })?;
    let (actual, size) = reader.finish().map_err(|e| ImageError::Read {
        what: what.to_string(),
        source: e,
    })?;
    if size != desc.size {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            expected: desc.size,
            actual: size,
        });
    }
    if actual != desc.digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::BadJson {
        what: what.to_string(),
        source: e,
    })
}
