//! `strata inspect IMAGE [--format all|manifest|config]`

use std::io::Write;

use strata::store::Store;
use strata::store::export::load;

/// Show an image: its record in the store with its manifest and config, as JSON
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: NAME[:TAG], an ID prefix, or @sha256:<digest>
    image: String,
    /// What to print: everything as one JSON object, or only the manifest or the
    /// config exactly as stored (so that its sha256 is its digest)
    #[arg(long, value_enum, default_value_t = Format::All)]
    format: Format,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    All,
    Manifest,
    Config,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let record = store.images().load()?.find(&args.image)?.clone();
    let image = load(store, &record)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Manifest => out.write_all(&image.manifest_bytes)?,
        Format::Config => out.write_all(&image.config_bytes)?,
        Format::All => {
            let all = serde_json::json!({
                "id": record.id.hex(),
                "names": record.names,
                "digest": record.manifest_digest,
                "manifest_media_type": record.manifest_media_type,
                "layers": record.layers,
                "size": record.size(),
                "created": record.created,
                "imported": record.imported,
                "manifest": serde_json::from_slice::<serde_json::Value>(&image.manifest_bytes)?,
                "config": serde_json::from_slice::<serde_json::Value>(&image.config_bytes)?,
            });
            serde_json::to_writer_pretty(&mut out, &all)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
