//! `strata import SOURCE [NAME[:TAG]]`

use std::io::IsTerminal;

use strata::image::reference::ImageName;
use strata::image::transport::SourceRef;
use strata::store::Store;
use strata::store::import::{ImportRequest, Quiet, import};

use super::progress::Bars;

/// Import an image into the store
#[derive(Debug, clap::Args)]
pub struct Args {
    /// oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG], or a path:
    /// an OCI layout, a docker or OCI archive, or a rootfs tarball (.tar, .tar.gz, .tar.zst)
    source: String,
    /// Name the image NAME[:TAG] (TAG defaults to latest)
    name: Option<String>,
    /// No progress bars
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let name = args
        .name
        .as_deref()
        .map(str::parse::<ImageName>)
        .transpose()?;
    let opened = SourceRef::parse(&args.source)?.open()?;
    let bars = (!args.quiet && std::io::stderr().is_terminal()).then(Bars::new);
    let request = ImportRequest {
        source_ref: opened.reference.as_deref(),
        name,
        source_names: &opened.names,
        progress: bars.as_ref().map_or(&Quiet as _, |b| b as _),
    };
    let outcome = import(store, opened.source.as_ref(), &request)?;
    drop(bars);
    if !args.quiet {
        let label = if outcome.names.is_empty() {
            "untagged".to_string()
        } else {
            outcome.names.join(", ")
        };
        eprintln!(
            "imported {label}: layers unpacked {}, already in the store {}",
            outcome.layers_unpacked, outcome.layers_reused
        );
    }
    println!("{}", outcome.id.hex());
    Ok(())
}
