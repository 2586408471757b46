//! Where an image comes from. Each kind of source (an OCI layout directory now;
//! archives and registries later) answers the same two questions: which manifests it
//! holds, and the bytes of a blob. Verification is not the source's job: `resolve`
//! and the layer reader check every digest, whatever the source.

use std::io::Read;

use super::spec::Index;
use super::{Digest, ImageError};

pub trait ImageSource: Sync {
    /// How to name this source in messages (its path or reference).
    fn describe(&self) -> String;

    /// The top-level index: the manifests this source offers, with their ref names.
    fn index(&self) -> Result<Index, ImageError>;

    /// A reader over one blob's bytes, as stored (still compressed for layers).
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError>;
}
