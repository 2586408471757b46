//! OCI and Docker image formats: digests, manifests, configs, image sources and layer
//! tars. Nothing here touches the store or mounts anything: it reads, parses and
//! verifies, and hands sanitised layer entries to whoever unpacks them.

pub mod archive;
pub mod digest;
pub mod layer;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod source;
pub mod spec;
pub mod tarball;
pub mod transport;
pub mod writer;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use digest::Digest;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("'{0}' is not a sha256 digest: expected sha256:<64 lowercase hex digits>")]
    BadDigest(String),

    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("{what} is missing from {source_name}: the image is incomplete; export it again")]
    MissingBlob { what: String, source_name: String },

    #[error(
        "{what}: digest mismatch: the descriptor says {expected}, the content is {actual}; the image is corrupt or was altered"
    )]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    #[error(
        "{what}: size mismatch: the descriptor says {expected} bytes, the content has {actual}; the image is corrupt or truncated"
    )]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "layer {layer}: diff_id mismatch: the config says {expected}, the uncompressed layer is {actual}; the image is corrupt or was altered"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },

    #[error("{what} is not valid JSON of the expected form: {source}")]
    BadJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{what} has unsupported media type '{media_type}'")]
    UnsupportedMediaType { what: String, media_type: String },

    #[error("{what} is too large ({size} bytes, limit {limit}): refusing to read it into memory")]
    TooLarge { what: String, size: u64, limit: u64 },

    #[error("{0}")]
    NoManifest(String),

    #[error("'{path}' is not an OCI image layout: {reason}")]
    BadLayout { path: PathBuf, reason: String },

    #[error(
        "'{0}:' sources are not supported yet; export the image with skopeo (skopeo copy ... oci-archive:FILE) and import that"
    )]
    UnsupportedTransport(String),

    #[error("platform '{0}' is not OS/ARCH[/VARIANT] (for example linux/arm64)")]
    BadPlatform(String),

    #[error("'{path}' is not a usable image archive: {reason}")]
    BadArchive { path: PathBuf, reason: String },

    #[error(
        "image config {config} lists {diff_ids} diff_ids but the manifest has {layers} layers; the image is malformed"
    )]
    LayerCountMismatch {
        config: Digest,
        diff_ids: usize,
        layers: usize,
    },

    #[error(
        "layer {layer}: entry '{path}' refused: {reason}; the layer is unsafe to unpack, so nothing was imported"
    )]
    HostileEntry {
        layer: Digest,
        path: String,
        reason: String,
    },

    #[error("layer {layer} is corrupt or truncated ({source}); export or download the image again")]
    CorruptLayer {
        layer: Digest,
        #[source]
        source: io::Error,
    },

    #[error("'{name}' is not a valid image name: {reason}")]
    BadName { name: String, reason: String },

    #[error(transparent)]
    Registry(#[from] registry::RegistryError),

    #[error("cannot write {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Parses a JSON document of the image formats; `what` names it in the error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::BadJson {
        what: what.to_string(),
        source: e,
    })
}
