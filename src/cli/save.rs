//! `strata save IMAGE DEST`

use strata::store::Store;
use strata::store::export::{Destination, save};

/// Write an image out for other tools: an OCI layout, an OCI archive or a docker archive
///
/// DEST is oci:DIR[:REF] (a new or empty directory, or an existing layout the image
/// is added to), oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG]. REF
/// defaults to the tag the image was named by, else its first tag, else latest. The
/// OCI forms keep every blob byte for byte; docker-archive has uncompressed layers,
/// as `docker save` writes them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: NAME[:TAG], an ID prefix, or @sha256:<digest>
    image: String,
    /// oci:DIR[:REF], oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG]
    dest: String,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let dest = Destination::parse(&args.dest)?;
    save(store, &args.image, &dest)?;
    Ok(())
}
