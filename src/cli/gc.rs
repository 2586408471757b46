//! `strata gc`

use strata::store::Store;
use strata::store::gc::collect_garbage;

use super::images::human_size;

/// Remove the layers, blobs and views that no image uses (layers in use stay)
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(store: &Store, _args: Args) -> anyhow::Result<()> {
    let collected = collect_garbage(store)?;
    super::rmi::report_kept(&collected);
    println!(
        "removed {} layers, {} blobs, {} views: {} freed ({} bytes)",
        collected.layers,
        collected.blobs,
        collected.views,
        human_size(collected.bytes),
        collected.bytes
    );
    Ok(())
}
