//! `strata rmi [-f] IMAGE...`

use strata::store::Store;
use strata::store::gc::{Collected, Removal, remove_image};

use super::images::human_size;

/// Remove images, and the layers and blobs no other image uses
///
/// Naming one of several names of an image only removes that name.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images: NAME[:TAG], an ID prefix, or @sha256:<digest>
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove an image even while a mount or container uses it: its record goes now,
    /// the layers in use stay until `strata gc` finds them free
    #[arg(short, long)]
    force: bool,
}

/// Every image is tried; the first failure is the one returned (the others are
/// printed as they happen), so one bad name does not stop the rest.
pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let mut first_error = None;
    for wanted in &args.images {
        match remove_image(store, wanted, args.force) {
            Ok(Removal::Untagged { name, .. }) => println!("untagged: {name}"),
            Ok(Removal::Removed {
                id,
                names,
                collected,
            }) => {
                for name in names {
                    println!("untagged: {name}");
                }
                println!("deleted: {}", id.hex());
                report_kept(&collected);
            }
            Err(e) if first_error.is_none() => first_error = Some(e),
            Err(e) => eprintln!("strata: error: {e}"),
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// What a removal had to leave behind, and why; and what it freed.
pub fn report_kept(collected: &Collected) {
    for layer in &collected.layers_in_use {
        eprintln!(
            "kept layer {}: in use by a mount, container or import; `strata gc` removes it once it is free",
            layer.short()
        );
    }
    if collected.blobs_kept > 0 {
        eprintln!(
            "kept {} blobs: another strata command is at work on the store; run `strata gc` after it",
            collected.blobs_kept
        );
    }
    if collected.bytes > 0 {
        eprintln!(
            "freed {} ({} layers, {} blobs, {} views)",
            human_size(collected.bytes),
            collected.layers,
            collected.blobs,
            collected.views
        );
    }
}
