//! The container's first process: its namespaces, its root, its identity, then the
//! command (or strata's init in front of it). Forked single-threaded by the child
//! that serves the union filesystem, it is pid 1 of the new pid namespace.
//!
//! Any failure here is reported on the container's stderr and ends the process with
//! 125 (setup), 126 (cannot execute) or 127 (not found), as podman's codes.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};

use super::rootfs::{self, RootfsPlan};
use super::spec::{ContainerSpec, Network};
use super::users;
use super::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_RUNTIME};

/// What the first process needs beyond the spec.
pub struct ProcessPlan<'a> {
    pub spec: &'a ContainerSpec,
    pub rootfs: PathBuf,
    pub writable: bool,
    pub files: Vec<(PathBuf, &'static str)>,
    /// `-t`: where to send the master end of the terminal made inside.
    pub console: Option<&'a OwnedFd>,
    /// `--userns=keep-id`: the caller, to be given passwd and group entries.
    pub keep_id: Option<KeepIdUser>,
}

#[derive(Debug, Clone)]
pub struct KeepIdUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: String,
}

/// Never returns: execs the command, or exits with strata's code for the failure.
pub fn run(plan: ProcessPlan<'_>) -> ! {
    if let Err(message) = enter_root(&plan) {
        fail(EXIT_RUNTIME, &message)
    }
    become_command(plan.spec, plan.console, plan.writable)
}

/// In the container's root and namespaces (`strata exec` joins them instead):
/// becomes the spec's user with its streams, working directory, capabilities and
/// signals, and execs its command (or strata's init in front of it). Never
/// returns.
pub fn become_command(spec: &ContainerSpec, console: Option<&OwnedFd>, writable: bool) -> ! {
    let (argv, home) = match identity(spec, console, writable) {
        Ok(ready) => ready,
        Err(message) => fail(EXIT_RUNTIME, &message),
    };
    let env = environment(&spec.env, home);
    if spec.init {
        super::init::run(&argv, &env, path_of(&spec.env))
    }
    let (code, message) = exec(&argv, &env, path_of(&spec.env));
    fail(code, &message)
}

pub fn fail(code: i32, message: &str) -> ! {
    eprintln!("strata: error: {message}");
    // SAFETY: _exit ends the process without running atexit handlers or destructors
    // that belong to the strata process this one was forked from.
    unsafe { libc::_exit(code) }
}

fn errno(what: &str) -> impl FnOnce(Errno) -> String + '_ {
    move |e| format!("{what}: {}", e.desc())
}

/// The namespaces of the container's own and its root.
fn enter_root(plan: &ProcessPlan<'_>) -> Result<(), String> {
    let spec = plan.spec;
    // If the child serving the filesystem dies, so does the container.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno("prctl"))?;
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(errno("unshare the mount, uts and ipc namespaces"))?;
    nix::unistd::sethostname(&spec.hostname).map_err(errno("set the hostname"))?;
    if spec.network == Network::None {
        super::sys::loopback_up().map_err(|e| format!("bring up lo: {e}"))?;
    }
    rootfs::enter(&RootfsPlan {
        root: &plan.rootfs,
        writable: plan.writable,
        own_network: spec.network == Network::None,
        binds: &spec.binds,
        files: plan.files.clone(),
    })?;
    if let Some(me) = &plan.keep_id
        && plan.writable
    {
        add_user_entries(me)?;
    }
    Ok(())
}

/// Everything up to exec; returns the command line and the user's home directory.
fn identity(
    spec: &ContainerSpec,
    console: Option<&OwnedFd>,
    writable: bool,
) -> Result<(Vec<CString>, Option<String>), String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let user = users::resolve(&spec.user, &read("/etc/passwd"), &read("/etc/group"))?;
    standard_streams(spec, console, &user)?;
    enter_workdir(&spec.workdir, writable)?;
    spec.capabilities
        .restrict_bounding()
        .map_err(|e| e.to_string())?;
    become_user(&user)?;
    nix::sys::prctl::set_no_new_privs().map_err(errno("set no_new_privs"))?;
    // Changing ids cleared the parent-death signal: set it again.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno("prctl"))?;
    default_signals().map_err(errno("reset the signal handling"))?;
    // As runc and podman: not the caller's, and not the 0 the filesystem's daemon
    // (this process's parent) works with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    super::sys::close_from(3).map_err(|e| format!("close descriptors: {e}"))?;
    let mut argv: Vec<CString> = Vec::with_capacity(spec.argv.len());
    for a in &spec.argv {
        argv.push(
            CString::new(a.as_str()).map_err(|_| format!("argument {a:?} holds a NUL byte"))?,
        );
    }
    Ok((argv, user.home))
}

/// keep-id: the caller's passwd and group entries, where the image has none for
/// its ids, so that `id`, `whoami` and shells' prompts know them. Written into the
/// container's writable layer, as podman does.
fn add_user_entries(me: &KeepIdUser) -> Result<(), String> {
    let add = |file: &str, has: &dyn Fn(&[&str]) -> bool, line: String| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| has(&l.split(':').collect::<Vec<_>>())) {
            return Ok(());
        }
        let mut text = text;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        std::fs::create_dir_all("/etc")
            .and_then(|_| std::fs::write(file, text))
            .map_err(|e| format!("add your entry to {file}: {e}"))
    };
    let uid = me.uid.to_string();
    let gid = me.gid.to_string();
    add(
        "/etc/passwd",
        &|f| f.get(2) == Some(&uid.as_str()),
        format!("{}:x:{}:{}::{}:/bin/sh\n", me.name, me.uid, me.gid, me.home),
    )?;
    add(
        "/etc/group",
        &|f| f.get(2) == Some(&gid.as_str()),
        format!("{}:x:{}:\n", me.name, me.gid),
    )
}

