//! `strata start [-a] NAME`

use strata::store::Store;

/// Run a kept container again, on its writable layer, with the command and options
/// it was made with; attached, and exits with its code
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attached to the terminal (the default and, for now, the only way)
    #[arg(short, long)]
    attach: bool,
    /// The container: its name or an ID prefix
    container: String,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<i32> {
    let record = store.find_container(&args.container)?;
    Ok(strata::runtime::launch::start(store, &record)?)
}
