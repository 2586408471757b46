//! `strata pull REF`: import from a registry, named as the reference says.

use strata::store::Store;

use super::import::{ImportOptions, import_source};

/// Pull an image from a registry into the store
#[derive(Debug, clap::Args)]
pub struct Args {
    /// NAME[:TAG], NAME@sha256:..., or HOST[:PORT]/ORG/NAME[:TAG]; a bare NAME is
    /// Docker Hub's docker.io/library/NAME, and TAG defaults to latest
    reference: String,
    #[command(flatten)]
    options: ImportOptions,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let reference = args
        .reference
        .strip_prefix("docker://")
        .unwrap_or(&args.reference);
    import_source(
        store,
        &format!("docker://{reference}"),
        None,
        &args.options,
        "pulled",
        "downloaded",
    )
}
