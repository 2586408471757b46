//! One file per subcommand; this one holds the shared flags and the exit codes.

mod commit;
mod exec;
mod gc;
mod images;
mod import;
mod inspect;
mod login;
mod mount;
mod progress;
mod ps;
mod pull;
mod push;
mod rm;
mod rmi;
mod run;
mod save;
mod start;
mod tag;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strata::image::ImageError;
use strata::store::{Store, StoreError};
use strata::unionfs::UnionError;

/// Exit codes of every command but run (which passes the container's on), as
/// podman has them.
pub const EXIT_OK: i32 = 0;
pub const EXIT_USER: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INTERNAL: i32 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Rootless containers on strata's own FUSE union filesystem"
)]
struct Cli {
    /// The store directory [default: ${XDG_DATA_HOME:-~/.local/share}/strata]
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Import(import::Args),
    Pull(pull::Args),
    Push(push::Args),
    Login(login::Args),
    Logout(login::LogoutArgs),
    Images(images::Args),
    Inspect(inspect::Args),
    Tag(tag::Args),
    Rmi(rmi::Args),
    Gc(gc::Args),
    Save(save::Args),
    Run(run::Args),
    Start(start::Args),
    Ps(ps::Args),
    Rm(rm::Args),
    Commit(commit::Args),
    Exec(exec::Args),
    Mount(mount::Args),
    Umount(mount::UmountArgs),
}

pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let result = match cli.command {
        // The container's exit code comes back, not one of ours.
        Command::Run(args) => return run_container(cli.root, |s| run::run(s, args)),
        Command::Start(args) => return run_container(cli.root, |s| start::run(s, args)),
        Command::Exec(args) => return run_container(cli.root, |s| exec::run(s, args)),
        Command::Ps(args) => open_store(cli.root).and_then(|store| ps::run(&store, args)),
        Command::Rm(args) => open_store(cli.root).and_then(|store| rm::run(&store, args)),
        Command::Commit(args) => open_store(cli.root).and_then(|store| commit::run(&store, args)),
        Command::Import(args) => open_store(cli.root).and_then(|store| import::run(&store, args)),
        Command::Pull(args) => open_store(cli.root).and_then(|store| pull::run(&store, args)),
        Command::Push(args) => open_store(cli.root).and_then(|store| push::run(&store, args)),
        Command::Login(args) => login::run(args),
        Command::Logout(args) => login::run_logout(args),
        Command::Images(args) => open_store(cli.root).and_then(|store| images::run(&store, args)),
        Command::Inspect(args) => open_store(cli.root).and_then(|store| inspect::run(&store, args)),
        Command::Tag(args) => open_store(cli.root).and_then(|store| tag::run(&store, args)),
        Command::Rmi(args) => open_store(cli.root).and_then(|store| rmi::run(&store, args)),
        Command::Gc(args) => open_store(cli.root).and_then(|store| gc::run(&store, args)),
        Command::Save(args) => open_store(cli.root).and_then(|store| save::run(&store, args)),
        Command::Mount(args) => open_store(cli.root).and_then(|store| mount::run(&store, args)),
        Command::Umount(args) => mount::run_umount(args),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(err) => {
            eprintln!("strata: error: {}", describe(&err));
            exit_code(&err)
        }
    }
}

/// `strata run` and `start`: the container's own exit code, or 125 for a failure of
/// strata's.
fn run_container(
    root: Option<PathBuf>,
    command: impl FnOnce(&Store) -> anyhow::Result<i32>,
) -> i32 {
    match open_store(root).and_then(|store| command(&store)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("strata: error: {}", describe(&err));
            strata::runtime::EXIT_RUNTIME
        }
    }
}

fn open_store(root: Option<PathBuf>) -> anyhow::Result<Store> {
    let root = match root {
        Some(r) => r,
        None => Store::default_root()
            .context("cannot find a store: set HOME, XDG_DATA_HOME, STRATA_ROOT or --root")?,
    };
    Ok(Store::open(&root)?)
}

/// Our own errors already carry their causes in their message; anyhow's context
/// layers need the chain spelled out.
fn describe(err: &anyhow::Error) -> String {
    if err.downcast_ref::<StoreError>().is_some()
        || err.downcast_ref::<ImageError>().is_some()
        || err.downcast_ref::<UnionError>().is_some()
        || err.downcast_ref::<strata::runtime::RunError>().is_some()
    {
        return err.to_string();
    }
    format!("{err:#}")
}

fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return if e.is_user_error() {
                EXIT_USER
            } else {
                EXIT_INTERNAL
            };
        }
        if let Some(e) = cause.downcast_ref::<UnionError>() {
            return if e.is_user_error() {
                EXIT_USER
            } else {
                EXIT_INTERNAL
            };
        }
        if cause.downcast_ref::<ImageError>().is_some() {
            return EXIT_USER;
        }
    }
    EXIT_USER
}
