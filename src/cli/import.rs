//! `strata import SOURCE [NAME[:TAG]]`, and the import that `pull` also runs.

use std::io::IsTerminal;

use strata::image::reference::ImageName;
use strata::image::spec::Platform;
use strata::image::transport::SourceRef;
use strata::store::Store;
use strata::store::import::{ImportRequest, Quiet, import};

use super::progress::Bars;

/// Import an image into the store
#[derive(Debug, clap::Args)]
pub struct Args {
    /// oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG],
    /// docker://REF, or a path: an OCI layout, a docker or OCI archive, or a rootfs
    /// tarball (.tar, .tar.gz, .tar.zst)
    source: String,
    /// Name the image NAME[:TAG] (TAG defaults to latest)
    name: Option<String>,
    #[command(flatten)]
    options: ImportOptions,
}

/// What import and pull share.
#[derive(Debug, clap::Args)]
pub struct ImportOptions {
    /// Take this platform's image from a multi-platform index [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Verify a registry's TLS certificate; with false, a registry on this machine may
    /// also be reached over plain HTTP
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
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
    import_source(
        store,
        &args.source,
        name,
        &args.options,
        "imported",
        "unpacked",
    )
}

/// Imports `spec` and reports it: the ID on stdout, a summary on stderr that says
/// `did` (imported, pulled) and what happened to the layers it did not have (`got`).
pub fn import_source(
    store: &Store,
    spec: &str,
    name: Option<ImageName>,
    options: &ImportOptions,
    did: &str,
    got: &str,
) -> anyhow::Result<()> {
    let platform = options
        .platform
        .as_deref()
        .map(Platform::parse)
        .transpose()?;
    let opened = SourceRef::parse(spec)?.open(options.tls_verify)?;
    let bars = (!options.quiet && std::io::stderr().is_terminal()).then(Bars::new);
    let request = ImportRequest {
        source_ref: opened.reference.as_deref(),
        name,
        source_names: &opened.names,
        platform,
        progress: bars.as_ref().map_or(&Quiet as _, |b| b as _),
    };
    let outcome = import(store, opened.source.as_ref(), &request)?;
    drop(bars);
    if !options.quiet {
        let label = if outcome.names.is_empty() {
            "untagged".to_string()
        } else {
            outcome.names.join(", ")
        };
        eprintln!(
            "{did} {label}: layers {got} {}, already in the store {}",
            outcome.layers_unpacked, outcome.layers_reused
        );
    }
    println!("{}", outcome.id.hex());
    Ok(())
}
