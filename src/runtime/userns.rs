//! Which ids a container's user namespace maps, and writing that map.
//!
//! Default: the caller is root inside, and its subordinate range from /etc/subuid
//! and /etc/subgid is 1..N, written by the system's newuidmap/newgidmap (the only
//! privileged helpers strata uses); without a range or the helpers, the caller
//! alone, written directly. `keep-id` keeps the caller's own ids inside (HPC jobs
//! expect files to come out owned by them); `single` forces one id.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::unistd::Pid;

use super::RunError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsernsMode {
    #[default]
    Auto,
    KeepId,
    Single,
}

/// `inside` .. `inside + count` maps to `outside` .. in the parent namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingPlan {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// Written through newuidmap/newgidmap; else directly (one id each, and
    /// setgroups denied, as the kernel requires then).
    pub helpers: Option<(PathBuf, PathBuf)>,
    /// The caller's own ids, as seen inside.
    pub uid_inside: u32,
    pub gid_inside: u32,
    /// Said once on stderr when the default had to fall back to one id.
    pub notice: Option<String>,
}

/// The caller's first range in `/etc/subuid` or `/etc/subgid` text, by name or uid.
pub fn subid_range(text: &str, name: &str, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != name && who.parse::<u32>().ok() != Some(id) {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse().ok()?);
        (count > 0).then_some((start, count))
    })
}

fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The map for `mode` for the calling user, from this machine's files.
pub fn plan_for_caller(mode: UsernsMode) -> MappingPlan {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    plan(mode, uid.as_raw(), gid.as_raw(), &name)
}

/// The map for `mode`, for the caller `uid`/`gid` named `name`, from this
/// machine's /etc/subuid, /etc/subgid and newuidmap/newgidmap.
pub fn plan(mode: UsernsMode, uid: u32, gid: u32, name: &str) -> MappingPlan {
    if mode == UsernsMode::Single {
        // No range and no helper is used: spare reading for them.
        return plan_with(mode, (uid, gid), name, None, None);
    }
    let read = |f: &str, id: u32| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| subid_range(&t, name, id))
    };
    let ranges = read("/etc/subuid", uid).zip(read("/etc/subgid", uid));
    let helpers = find_helper("newuidmap").zip(find_helper("newgidmap"));
    plan_with(mode, (uid, gid), name, ranges, helpers)
}

/// The map for `mode` given the caller's subordinate ranges (uid, gid) and the
/// helpers found.
fn plan_with(
    mode: UsernsMode,
    (uid, gid): (u32, u32),
    name: &str,
    ranges: Option<((u32, u32), (u32, u32))>,
    helpers: Option<(PathBuf, PathBuf)>,
) -> MappingPlan {
    let ranges = ranges.filter(|_| mode != UsernsMode::Single);
    let keep = mode == UsernsMode::KeepId;
    let (uid_inside, gid_inside) = if keep { (uid, gid) } else { (0, 0) };
    match (ranges, helpers) {
        (Some((sub_u, sub_g)), Some(helpers)) => MappingPlan {
            uids: with_range(uid, uid_inside, sub_u),
            gids: with_range(gid, gid_inside, sub_g),
            helpers: Some(helpers),
            uid_inside,
            gid_inside,
            notice: None,
        },
        (ranges, _) => {
            let why = if ranges.is_none() {
                format!("no subordinate id range for {name} in /etc/subuid and /etc/subgid")
            } else {
                "newuidmap/newgidmap are not installed (Debian package uidmap)".to_string()
            };
            MappingPlan {
                uids: vec![IdRange {
                    inside: uid_inside,
                    outside: uid,
                    count: 1,
                }],
                gids: vec![IdRange {
                    inside: gid_inside,
                    outside: gid,
                    count: 1,
                }],
                helpers: None,
                uid_inside,
                gid_inside,
                notice: (mode == UsernsMode::Auto).then(|| {
                    format!("{why}: running with one id mapped (only your own id exists inside)")
                }),
            }
        }
    }
}

