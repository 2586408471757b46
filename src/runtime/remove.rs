//! `strata rm`: a container's directory and lock go; a running one is killed first
//! when asked. What the container wrote under other ids of the subordinate range
//! can only be removed from inside a user namespace that maps them, so that is
//! where the removal runs when a plain one is refused.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::RunError;
use super::container::remove;
use super::userns::{self, UsernsMode};
use crate::store::Store;
use crate::store::containers::{ContainerRecord, ContainerState};
use crate::store::lock::FileLock;

pub fn remove_container(
    store: &Store,
    record: &ContainerRecord,
    force: bool,
) -> Result<(), RunError> {
    let name = record.name.clone().unwrap_or_else(|| record.id.clone());
    if store.container_state(&record.id)? == ContainerState::Running {
        if !force {
            return Err(RunError::Running { name });
        }
        stop(store, record)?;
    }
    let lock_file = store.container_lock_path(&record.id);
    let fail = |source| RunError::ContainerDir {
        path: lock_file.clone(),
        source,
    };
    // Held while removing: a `start` of the same container waits for nothing and
    // finds it gone, or runs and keeps it.
    let _lock = FileLock::try_exclusive(&lock_file)
        .map_err(fail)?
        .ok_or(RunError::Running { name })?;
    let dir = store.container_dir(&record.id);
    if let Err(e) = remove(&dir) {
        if !matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) {
            return Err(RunError::ContainerDir {
                path: dir,
                source: e,
            });
        }
        remove_in_user_namespace(&dir)?;
    }
    let _ = std::fs::remove_file(&lock_file);
    Ok(())
}

/// SIGKILL to the container's pid 1 (its whole pid namespace goes), then waits for
/// the strata serving it to let go.
fn stop(store: &Store, record: &ContainerRecord) -> Result<(), RunError> {
    let pid_file = store.container_dir(&record.id).join("pid");
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if store.container_state(&record.id)? != ContainerState::Running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(RunError::Running {
        name: record.name.clone().unwrap_or_else(|| record.id.clone()),
    })
}

/// Removes `dir` from inside a new user namespace that maps the caller's
/// subordinate ids, where what the container's other ids made can be removed.
/// Forks: the caller must have started no thread.
pub fn remove_in_user_namespace(dir: &std::path::Path) -> Result<(), RunError> {
    let plan = userns::plan_for_caller(UsernsMode::Auto);
    // SAFETY: `strata rm` has started no thread.
    let child = unsafe {
        userns::spawn_in_user_namespace(&plan, nix::sched::CloneFlags::empty(), || {
            match remove(dir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("strata: error: cannot remove {}: {e}", dir.display());
                    1
                }
            }
        })
    }?;
    match nix::sys::wait::waitpid(child, None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
        _ => Err(RunError::ContainerDir {
            path: dir.to_path_buf(),
            source: std::io::Error::other("could not be removed, even inside a user namespace"),
        }),
    }
}
