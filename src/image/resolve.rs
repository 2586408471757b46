//! Choosing one image from a source and reading its manifest and config, verified.
//!
//! An OCI layout may hold several manifests (named by `ref.name` annotations) and
//! indexes of per-platform manifests. We pick by the ref the user gave, else the only
//! image, else the one for the host's platform, and refuse to guess beyond that.

use std::io::Read;

use super::digest::{HashingReader, verify};
use super::source::ImageSource;
use super::spec::{Compression, Descriptor, ImageConfig, Index, Manifest, Platform, media_type};
use super::{Digest, ImageError, parse_json};

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
                    let offered: Vec<String> = many
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    Err(ImageError::NoManifest(format!(
                        "{} has no image for {}/{} (it offers {}); choose one with --platform",
                        source.describe(),
                        platform.os,
                        platform.architecture,
                        offered.join(", ")
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
    verify(what, &desc.digest, desc.size, &actual, size)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::image::spec::ANNOTATION_REF_NAME;

    /// An in-memory source: an index and blobs by digest.
    struct Memory {
        index: Index,
        blobs: HashMap<Digest, Vec<u8>>,
    }

    impl Memory {
        fn new() -> Memory {
            let index = Index {
                schema_version: 2,
                media_type: None,
                manifests: vec![],
                annotations: Default::default(),
            };
            Memory {
                index,
                blobs: HashMap::new(),
            }
        }

        fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> Descriptor {
            let digest = Digest::of(&bytes);
            let desc = Descriptor {
                media_type: media_type.into(),
                digest: digest.clone(),
                size: bytes.len() as u64,
                annotations: Default::default(),
                platform: None,
            };
            self.blobs.insert(digest, bytes);
            desc
        }

        /// A one-layer image for `arch`; returns its manifest descriptor.
        fn image(&mut self, arch: &str) -> Descriptor {
            let layer = self.add(media_type::OCI_LAYER_TAR, vec![0; 1024]);
            let config = serde_json::json!({"architecture": arch, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [Digest::of(&[0; 1024]).to_string()]}});
            let config = self.add(media_type::OCI_CONFIG, serde_json::to_vec(&config).unwrap());
            let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                "config": config, "layers": [layer]});
            let mut desc = self.add(
                media_type::OCI_MANIFEST,
                serde_json::to_vec(&manifest).unwrap(),
            );
            desc.platform = Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            });
            desc
        }
    }

    impl ImageSource for Memory {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn index(&self) -> Result<Index, ImageError> {
            Ok(self.index.clone())
        }
        fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
            match self.blobs.get(digest) {
                Some(b) => Ok(Box::new(&b[..])),
                None => Err(ImageError::MissingBlob {
                    what: digest.to_string(),
                    source_name: "memory".into(),
                }),
            }
        }
    }

    fn host(arch: &str) -> Platform {
        Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
        }
    }

    fn arch_of(image: &ResolvedImage) -> &str {
        &image.config.architecture
    }

    #[test]
    fn picks_by_ref_then_platform() {
        let mut src = Memory::new();
        let mut a = src.image("amd64");
        a.annotations
            .insert(ANNOTATION_REF_NAME.into(), "one".into());
        let mut b = src.image("arm64");
        b.annotations
            .insert(ANNOTATION_REF_NAME.into(), "two".into());
        src.index.manifests = vec![a, b];
        assert_eq!(
            arch_of(&resolve(&src, Some("two"), &host("amd64")).unwrap()),
            "arm64"
        );
        assert_eq!(
            arch_of(&resolve(&src, None, &host("arm64")).unwrap()),
            "arm64"
        );
        let err = resolve(&src, Some("three"), &host("amd64"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no image named 'three'") && err.contains("one, two"),
            "{err}"
        );
    }

    #[test]
    fn descends_into_a_multi_platform_index() {
        let mut src = Memory::new();
        let a = src.image("amd64");
        let b = src.image("arm64");
        let nested = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [a, b]});
        let mut top = src.add(media_type::OCI_INDEX, serde_json::to_vec(&nested).unwrap());
        top.annotations
            .insert(ANNOTATION_REF_NAME.into(), "latest".into());
        src.index.manifests = vec![top];
        assert_eq!(
            arch_of(&resolve(&src, Some("latest"), &host("arm64")).unwrap()),
            "arm64"
        );
        assert_eq!(
            arch_of(&resolve(&src, None, &host("amd64")).unwrap()),
            "amd64"
        );
        let err = resolve(&src, None, &host("s390x")).unwrap_err().to_string();
        assert!(
            err.contains("no image for linux/s390x (it offers linux/amd64, linux/arm64)"),
            "{err}"
        );
    }

    #[test]
    fn refuses_to_guess_between_images() {
        let mut src = Memory::new();
        let mut a = src.image("amd64");
        let mut b = src.image("amd64");
        a.platform = None;
        b.platform = None;
        src.index.manifests = vec![a, b];
        let err = resolve(&src, None, &host("amd64")).unwrap_err().to_string();
        assert!(err.contains("holds 2 images"), "{err}");
    }

    #[test]
    fn verifies_documents() {
        let mut src = Memory::new();
        let mut a = src.image("amd64");
        a.size += 1;
        src.index.manifests = vec![a];
        assert!(matches!(
            resolve(&src, None, &host("amd64")),
            Err(ImageError::SizeMismatch { .. })
        ));
        let d = src.index.manifests[0].digest.clone();
        src.index.manifests[0].size -= 1;
        src.blobs.get_mut(&d).unwrap()[0] ^= 1;
        assert!(matches!(
            resolve(&src, None, &host("amd64")),
            Err(ImageError::DigestMismatch { .. })
        ));
    }
}
