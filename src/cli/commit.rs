//! `strata commit [--change INSTRUCTION]... CONTAINER IMAGE[:TAG]`

use strata::image::reference::ImageName;
use strata::store::Store;

/// Make a new image of a stopped container: its writable layer on top of its image
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Change the image config, in Dockerfile syntax: CMD, ENTRYPOINT, ENV, WORKDIR
    /// or USER (e.g. --change 'CMD ["/bin/app"]')
    #[arg(short, long, value_name = "INSTRUCTION")]
    change: Vec<String>,
    /// The container: its name or an ID prefix
    container: String,
    /// The new image's name
    image: String,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let name: ImageName = args.image.parse()?;
    let record = store.find_container(&args.container)?;
    let id = strata::runtime::commit::commit(store, &record, &name, &args.change)?;
    eprintln!("committed {} as {name}", args.container);
    println!("{}", id.hex());
    Ok(())
}
