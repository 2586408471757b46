//! `strata exec`: a command in a running container. strata joins the namespaces of
//! the container's pid 1 (user first: the caller owns that user namespace, so it
//! may join the others from inside it), forks into its pid namespace, and becomes
//! the container's user with its environment, working directory and capabilities,
//! as its first process did. No new mount: the root is the container's own.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::unistd::ForkResult;

use super::pty::{Attached, ConsoleSocket};
use super::spec::{ContainerSpec, RunOptions};
use super::supervise::{Supervisor, handled_signals};
use super::{EXIT_RUNTIME, RunError, process};
use crate::store::Store;
use crate::store::containers::{ContainerRecord, ContainerState};
use crate::store::export::load;

/// What `strata exec` may change of the container's own settings.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub interactive: bool,
    pub tty: bool,
}

/// The namespaces joined, user first.
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
];

pub fn exec(
    store: &Store,
    record: &ContainerRecord,
    options: &ExecOptions,
) -> Result<i32, RunError> {
    let name = record
        .name
        .clone()
        .unwrap_or_else(|| record.id[..12].to_string());
    let not_running = || RunError::NotRunning { name: name.clone() };
    if store.container_state(&record.id)? != ContainerState::Running {
        return Err(not_running());
    }
    let pid = std::fs::read_to_string(store.container_dir(&record.id).join("pid"))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .ok_or_else(not_running)?;
    let spec = exec_spec(store, record, options)?;
    // Opened before joining any: /proc/PID is the host's until then. Namespaces
    // the container shares with us (the host's network) are not joined: we are in
    // them, and could not join the host's from inside the container's user
    // namespace.
    let mut namespaces = Vec::new();
    for (ns, flag) in NAMESPACES {
        let theirs = File::open(format!("/proc/{pid}/ns/{ns}")).map_err(|_| not_running())?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{ns}")).ok();
        let same = ours.zip(theirs.metadata().ok()).is_some_and(|(a, b)| {
            use std::os::unix::fs::MetadataExt;
            (a.dev(), a.ino()) == (b.dev(), b.ino())
        });
        if !same {
            namespaces.push((OwnedFd::from(theirs), flag));
        }
    }
    let (child_console, console) = ConsoleSocket::pair_for(spec.tty)?;
    // Joining a user or mount namespace needs a single thread; creating a thread
    // after joining a pid namespace is refused. So: all but the pid namespace, then
    // the terminal's thread, then the pid namespace, then the fork into it.
    let (pid_ns, others): (Vec<_>, Vec<_>) = namespaces
        .into_iter()
        .partition(|(_, flag)| *flag == CloneFlags::CLONE_NEWPID);
    join(&others)?;
    handled_signals()
        .thread_block()
        .map_err(RunError::start("block signals"))?;
    let attached = Attached::new(console, spec.interactive)?;
    join(&pid_ns)?;
    // SAFETY: the only other thread (the terminal's) waits in recvmsg; the child
    // goes straight to exec, through allocations that glibc's fork makes safe.
    let child = match unsafe { nix::unistd::fork() }.map_err(RunError::start("fork"))? {
        ForkResult::Child => process::become_command(&spec, child_console.as_ref(), true),
        ForkResult::Parent { child } => child,
    };
    drop(child_console);
    let code = Supervisor {
        child,
        from_child: None,
        on_end: None,
        target: Some(child),
        stop_timeout: spec.stop_timeout,
        pty_master: attached.master(),
    }
    .wait()
    .unwrap_or(EXIT_RUNTIME);
    attached.finish();
    Ok(code)
}

fn join(namespaces: &[(OwnedFd, CloneFlags)]) -> Result<(), RunError> {
    for (fd, flag) in namespaces {
        nix::sched::setns(fd.as_fd(), *flag).map_err(|e| RunError::Start {
            op: "join the container's namespaces",
            source: e.into(),
        })?;
    }
    Ok(())
}

/// The container's spec, with the command and what the options override.
fn exec_spec(
    store: &Store,
    record: &ContainerRecord,
    options: &ExecOptions,
) -> Result<ContainerSpec, RunError> {
    let mut run: RunOptions =
        serde_json::from_value(record.options.clone()).map_err(|e| RunError::BadRecord {
            id: record.id.clone(),
            reason: e.to_string(),
        })?;
    if options.command.is_empty() {
        return Err(RunError::NoCommand);
    }
    run.command = options.command.clone();
    run.entrypoint = Some(String::new());
    run.env.extend(options.env.iter().cloned());
    run.workdir = options.workdir.clone().or(run.workdir);
    run.user = options.user.clone().or(run.user);
    run.interactive = options.interactive;
    run.tty = options.tty;
    run.init = false;
    let config = load(store, &record.image)?.config;
    let hostname = run
        .hostname
        .clone()
        .unwrap_or_else(|| record.id[..12].to_string());
    let mut spec = ContainerSpec::resolve(&config, &run, hostname, |k| std::env::var(k).ok())?;
    // Binds are the container's already.
    spec.binds.clear();
    if run.userns == super::UsernsMode::KeepId && run.user.is_none() {
        spec.user = format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid());
    }
    Ok(spec)
}
