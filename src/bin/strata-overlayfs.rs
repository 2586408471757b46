//! strata-overlayfs: strata's union filesystem over plain directories, with the
//! command line of fuse-overlayfs, so that whatever drives fuse-overlayfs (rootless
//! podman and buildah, scripts, `mount -t fuse.strata-overlayfs` through mount.fuse3)
//! can use strata's instead, with nothing changed but the program's name.
//!
//!   strata-overlayfs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT
//!   strata-overlayfs SOURCE MOUNTPOINT -o OPTIONS      (as mount.fuse3 calls it)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use strata::unionfs::UnionError;
use strata::unionfs::mount::{UpperDirs, dirs_fs, mount};
use strata::unionfs::options;

/// Mount the union of plain directories with strata's FUSE filesystem (a drop-in
/// for fuse-overlayfs)
#[derive(Debug, Parser)]
#[command(name = "strata-overlayfs", version)]
struct Args {
    /// Options: lowerdir=TOP:...:BOTTOM (required), upperdir=DIR and workdir=DIR
    /// (writable), fsync=0 or volatile, ro, squash_to_root, squash_to_uid=N,
    /// squash_to_gid=N, static_nlink, noxattrs=1,
    /// uidmapping=SHOWN:STORED:COUNT[:...], gidmapping=..., xattr_permissions=0|1|2
    /// (owners and modes in the upper's xattrs, as fuse-overlayfs keeps them: 1 in
    /// security.fuseoverlayfs.override_stat, 2 in user.fuseoverlayfs.override_stat);
    /// fuse-overlayfs's tuning options
    /// and the generic mount options are accepted and ignored
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// Say which options were ignored, and stay in the foreground
    #[arg(short = 'd')]
    debug: bool,
    /// [SOURCE] MOUNTPOINT: the source (as mount.fuse3 passes it) is ignored
    #[arg(num_args = 1..=2, required = true, value_name = "MOUNTPOINT")]
    paths: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-overlayfs: error: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, each once: a UnionError's message already ends with
/// its cause's.
fn describe(e: &anyhow::Error) -> String {
    if e.downcast_ref::<UnionError>().is_some() {
        e.to_string()
    } else {
        format!("{e:#}")
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let opts = options::parse(&args.options)?;
    if args.debug {
        for ignored in &opts.ignored {
            eprintln!("strata-overlayfs: ignoring option {ignored}");
        }
    }
    let mountpoint = args.paths.last().expect("clap requires one path").clone();
    let upper = match (&opts.upperdir, opts.read_only) {
        (Some(dir), false) => Some(UpperDirs::new(
            dir.clone(),
            opts.workdir.clone(),
            opts.volatile,
        )),
        _ => None,
    };
    let fs = dirs_fs(&opts.lowerdirs, upper.as_ref(), opts.override_xattr)?
        .with_presentation(opts.shown.clone());
    let mounted = mount(fs, &mountpoint)?;
    Ok(mounted.serve_until_stopped(args.foreground || args.debug)?)
}