/// Every signal at its default action and none blocked: strata blocks the ones it
/// forwards and Rust's runtime ignores SIGPIPE, and both would be inherited
/// through exec (a pipeline such as `yes | head` relies on SIGPIPE killing).
pub fn default_signals() -> nix::Result<()> {
    for signal in Signal::iterator() {
        if signal != Signal::SIGKILL && signal != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no code of ours in a handler.
            unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) }?;
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Without `-t`: a session of its own (the caller's terminal signals strata, which
/// forwards once), stdin /dev/null unless `-i`. With `-t`: a terminal of the
/// container's devpts, owned by the user, as controlling terminal and all three
/// streams.
fn standard_streams(
    spec: &ContainerSpec,
    console: Option<&OwnedFd>,
    user: &users::ResolvedUser,
) -> Result<(), String> {
    nix::unistd::setsid().map_err(errno("setsid"))?;
    match console {
        Some(socket) => {
            let slave = super::pty::make_console(socket, user.uid, user.gid)?;
            // SAFETY: TIOCSCTTY takes an int argument; the slave is an open terminal.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!(
                    "make the terminal the controlling one: {}",
                    std::io::Error::last_os_error()
                ));
            }
            nix::unistd::dup2_stdin(&slave).map_err(errno("dup2"))?;
            nix::unistd::dup2_stdout(&slave).map_err(errno("dup2"))?;
            nix::unistd::dup2_stderr(&slave).map_err(errno("dup2"))?;
        }
        None if !spec.interactive => {
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            nix::unistd::dup2_stdin(&null).map_err(errno("dup2"))?;
        }
        None => {}
    }
    Ok(())
}

/// The working directory, created when missing (as podman does) where the union is
/// writable.
fn enter_workdir(dir: &str, writable: bool) -> Result<(), String> {
    if writable && std::fs::metadata(dir).is_err() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("create the working directory {dir}: {e}"))?;
    }
    nix::unistd::chdir(dir).map_err(|e| format!("working directory {dir}: {}", e.desc()))
}

/// Supplementary groups, gid, uid. With one id mapped the kernel refuses
/// setgroups (it was denied when the map was written): the process then keeps
/// none, which is all that namespace can hold anyway.
fn become_user(user: &users::ResolvedUser) -> Result<(), String> {
    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    match nix::unistd::setgroups(&groups) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(e) => return Err(format!("setgroups: {}", e.desc())),
    }
    let gid = Gid::from_raw(user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| {
        format!(
            "cannot become group {}: {} (is it mapped? with one id mapped only your own exists: try without --userns=single, or ask for a subgid range)",
            user.gid,
            e.desc()
        )
    })?;
    let uid = Uid::from_raw(user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| {
        format!(
            "cannot become user {}: {} (is it mapped? with one id mapped only your own exists: try without --userns=single, or ask for a subuid range)",
            user.uid,
            e.desc()
        )
    })
}

/// The spec's environment, with HOME from /etc/passwd (else `/`) when it has none.
fn environment(vars: &[(String, String)], home: Option<String>) -> Vec<CString> {
    let mut env: Vec<CString> = vars
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    if !vars.iter().any(|(k, _)| k == "HOME") {
        let home = home.unwrap_or_else(|| "/".into());
        if let Ok(entry) = CString::new(format!("HOME={home}")) {
            env.push(entry);
        }
    }
    env
}

fn path_of(vars: &[(String, String)]) -> String {
    vars.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| super::spec::DEFAULT_PATH.into())
}

/// execve of argv[0], searched in `path` when it has no slash, as execvp does.
/// Returns only on failure: the exit code and what to say.
pub fn exec(argv: &[CString], env: &[CString], path: String) -> (i32, String) {
    let name = argv[0].to_string_lossy().into_owned();
    let candidates: Vec<String> = if name.contains('/') {
        vec![name.clone()]
    } else {
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| format!("{d}/{name}"))
            .collect()
    };
    let mut denied = None;
    for candidate in candidates {
        let Ok(file) = CString::new(candidate.clone()) else {
            continue;
        };
        match nix::unistd::execve(&file, argv, env) {
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
            Err(Errno::EACCES) => denied = Some(candidate),
            Err(e) => {
                return (
                    EXIT_CANNOT_EXECUTE,
                    format!("cannot execute {candidate}: {}", e.desc()),
                );
            }
        }
    }
    match denied {
        Some(file) => (
            EXIT_CANNOT_EXECUTE,
            format!("cannot execute {file}: permission denied (is it executable?)"),
        ),
        None if name.contains('/') => {
            (EXIT_NOT_FOUND, format!("{name}: no such file in the image"))
        }
        None => (
            EXIT_NOT_FOUND,
            format!("{name}: command not found in the image (PATH={path})"),
        ),
    }
}
