//! `strata push [--tls-verify=BOOL] [-q] IMAGE [[docker://]REF]`

use anyhow::{anyhow, bail};
use strata::image::Digest;
use strata::image::registry::push::{BlobAction, PushProgress, Silent, push};
use strata::image::registry::{ClientOptions, Reference};
use strata::store::export::with_image;
use strata::store::images::ImageDb;
use strata::store::{ImageRecord, Store, StoreError};

/// Push an image of the store to a registry: the blobs it lacks, then the manifest
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: NAME[:TAG], an ID prefix, or @sha256:<digest>
    image: String,
    /// Where to: [docker://]HOST[:PORT]/ORG/NAME[:TAG], read as `strata pull` reads
    /// it [default: the image's own name, when that names a registry]
    reference: Option<String>,
    /// Verify the registry's TLS certificate (see `strata pull`)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// No progress lines
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let result = with_image(store, &args.image, |record, image, source| {
        let reference = destination(&args, record)?;
        let options = ClientOptions {
            tls_verify: args.tls_verify,
            credentials: None,
        };
        let progress: &dyn PushProgress = if args.quiet { &Silent } else { &Lines };
        let mount_from = mount_candidates(record, &reference);
        let outcome = push(source, image, &reference, &mount_from, options, progress)?;
        Ok::<_, anyhow::Error>((reference, outcome))
    });
    let (reference, outcome) = result.map_err(|e| explain_missing_blob(e, &args.image))?;
    if !args.quiet {
        eprintln!(
            "pushed {reference}: blobs uploaded {}, mounted {}, already there {}",
            outcome.blobs_uploaded, outcome.blobs_mounted, outcome.blobs_present
        );
    }
    println!("{}", outcome.manifest_digest);
    Ok(())
}

/// The reference given, else the image's own name if that names a registry.
fn destination(args: &Args, record: &ImageRecord) -> anyhow::Result<Reference> {
    if let Some(text) = &args.reference {
        return Ok(Reference::parse(
            text.strip_prefix("docker://").unwrap_or(text),
        )?);
    }
    let own = ImageDb::name_asked(&args.image, record).or_else(|| record.names.first().cloned());
    match own {
        // A bare local name would silently mean Docker Hub: ask instead.
        Some(name) if names_registry(&name) => Ok(Reference::parse(&name)?),
        Some(name) => bail!(
            "'{name}' names no registry: give the destination, e.g. strata push {} HOST[:PORT]/ORG/NAME[:TAG]",
            args.image
        ),
        None => bail!(
            "the image has no name: give the destination, e.g. strata push {} HOST[:PORT]/ORG/NAME[:TAG]",
            args.image
        ),
    }
}

/// The other repositories of the destination's registry that the image is named
/// after: it was pulled from or pushed to them, so they likely hold its blobs.
fn mount_candidates(record: &ImageRecord, reference: &Reference) -> Vec<String> {
    let mut repos: Vec<String> = record
        .names
        .iter()
        .filter(|n| names_registry(n))
        .filter_map(|n| Reference::parse(n).ok())
        .filter(|r| r.registry == reference.registry && r.repository != reference.repository)
        .map(|r| r.repository)
        .collect();
    repos.sort();
    repos.dedup();
    repos
}

/// Whether a name starts with a registry host (`host.domain/`, `host:port/`,
/// `localhost/`), as docker tells a host from an organisation.
fn names_registry(name: &str) -> bool {
    name.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// Stores written before strata kept compressed layer blobs hold only the unpacked
/// layers, from which the pushed bytes (and so the digests) cannot be remade.
fn explain_missing_blob(err: anyhow::Error, image: &str) -> anyhow::Error {
    match err.downcast_ref::<StoreError>() {
        Some(StoreError::MissingBlob(digest)) => anyhow!(
            "cannot push {image}: its blob {digest} is not in the store (a store from before strata kept layer blobs has only the unpacked layers, which cannot be pushed as they were); remove the image and import or pull it again, then push"
        ),
        _ => err,
    }
}

/// One line per blob on standard error.
struct Lines;

impl PushProgress for Lines {
    fn blob(&self, digest: &Digest, size: u64, action: BlobAction) {
        let short = &digest.hex()[..12];
        match action {
            BlobAction::Uploaded => eprintln!("copied blob {short} ({size} bytes)"),
            BlobAction::Mounted => eprintln!("mounted blob {short} from another repository"),
            BlobAction::Present => eprintln!("blob {short} is already there"),
        }
    }
}
