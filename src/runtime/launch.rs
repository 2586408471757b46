//! `run`: from an image and options to the container's exit code. This file holds
//! the two processes of strata itself: the caller's (which stays outside, writes the
//! id maps and supervises) and the child that serves the union filesystem inside
//! the new user and mount namespaces.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};

use super::container::{self, ContainerDir};
use super::process::{self, KeepIdUser, ProcessPlan};
use super::pty::{ConsoleSocket, RawMode, Terminal};
use super::spec::{ContainerSpec, Network, RunOptions};
use super::supervise::{Supervisor, handled_signals};
use super::sys::fork_into_new_pid_namespace;
use super::userns::{self, MappingPlan, UsernsMode};
use super::{EXIT_RUNTIME, RunError, exit_code_of};
use crate::store::export::load;
use crate::store::{ImageRecord, Store};
use crate::unionfs::mount::{UpperDirs, image_fs, mount};

/// Everything decided before the fork.
struct Prepared {
    spec: ContainerSpec,
    mapping: MappingPlan,
    container: ContainerDir,
    files: Vec<(PathBuf, &'static str)>,
    upper: Option<UpperDirs>,
    keep_id: Option<KeepIdUser>,
}

/// Runs `image` as `options` say and returns the container's exit code (or 128+N
/// when signal N ended it). Errors are strata's own, found before the container
/// started; failures after that are reported by the container's processes and come
/// back as 125, 126 or 127.
pub fn run(store: &Store, image: &ImageRecord, options: &RunOptions) -> Result<i32, RunError> {
    // Hold the image from here on, so rmi cannot take it between our look and the
    // child's mount (which holds it again, for as long as it serves).
    let diff_ids: Vec<_> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    let _held = (store.hold_image(&image.id)?, store.hold_layers(&diff_ids)?);
    let container = ContainerDir::create(store)?;
    let (spec, mapping, files, keep_id) = match prepare(store, image, options, &container) {
        Ok(parts) => parts,
        Err(e) => {
            container.remove();
            return Err(e);
        }
    };
    let upper = (!options.read_only).then(|| UpperDirs {
        upper: container.upper(),
        work: container.work(),
        volatile: options.volatile,
    });
    let prepared = Prepared {
        spec,
        mapping,
        container,
        files,
        upper,
        keep_id,
    };
    if let Some(notice) = &prepared.mapping.notice {
        eprintln!("strata: notice: {notice}");
    }
    let console = match prepared.spec.tty {
        true => Some(ConsoleSocket::new().map_err(RunError::start("open a socket pair"))?),
        false => None,
    };
    let (from_child_r, from_child_w) = pipe()?;
    let (to_child_r, to_child_w) = pipe()?;
    handled_signals()
        .thread_block()
        .map_err(RunError::start("block signals"))?;
    let parent = nix::unistd::getpid();
    // SAFETY: no thread exists yet in this process (the terminal's start after the
    // fork, in the parent), so the child is a complete single-threaded copy.
    match unsafe { nix::unistd::fork() }.map_err(RunError::start("fork"))? {
        ForkResult::Child => {
            drop((from_child_r, to_child_w));
            let console = console.map(|c| c.child);
            let code = serve_container(
                store,
                image,
                &prepared,
                parent,
                from_child_w,
                to_child_r,
                console,
            );
            // SAFETY: leave without running the parent's destructors (its locks and
            // directories are the parent's to release).
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop((from_child_w, to_child_r));
            let console = console.map(|c| c.parent);
            let code = supervise(child, &prepared, from_child_r, to_child_w, console);
            // The child removes the container directory from inside the user
            // namespace; this catches a child that died before it could.
            prepared.container.remove();
            code
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RunError::start("pipe"))
}

type PreparedParts = (
    ContainerSpec,
    MappingPlan,
    Vec<(PathBuf, &'static str)>,
    Option<KeepIdUser>,
);

fn prepare(
    store: &Store,
    image: &ImageRecord,
    options: &RunOptions,
    container: &ContainerDir,
) -> Result<PreparedParts, RunError> {
    let resolved = load(store, image)?;
    let hostname = options
        .hostname
        .clone()
        .unwrap_or_else(|| container.id[..12].to_string());
    let mut spec = ContainerSpec::resolve(&resolved.config, options, hostname, |k| {
        std::env::var(k).ok()
    })?;
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let me = nix::unistd::User::from_uid(uid).ok().flatten();
    let name = me
        .as_ref()
        .map_or_else(|| uid.to_string(), |u| u.name.clone());
    let mapping = userns::plan(options.userns, uid.as_raw(), gid.as_raw(), &name);
    let keep_id = (options.userns == UsernsMode::KeepId).then(|| KeepIdUser {
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        name: name.clone(),
        home: me
            .as_ref()
            .map_or_else(|| "/".into(), |u| u.dir.to_string_lossy().into_owned()),
    });
    if keep_id.is_some() && options.user.is_none() {
        spec.user = format!("{uid}:{gid}");
    }
    let files = host_files(container, &spec)?;
    Ok((spec, mapping, files, keep_id))
}

/// /etc/hostname, /etc/hosts and (sharing the host's network) /etc/resolv.conf,
/// written into the container directory and bound over the image's.
fn host_files(
    container: &ContainerDir,
    spec: &ContainerSpec,
) -> Result<Vec<(PathBuf, &'static str)>, RunError> {
    let name = &spec.hostname;
    let mut files = vec![(
        container.write_file("hostname", &format!("{name}\n"))?,
        "/etc/hostname",
    )];
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if spec.network == Network::Host
        && let Ok(host) = std::fs::read_to_string("/etc/hosts")
    {
        hosts = host;
        if !hosts.ends_with('\n') {
            hosts.push('\n');
        }
    }
    hosts.push_str(&format!("127.0.1.1\t{name}\n"));
    files.push((container.write_file("hosts", &hosts)?, "/etc/hosts"));
    if spec.network == Network::Host
        && let Ok(resolv) = std::fs::read_to_string("/etc/resolv.conf")
    {
        files.push((
            container.write_file("resolv.conf", &resolv)?,
            "/etc/resolv.conf",
        ));
    }
    Ok(files)
}

/// The caller's side: id maps, then supervision until the child ends.
fn supervise(
    child: Pid,
    prepared: &Prepared,
    from_child: OwnedFd,
    to_child: OwnedFd,
    console: Option<OwnedFd>,
) -> Result<i32, RunError> {
    let mut from_child = std::fs::File::from(from_child);
    let mut unshared = [0u8; 1];
    if from_child.read_exact(&mut unshared).is_err() {
        // The child failed before its namespaces existed, and said why.
        return Ok(wait_for(child));
    }
    if let Err(e) = userns::write_maps(child, &prepared.mapping) {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        wait_for(child);
        return Err(e);
    }
    let mut to_child = std::fs::File::from(to_child);
    if to_child.write_all(&[1]).is_err() {
        return Ok(wait_for(child));
    }
    drop(to_child);
    // Raw mode only when our own stdin is a terminal that feeds the container's.
    let _raw = (console.is_some() && prepared.spec.interactive).then(RawMode::enter);
    let terminal = console
        .map(|socket| Terminal::attach(socket, prepared.spec.interactive))
        .transpose()
        .map_err(|source| RunError::Start {
            op: "attach the terminal",
            source,
        })?;
    let code = Supervisor {
        child,
        from_child: Some(from_child.into()),
        stop_timeout: prepared.spec.stop_timeout,
        pty_master: terminal.as_ref().map(|t| Arc::clone(&t.master)),
    }
    .wait()
    .map_err(|source| RunError::Start {
        op: "wait for the container",
        source,
    })?;
    if let Some(terminal) = terminal {
        terminal.finish();
    }
    Ok(code)
}

fn wait_for(child: Pid) -> i32 {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Ok(status) => {
                if let Some(code) = exit_code_of(status) {
                    return code;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return EXIT_RUNTIME,
        }
    }
}

/// The child: namespaces, the mount, the container's first process, then serving
/// the filesystem until that process ends. Returns the exit code.
fn serve_container(
    store: &Store,
    image: &ImageRecord,
    prepared: &Prepared,
    parent: Pid,
    to_parent: OwnedFd,
    from_parent: OwnedFd,
    console: Option<OwnedFd>,
) -> i32 {
    match serve_container_in(
        store,
        image,
        prepared,
        parent,
        to_parent,
        from_parent,
        console,
    ) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("strata: error: {message}");
            EXIT_RUNTIME
        }
    }
}

fn serve_container_in(
    store: &Store,
    image: &ImageRecord,
    prepared: &Prepared,
    parent: Pid,
    to_parent: OwnedFd,
    from_parent: OwnedFd,
    console: Option<OwnedFd>,
) -> Result<i32, String> {
    let errno = |what: &'static str| move |e: nix::errno::Errno| format!("{what}: {}", e.desc());
    // If strata is killed, the container goes with it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno("prctl"))?;
    if nix::unistd::getppid() != parent {
        return Err("strata ended before the container started".into());
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(userns::why_no_user_namespace)?;
    let mut to_parent = std::fs::File::from(to_parent);
    to_parent
        .write_all(&[1])
        .map_err(|e| format!("tell strata: {e}"))?;
    let mut mapped = [0u8; 1];
    if std::fs::File::from(from_parent)
        .read_exact(&mut mapped)
        .is_err()
    {
        // The parent could not write the id maps; it says why.
        return Ok(EXIT_RUNTIME);
    }
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno("make the mounts private"))?;
    let id = &prepared.container.id;
    container::sweep_stale(store, id);
    let rootfs = prepared.container.rootfs();
    let fs = image_fs(store, image, prepared.upper.as_ref()).map_err(|e| e.to_string())?;
    let mounted = mount(fs, &rootfs).map_err(|e| e.to_string())?;
    // SAFETY: still single-threaded: the serving threads start below, after the fork.
    let first = match unsafe { fork_into_new_pid_namespace() }
        .map_err(|e| format!("fork into a new pid namespace: {e}"))?
    {
        None => process::run(ProcessPlan {
            spec: &prepared.spec,
            rootfs,
            writable: prepared.upper.is_some(),
            files: prepared.files.clone(),
            console: console.as_ref(),
            keep_id: prepared.keep_id.clone(),
        }),
        Some(pid) => pid,
    };
    let _ = to_parent.write_all(&first.as_raw().to_ne_bytes());
    // Only the container may hold the terminal: its output ends when it is gone.
    drop((to_parent, console));
    std::thread::Builder::new()
        .name("strata-fuse".into())
        .spawn(move || mounted.serve())
        .map_err(|e| format!("start serving the filesystem: {e}"))?;
    let code = wait_for(first);
    // Every process of the container is gone with its pid 1: nothing uses the mount.
    let _ = nix::mount::umount2(&prepared.container.rootfs(), MntFlags::MNT_DETACH);
    if let Err(e) = container::remove(&prepared.container.dir) {
        eprintln!(
            "strata: warning: cannot remove {}: {e}; the next run or `strata gc` will",
            prepared.container.dir.display()
        );
    }
    Ok(code)
}
