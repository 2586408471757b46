//! `strata tag IMAGE NAME[:TAG]`

use anyhow::Context as _;
use strata::image::reference::ImageName;
use strata::store::Store;

/// Give an image another name (taking it from the image that had it)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: NAME[:TAG], an ID prefix, or @sha256:<digest>
    image: String,
    /// The new name, NAME[:TAG] (TAG defaults to latest)
    name: String,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let name: ImageName = args.name.parse()?;
    let name = name.to_string();
    let _lock = store.lock_for_change()?;
    let id = store.images().load()?.find(&args.image)?.id.clone();
    let previous = store
        .images()
        .update(|db| db.tag(&id, &name))
        .context("saving the image list")?;
    if let Some(previous) = previous {
        eprintln!("moved {name} from image {}", previous.short());
    }
    Ok(())
}
