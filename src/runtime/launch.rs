//! `run` and `start`: from a container to its exit code. This file holds the two
//! processes of strata itself: the caller's (which stays outside, writes the id
//! maps and supervises) and the child that serves the union filesystem inside the
//! new user and mount namespaces.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use super::ahead;
use super::container::{self, ContainerDir};
use super::process::{self, KeepIdUser, ProcessPlan};
use super::pty::{Attached, ConsoleSocket};
use super::spec::{ContainerSpec, Network, RunOptions};
use super::supervise::{Supervisor, handled_signals};
use super::sys::fork_into_new_pid_namespace;
use super::userns::{self, MappingPlan, UsernsMode};
use super::{EXIT_RUNTIME, RunError, exit_code_of};
use crate::store::containers::{ContainerRecord, ExitRecord};
use crate::store::export::load;
use crate::store::lock::FileLock;
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
    remove_on_exit: bool,
    /// The caller, not the child, removes the container's directory, while the
    /// child ends (the kernel then frees the union, as long as the removal takes).
    /// Not with a terminal: where the caller cannot remove a file of another id, it
    /// forks a user namespace that can, and the terminal's threads forbid forks.
    caller_removes: bool,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `strata run`: a new container of `image` (named by the user `image_asked`), run
/// as `options` say. Returns the container's exit code (or 128+N when signal N
/// ended it). Errors are strata's own, found before the container started;
/// failures after that are reported by the container's processes and come back
/// as 125, 126 or 127.
pub fn run(
    store: &Store,
    image: &ImageRecord,
    image_asked: &str,
    options: &RunOptions,
) -> Result<i32, RunError> {
    // Hold the image from here on, so rmi cannot take it between our look and the
    // child's mount (which holds it again, for as long as it serves).
    let _held = hold(store, image)?;
    let container = ContainerDir::create(store)?;
    let made = (|| {
        let spec = resolve_spec(store, image, options, &container.id)?;
        let record = ContainerRecord {
            id: container.id.clone(),
            name: options.name.clone(),
            image: image.clone(),
            image_asked: image_asked.to_string(),
            command: spec.argv.clone(),
            created: now(),
            remove_on_exit: options.remove,
            options: serde_json::to_value(options).expect("run options serialize"),
        };
        store.add_container(&record)?;
        Ok(spec)
    })();
    match made {
        Ok(spec) => start_in(store, container, image, spec, options),
        Err(e) => {
            container.remove();
            Err(e)
        }
    }
}

/// `strata start`: a kept container again, on its writable layer, with the command
/// and options it was made with.
pub fn start(store: &Store, record: &ContainerRecord) -> Result<i32, RunError> {
    let options: RunOptions =
        serde_json::from_value(record.options.clone()).map_err(|e| RunError::BadRecord {
            id: record.id.clone(),
            reason: e.to_string(),
        })?;
    let _held = hold(store, &record.image)?;
    let container = ContainerDir::open(store, record)?;
    let spec = resolve_spec(store, &record.image, &options, &record.id)?;
    start_in(store, container, &record.image, spec, &options)
}

fn hold(store: &Store, image: &ImageRecord) -> Result<(FileLock, Vec<FileLock>), RunError> {
    let diff_ids: Vec<_> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    Ok((store.hold_image(&image.id)?, store.hold_layers(&diff_ids)?))
}

fn resolve_spec(
    store: &Store,
    image: &ImageRecord,
    options: &RunOptions,
    id: &str,
) -> Result<ContainerSpec, RunError> {
    let resolved = load(store, image)?;
    let hostname = options
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    let mut spec = ContainerSpec::resolve(&resolved.config, options, hostname, |k| {
        std::env::var(k).ok()
    })?;
    if options.userns == UsernsMode::KeepId && options.user.is_none() {
        spec.user = format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid());
    }
    Ok(spec)
}

