//! Where an image comes from. Each kind of source (an OCI layout directory now;
//! archives and registries later) answers the same two questions: which manifests it
//! holds, and the bytes of a blob. Verification is not the source's job: `resolve`
//! and the layer reader check every digest, whatever the source.

use std::io::Read;
use std::path::Path;

use super::spec::Index;
use super::{Digest, ImageError};

/// Opens a blob kept as a file of its own (a layout's, the store's): a missing file
/// is a missing blob of `source`.
pub fn open_blob_file(
    path: &Path,
    digest: &Digest,
    source: &dyn ImageSource,
) -> Result<Box<dyn Read + Send + 'static>, ImageError> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(Box::new(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ImageError::MissingBlob {
            what: format!("blob {digest}"),
            source_name: source.describe(),
        }),
        Err(e) => Err(ImageError::Read {
            what: path.display().to_string(),
            source: e,
        }),
    }
}

pub trait ImageSource: Sync {
    /// How to name this source in messages (its path or reference).
    fn describe(&self) -> String;

    /// The top-level index: the manifests this source offers, with their ref names.
    fn index(&self) -> Result<Index, ImageError>;

    /// A reader over one blob's bytes, as stored (still compressed for layers).
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError>;
}
