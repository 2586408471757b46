//! `strata rm [-f] CONTAINER...`

use strata::store::Store;

/// Remove containers and their writable layers
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop a running container first (SIGKILL)
    #[arg(short, long)]
    force: bool,
    /// Names or ID prefixes
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    for wanted in &args.containers {
        let record = store.find_container(wanted)?;
        strata::runtime::remove::remove_container(store, &record, args.force)?;
        println!("{}", record.name.as_deref().unwrap_or(&record.id));
    }
    Ok(())
}