fn start_in(
    store: &Store,
    container: ContainerDir,
    image: &ImageRecord,
    spec: ContainerSpec,
    options: &RunOptions,
) -> Result<i32, RunError> {
    let prepared = match prepare(container, spec, options) {
        Ok(p) => p,
        Err(failed) => {
            let (e, container) = *failed;
            if options.remove {
                container.remove();
            }
            return Err(e);
        }
    };
    if let Some(notice) = &prepared.mapping.notice {
        eprintln!("strata: notice: {notice}");
    }
    let result = fork_and_supervise(store, image, &prepared);
    if prepared.remove_on_exit {
        // Removed already (by the caller's side of `supervise` or by the child);
        // this catches a child that died before anyone could, and removes the lock.
        prepared.container.remove();
    }
    result
}

fn prepare(
    container: ContainerDir,
    spec: ContainerSpec,
    options: &RunOptions,
) -> Result<Prepared, Box<(RunError, ContainerDir)>> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    // The passwd entry names the caller in /etc/subuid and gives keep-id its
    // entry; one id mapped needs neither (a lookup is a file read or an NSS call).
    let me = match options.userns {
        UsernsMode::Single => None,
        UsernsMode::Auto | UsernsMode::KeepId => nix::unistd::User::from_uid(uid).ok().flatten(),
    };
    let name = me
        .as_ref()
        .map_or_else(|| uid.to_string(), |u| u.name.clone());
    let mapping = userns::plan(options.userns, uid.as_raw(), gid.as_raw(), &name);
    let keep_id = (options.userns == UsernsMode::KeepId).then(|| KeepIdUser {
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        name,
        home: me
            .as_ref()
            .map_or_else(|| "/".into(), |u| u.dir.to_string_lossy().into_owned()),
    });
    let files = match host_files(&container, &spec) {
        Ok(f) => f,
        Err(e) => return Err(Box::new((e, container))),
    };
    let upper = (!options.read_only).then(|| UpperDirs {
        upper: container.upper(),
        work: container.work(),
        // A container thrown away at exit needs no copy-up to survive a power cut.
        volatile: options.remove,
    });
    Ok(Prepared {
        spec,
        mapping,
        container,
        files,
        upper,
        keep_id,
        remove_on_exit: options.remove,
        caller_removes: options.remove && !options.tty,
    })
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

/// Forks the child that serves the container, then supervises it to its end.
fn fork_and_supervise(
    store: &Store,
    image: &ImageRecord,
    prepared: &Prepared,
) -> Result<i32, RunError> {
    let (child_console, console) = ConsoleSocket::pair_for(prepared.spec.tty)?;
    let (pid_r, pid_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RunError::start("pipe"))?;
    handled_signals()
        .thread_block()
        .map_err(RunError::start("block signals"))?;
    // SAFETY: no thread exists yet in this process (the terminal's start after the
    // fork, in the parent). The closure, and with it `pid_w`, is dropped in the
    // parent, which keeps only the read end.
    let child = unsafe {
        userns::spawn_in_user_namespace(&prepared.mapping, CloneFlags::CLONE_NEWNS, || {
            // The parent's ends (pid_r, console) are close-on-exec: the container's
            // process closes them, and this child ends with the container.
            match serve_container(store, image, prepared, pid_w, child_console) {
                Ok(code) => code,
                Err(message) => {
                    eprintln!("strata: error: {message}");
                    EXIT_RUNTIME
                }
            }
        })
    };
    supervise(child?, prepared, pid_r, console)
}

/// The caller's side, once the child runs: the terminal, then supervision until
/// the child ends.
fn supervise(
    child: Pid,
    prepared: &Prepared,
    pid_from_child: OwnedFd,
    console: Option<OwnedFd>,
) -> Result<i32, RunError> {
    let attached = Attached::new(console, prepared.spec.interactive)?;
    let dir = prepared.container.dir.clone();
    let mut removed = None;
    // The mount point last: in the child's namespace the union is mounted on it,
    // and removing it first would free the union here rather than in the child.
    let mut remove = || {
        removed =
            Some(container::remove_all_but(&dir, "rootfs").and_then(|()| container::remove(&dir)))
    };
    let code = Supervisor {
        child,
        from_child: Some(pid_from_child),
        on_end: prepared
            .caller_removes
            .then_some(&mut remove as &mut dyn FnMut()),
        target: None,
        stop_timeout: prepared.spec.stop_timeout,
        pty_master: attached.master(),
    }
    .wait()
    .map_err(|source| RunError::Start {
        op: "wait for the container",
        source,
    })?;
    attached.finish();
    if let Some(Err(e)) = removed {
        finish_removal(&dir, e);
    }
    Ok(code)
}

