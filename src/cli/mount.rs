//! `strata mount IMAGE MOUNTPOINT [-f]` and `strata umount MOUNTPOINT`

use std::path::PathBuf;

use anyhow::Context as _;
use nix::sys::signal::{SigSet, Signal};
use strata::store::Store;
use strata::unionfs::mount::{Mounted, UpperDirs, image_fs, mount, unmount};

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

const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let image = store.images().load()?.find(&args.image)?.clone();
    let upper = args
        .upper
        .map(|dir| UpperDirs::new(dir, args.work, args.volatile));
    let fs = image_fs(store, &image, upper.as_ref())?;
    let mut mounted = mount(fs, &args.mountpoint)?;
    if !args.foreground {
        detach()?;
    }
    serve_until_stopped(&mut mounted)?;
    mounted.serve()?;
    Ok(())
}

pub fn run_umount(args: UmountArgs) -> anyhow::Result<()> {
    Ok(unmount(&args.mountpoint)?)
}

/// Leaves the mount to a child in its own session, and returns to the caller: the
/// mount already answers (INIT is done), so whoever ran us may use it at once.
fn detach() -> anyhow::Result<()> {
    // SAFETY: strata has started no thread yet (the serving threads start later, in
    // the child), so the child is a full copy of a single-threaded process.
    match unsafe { nix::unistd::fork() }.context("cannot fork the serving process")? {
        nix::unistd::ForkResult::Parent { .. } => {
            // Exit without running destructors: the mount belongs to the child now.
            std::process::exit(0)
        }
        nix::unistd::ForkResult::Child => {
            nix::unistd::setsid().context("setsid")?;
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            nix::unistd::dup2_stdin(&null)
                .and_then(|()| nix::unistd::dup2_stdout(&null))
                .and_then(|()| nix::unistd::dup2_stderr(&null))
                .context("redirecting standard streams to /dev/null")?;
            Ok(())
        }
    }
}

/// Unmounts on SIGINT, SIGTERM or SIGHUP. The signals are blocked before the serving
/// threads exist, so they all inherit the mask and only the waiting thread sees them.
fn serve_until_stopped(mounted: &mut Mounted) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in STOP_SIGNALS {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;
    let mountpoint = mounted.mountpoint().to_path_buf();
    std::thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || {
            if set.wait().is_ok() {
                let _ = unmount(&mountpoint);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