/// The caller as `inside`, its subordinate range `(start, count)` around it.
fn with_range(own: u32, inside: u32, (start, count): (u32, u32)) -> Vec<IdRange> {
    let mut ranges = Vec::new();
    let mut push = |inside, outside, count| {
        if count > 0 {
            ranges.push(IdRange {
                inside,
                outside,
                count,
            })
        }
    };
    if inside == 0 {
        push(0, own, 1);
        push(1, start, count);
    } else if inside < count {
        push(0, start, inside);
        push(inside, own, 1);
        push(inside + 1, start + inside, count - inside);
    } else {
        push(0, start, count);
        push(inside, own, 1);
    }
    ranges
}

/// Writes the plan's maps for the process `pid`, which has just unshared its user
/// namespace.
pub fn write_maps(pid: Pid, plan: &MappingPlan) -> Result<(), RunError> {
    match &plan.helpers {
        Some((newuidmap, newgidmap)) => {
            // Both at once: each is a setuid program's start, about a millisecond.
            let uids = start_helper(newuidmap, pid, &plan.uids)?;
            let gids = start_helper(newgidmap, pid, &plan.gids);
            let uids = finish_helper(newuidmap, uids);
            finish_helper(newgidmap, gids?).and(uids)
        }
        None => {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let write = |file: &str, text: String| {
                std::fs::write(proc.join(file), text).map_err(|e| {
                    RunError::UserNamespace(format!(
                        "cannot write /proc/{pid}/{file}: {e}; the user namespace cannot be set up"
                    ))
                })
            };
            write("setgroups", "deny".into())?;
            write("uid_map", map_text(&plan.uids))?;
            write("gid_map", map_text(&plan.gids))
        }
    }
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

fn start_helper(helper: &Path, pid: Pid, ranges: &[IdRange]) -> Result<Child, RunError> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([r.inside, r.outside, r.count].map(|n| n.to_string()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::UserNamespace(format!("cannot run {}: {e}", helper.display())))
}

fn finish_helper(helper: &Path, child: Child) -> Result<(), RunError> {
    let out = child.wait_with_output().map_err(|e| {
        RunError::UserNamespace(format!("cannot wait for {}: {e}", helper.display()))
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(RunError::UserNamespace(format!(
        "{} refused the id map ({}); check your lines in /etc/subuid and /etc/subgid, or run with --userns=single",
        helper.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Why unshare(CLONE_NEWUSER) failed, with what to do about it.
pub fn why_no_user_namespace(errno: nix::errno::Errno) -> String {
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .ok()
            .map(|t| t.trim().to_string())
    };
    let base = format!("cannot create a user namespace ({})", errno.desc());
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return format!(
            "{base}: unprivileged user namespaces are disabled; ask your administrator to run `sysctl -w kernel.unprivileged_userns_clone=1`"
        );
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return format!(
            "{base}: user.max_user_namespaces is 0; ask your administrator to raise it (`sysctl -w user.max_user_namespaces=15000`)"
        );
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return format!(
            "{base}: AppArmor restricts unprivileged user namespaces; ask your administrator for an AppArmor profile that allows `userns` for strata, or to set kernel.apparmor_restrict_unprivileged_userns=0"
        );
    }
    if errno == nix::errno::Errno::ENOSPC {
        return format!(
            "{base}: the limit of user namespaces (user.max_user_namespaces) is reached"
        );
    }
    if errno == nix::errno::Errno::EPERM {
        return format!(
            "{base}: this process may not create one (inside a chroot, or a seccomp filter that forbids it, as some container runtimes install)"
        );
    }
    base
}

/// Forks a child that enters a new user namespace (and the namespaces of
/// `extra`), waits there until `plan`'s maps are written, then runs `inside` and
/// exits with its code. Returns the child once it runs `inside`: the caller waits
/// for it. The child dies with the caller (parent-death signal).
///
/// # Safety
/// As fork: the caller must be single-threaded.
pub unsafe fn spawn_in_user_namespace(
    plan: &MappingPlan,
    extra: nix::sched::CloneFlags,
    inside: impl FnOnce() -> i32,
) -> Result<Pid, RunError> {
    use std::io::{Read, Write};
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(RunError::start("pipe"))
            .map(|(r, w)| (std::fs::File::from(r), std::fs::File::from(w)))
    };
    let (mut from_child, mut to_parent) = pipe()?;
    let (mut from_parent, mut to_child) = pipe()?;
    let parent = nix::unistd::getpid();
    // SAFETY: the caller promises a single-threaded process.
    match unsafe { nix::unistd::fork() }.map_err(RunError::start("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop((from_child, to_child));
            let code = (|| {
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
                if nix::unistd::getppid() != parent {
                    return super::EXIT_RUNTIME;
                }
                if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER | extra) {
                    eprintln!("strata: error: {}", why_no_user_namespace(e));
                    return super::EXIT_RUNTIME;
                }
                let mut mapped = [0u8; 1];
                if to_parent.write_all(&[1]).is_err()
                    || from_parent.read_exact(&mut mapped).is_err()
                {
                    // The parent could not write the maps; it says why.
                    return super::EXIT_RUNTIME;
                }
                drop((to_parent, from_parent));
                inside()
            })();
            // SAFETY: leave without running destructors that belong to the parent.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((to_parent, from_parent));
            let mut unshared = [0u8; 1];
            if from_child.read_exact(&mut unshared).is_err() {
                // It failed before its namespace existed, and said why: the caller's
                // wait gets its code.
                return Ok(child);
            }
            if let Err(e) = write_maps(child, plan) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(e);
            }
            let _ = to_child.write_all(&[1]);
            Ok(child)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines() {
        let text = "alice:100000:65536\n1001:300000:1000\nbob:0:0\n";
        assert_eq!(subid_range(text, "alice", 1000), Some((100000, 65536)));
        assert_eq!(subid_range(text, "carol", 1001), Some((300000, 1000)));
        assert_eq!(subid_range(text, "bob", 7), None);
    }

    #[test]
    fn plans_fall_back_to_one_id_with_a_notice() {
        let helpers = Some((PathBuf::from("/u"), PathBuf::from("/g")));
        let ranges = Some(((100000, 65536), (100000, 65536)));
        let full = plan_with(
            UsernsMode::Auto,
            (1000, 1000),
            "al",
            ranges,
            helpers.clone(),
        );
        assert_eq!(full.uids.len(), 2);
        assert!(full.helpers.is_some() && full.notice.is_none());
        let none = plan_with(UsernsMode::Auto, (1000, 1000), "al", None, helpers.clone());
        assert_eq!(
            none.uids,
            vec![IdRange {
                inside: 0,
                outside: 1000,
                count: 1
            }]
        );
        assert!(none.helpers.is_none());
        assert!(
            none.notice
                .unwrap()
                .contains("no subordinate id range for al")
        );
        let no_helpers = plan_with(UsernsMode::Auto, (1000, 1000), "al", ranges, None);
        assert!(
            no_helpers
                .notice
                .unwrap()
                .contains("newuidmap/newgidmap are not installed")
        );
        // Asked for: no notice.
        let single = plan_with(
            UsernsMode::Single,
            (1000, 1000),
            "al",
            ranges,
            helpers.clone(),
        );
        assert!(single.helpers.is_none() && single.notice.is_none());
        let keep = plan_with(UsernsMode::KeepId, (1000, 1000), "al", None, helpers);
        assert_eq!(
            keep.uids,
            vec![IdRange {
                inside: 1000,
                outside: 1000,
                count: 1
            }]
        );
        assert_eq!((keep.uid_inside, keep.gid_inside), (1000, 1000));
        assert!(keep.notice.is_none());
    }

    #[test]
    fn one_id_is_planned_without_the_machines_files() {
        let single = plan(UsernsMode::Single, 4242, 4343, "no-such-user");
        let one = |outside| {
            vec![IdRange {
                inside: 0,
                outside,
                count: 1,
            }]
        };
        assert_eq!((single.uids, single.gids), (one(4242), one(4343)));
        assert!(single.helpers.is_none() && single.notice.is_none());
    }

    #[test]
    fn ranges_around_the_caller() {
        let r = |inside, outside, count| IdRange {
            inside,
            outside,
            count,
        };
        assert_eq!(
            with_range(1000, 0, (100000, 65536)),
            vec![r(0, 1000, 1), r(1, 100000, 65536)]
        );
        assert_eq!(
            with_range(1000, 1000, (100000, 65536)),
            vec![r(0, 100000, 1000), r(1000, 1000, 1), r(1001, 101000, 64536)]
        );
        assert_eq!(
            with_range(5000, 5000, (100000, 100)),
            vec![r(0, 100000, 100), r(5000, 5000, 1)]
        );
        assert_eq!(
            map_text(&with_range(7, 0, (9, 2))),
            "0 7 1\n1 9 2\n".to_string()
        );
    }
}
