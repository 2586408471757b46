//! `strata mount IMAGE MOUNTPOINT [-f]` and `strata umount MOUNTPOINT`

use std::path::PathBuf;

use strata::store::Store;
use strata::unionfs::mount::{UpperDirs, image_fs, mount, unmount};

/// Mount an image's layers with strata's union filesystem: read-only, or writable
/// with --upper
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Make the mount writable, keeping changes in this directory (created if
    /// missing); kernel overlayfs and fuse-overlayfs can read it as their upperdir
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// The work directory for --upper, on the same filesystem [default: UPPER.work]
    #[arg(long, value_name = "DIR", requires = "upper")]
    work: Option<PathBuf>,
    /// Do not fsync copy-ups (as kernel overlayfs's `volatile`): faster, but after a
    /// power cut a copied-up file may be empty
    #[arg(long, requires = "upper")]
    volatile: bool,
    /// The image: NAME[:TAG], an ID prefix, or @sha256:<digest>
    image: String,
    /// An existing directory to mount on
    mountpoint: PathBuf,
    /// Stay in the foreground and serve until unmounted or interrupted
    #[arg(short, long)]
    foreground: bool,
}

/// Unmount a strata mount
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    mountpoint: PathBuf,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let image = store.images().load()?.find(&args.image)?.clone();
    let upper = args
        .upper
        .map(|dir| UpperDirs::new(dir, args.work, args.volatile));
    let fs = image_fs(store, &image, upper.as_ref())?;
    let mounted = mount(fs, &args.mountpoint)?;
    Ok(mounted.serve_until_stopped(args.foreground)?)
}

pub fn run_umount(args: UmountArgs) -> anyhow::Result<()> {
    Ok(unmount(&args.mountpoint)?)
}
