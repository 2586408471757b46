//! `strata pull [--platform OS/ARCH] [--tls-verify=BOOL] REF`

use std::io::IsTerminal;

use anyhow::bail;
use strata::image::registry::{ClientOptions, Reference, RegistrySource};
use strata::image::spec::Platform;
use strata::store::Store;
use strata::store::import::{ImportRequest, Quiet, import};

use super::progress::Bars;

/// Pull an image from a registry into the store, named as the reference
#[derive(Debug, clap::Args)]
pub struct Args {
    /// NAME[:TAG], NAME@sha256:..., or HOST[:PORT]/ORG/NAME[:TAG]; a bare NAME is
    /// Docker Hub's docker.io/library/NAME, and TAG defaults to latest
    reference: String,
    /// Take this platform's image from a multi-platform index [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Verify the registry's TLS certificate; with false, a registry on this machine
    /// may also be reached over plain HTTP
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// No progress bars
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let text = args
        .reference
        .strip_prefix("docker://")
        .unwrap_or(&args.reference);
    let reference = Reference::parse(text)?;
    let platform = args.platform.as_deref().map(parse_platform).transpose()?;
    let options = ClientOptions {
        tls_verify: args.tls_verify,
        credentials: None,
    };
    let source = RegistrySource::open(&reference, options, platform.as_ref())?;
    let bars = (!args.quiet && std::io::stderr().is_terminal()).then(Bars::new);
    let request = ImportRequest {
        source_ref: None,
        name: reference.image_name(),
        source_names: &[],
        progress: bars.as_ref().map_or(&Quiet as _, |b| b as _),
    };
    let outcome = import(store, &source, &request)?;
    drop(bars);
    if !args.quiet {
        eprintln!(
            "pulled {reference}: layers downloaded {}, already in the store {}",
            outcome.layers_unpacked, outcome.layers_reused
        );
    }
    println!("{}", outcome.id.hex());
    Ok(())
}

/// "linux/arm64/v8" -> Platform, in the spec's (Go's) names, as podman takes it.
fn parse_platform(s: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        }),
        _ => bail!("--platform '{s}' is not OS/ARCH[/VARIANT] (for example linux/arm64)"),
    }
}