/// After a removal by the caller failed with `error`: files that other ids of the
/// container made (in directories of theirs) can only be removed inside a user
/// namespace that maps those ids.
fn finish_removal(dir: &std::path::Path, error: std::io::Error) {
    let result = match error.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            super::remove::remove_in_user_namespace(dir).map_err(|e| e.to_string())
        }
        _ => Err(error.to_string()),
    };
    if let Err(e) = result {
        eprintln!(
            "strata: warning: cannot remove {}: {e}; the next run will",
            dir.display()
        );
    }
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

/// The child, in the new user and mount namespaces: the mount, the container's
/// first process, then serving the filesystem until that process ends; then the
/// container's directory is removed, or its exit recorded. Returns the exit code.
fn serve_container(
    store: &Store,
    image: &ImageRecord,
    prepared: &Prepared,
    pid_to_parent: OwnedFd,
    console: Option<OwnedFd>,
) -> Result<i32, String> {
    let errno = |what: &'static str| move |e: nix::errno::Errno| format!("{what}: {}", e.desc());
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno("make the mounts private"))?;
    let container = &prepared.container;
    let rootfs = container.rootfs();
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
    // First the threads that serve: pid 1's first lookup waits for them. Their
    // memory comes from the main arena: a thread's first allocation would
    // otherwise map and trim an arena of its own (several calls that take the
    // address space's lock) before it reads its first request.
    // SAFETY: mallopt changes a parameter of malloc and nothing else; this process
    // has no other thread yet. It returns 0 when it refuses, which leaves malloc as
    // it was: nothing to handle.
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    std::thread::Builder::new()
        .name("strata-fuse".into())
        .spawn(move || mounted.serve())
        .map_err(|e| format!("start serving the filesystem: {e}"))?;
    // For `strata exec` and `strata rm -f`: which process is the container's pid 1.
    let _ = container.write_file("pid", &format!("{first}\n"));
    let mut to_parent = std::fs::File::from(pid_to_parent);
    let _ = to_parent.write_all(&first.as_raw().to_ne_bytes());
    // Only the container may hold the terminal: its output ends when it is gone.
    drop(console);
    // While the container's first process makes its mounts: what it would wait
    // for later, then what no one waits for.
    let mount_points: Vec<&str> = prepared.files.iter().map(|(_, at)| *at).collect();
    ahead::prepare_root(
        &container.rootfs(),
        &prepared.spec,
        &mount_points,
        prepared.upper.is_some(),
    );
    container::sweep_stale(store, &container.id);
    let code = wait_for(first);
    // Every process of the container is gone with its pid 1: nothing uses the mount.
    if prepared.caller_removes {
        // The union is not mounted in the caller's namespace: it removes the
        // directory while this process ends, and the kernel frees the union with it.
        let _ = to_parent.write_all(&code.to_ne_bytes());
        return Ok(code);
    }
    let _ = nix::mount::umount2(&container.rootfs(), MntFlags::MNT_DETACH);
    if prepared.remove_on_exit {
        if let Err(e) = container::remove(&container.dir) {
            eprintln!(
                "strata: warning: cannot remove {}: {e}; the next run will",
                container.dir.display()
            );
        }
    } else {
        let _ = std::fs::remove_file(container.file("pid"));
        store
            .record_exit(
                &container.id,
                ExitRecord {
                    code,
                    finished: now(),
                },
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(code)
}
