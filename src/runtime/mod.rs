//! Running a container: an image's layers under strata's union filesystem, in user,
//! mount, pid, uts and ipc namespaces, with the command's output and exit code
//! coming back to the caller.
//!
//! The order of forks and unshares is DESIGN.md's ("Running a container"):
//! - `launch` (the caller's process) forks before any thread exists and stays
//!   outside: it writes the id maps, forwards signals and returns the exit code
//!   (`supervise`);
//! - the child unshares the user and mount namespaces, mounts the union filesystem
//!   by mount(2), unshares the pid namespace and forks the container's first
//!   process, and only then starts the threads that serve FUSE (`launch`);
//! - that process (`process`) makes its namespaces, its root (`rootfs`), its
//!   identity (`users`, `capabilities`) and execs the command, or strata's tiny
//!   init in front of it (`init`).
//!
//! What to run is decided before any of that, from the image config and the
//! options (`spec`), so every mistake of the caller is reported before a fork.

mod ahead;
pub mod capabilities;
pub mod commit;
pub mod container;
pub mod exec;
mod init;
pub mod launch;
mod process;
mod pty;
pub mod remove;
mod rootfs;
pub mod spec;
mod supervise;
mod sys;
pub mod userns;
pub mod users;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::store::StoreError;
use crate::unionfs::UnionError;

pub use launch::run;
pub use spec::{Network, RunOptions};
pub use userns::UsernsMode;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    Union(#[from] UnionError),

    #[error(
        "no command to run: the image has neither Entrypoint nor Cmd; give one after the image name"
    )]
    NoCommand,

    #[error("bad option {option}: {reason}")]
    BadOption { option: String, reason: String },

    #[error("bind source {path} does not exist: create it, or fix the -v option")]
    BindSourceMissing { path: PathBuf },

    #[error("cannot read the env file {path}: {source}")]
    EnvFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{0}")]
    UserNamespace(String),

    #[error("cannot prepare the container directory {path}: {source}")]
    ContainerDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("container {name} is running: stop it first (or `strata rm -f` it)")]
    Running { name: String },

    #[error("container {name} is not running: `strata start {name}` runs it again")]
    NotRunning { name: String },

    #[error("the record of container {id} cannot be read ({reason}): remove it with `strata rm`")]
    BadRecord { id: String, reason: String },

    #[error("cannot commit: {reason}")]
    Commit { reason: String },

    #[error(transparent)]
    Image(#[from] crate::image::ImageError),

    #[error("cannot start the container: {op}: {source}")]
    Start {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl RunError {
    pub(crate) fn start(op: &'static str) -> impl FnOnce(nix::errno::Errno) -> RunError {
        move |e| RunError::Start {
            op,
            source: e.into(),
        }
    }
}

/// Exit codes of `strata run` for strata's own failures, as podman's: the
/// container's own code is passed through otherwise.
pub const EXIT_RUNTIME: i32 = 125;
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// The shell's convention for a status: the exit code, or 128 + the signal that
/// killed it; None for a stop or continue.
pub fn exit_code_of(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}
