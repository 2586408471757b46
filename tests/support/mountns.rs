//! Running `strata mount` where a failed test leaves nothing behind: shell scripts run
//! as the test user in a user, mount and pid namespace of their own
//! (`unshare -Urm -pf --kill-child --mount-proc`). When the script ends, however it
//! ends, the kernel kills every process of the namespace (a detached strata daemon
//! too) and the mount goes with the mount namespace. A hard timeout kills a hung one.
//!
//! Scripts get in their environment: STRATA (the binary), ROOT (the store), W (the
//! test's work dir), T (the helper scripts below), and the shell functions of
//! `PRELUDE`.

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use super::fsdiff::WALK_PY;
use super::harness::{
    TestEnv, give_to_user, strata_bin, user_command, user_command_with_setuid_helpers,
};

/// Seconds after which a namespace script is killed.
pub const NS_TIMEOUT_SECS: u32 = 100;

/// Shell functions for the scripts.
pub const PRELUDE: &str = r#"
set -eu
S() { "$STRATA" --root "$ROOT" "$@"; }
# is_mounted DIR: a fuse mount on DIR is listed in our mountinfo.
is_mounted() { awk -v m="$1" '$5 == m && / - fuse/ { found = 1 } END { exit !found }' /proc/self/mountinfo; }
# wait_mounted DIR: up to 10 s.
wait_mounted() {
    i=0
    while ! is_mounted "$1"; do
        i=$((i + 1)); [ $i -lt 1000 ] || { echo "never mounted: $1" >&2; return 1; }
        sleep 0.01
    done
}
# wait_gone DIR: the mount is gone, up to 10 s.
wait_gone() {
    i=0
    while is_mounted "$1"; do
        i=$((i + 1)); [ $i -lt 1000 ] || { echo "still mounted: $1" >&2; return 1; }
        sleep 0.01
    done
}
# dfl CMD...: exec CMD with SIGINT and SIGQUIT at their defaults (a background job of
# a non-interactive shell starts with them ignored). It replaces the calling shell:
# run it in a background job (`dfl CMD & pid=$!`), where $! is then CMD's pid.
dfl() { exec python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$@"; }
walk() { python3 "$T/walk.py" "$@"; }
"#;

/// Lists a directory with getdents64 and a small buffer, all at once and in two
/// halves (read part, remember the last d_off, close, reopen, lseek there, read on).
/// argv: DIR BUFSIZE. Prints one JSON object.
pub const GETDENTS_PY: &str = r#"
import ctypes, json, os, platform, struct, sys

NR = {'x86_64': 217, 'aarch64': 61, 'riscv64': 61, 'ppc64le': 202, 's390x': 220}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
path = sys.argv[1]
bufsize = int(sys.argv[2])

def read(fd, stop_after=None):
    """(name, d_ino, d_off, d_type) until the end, or until stop_after entries."""
    buf = ctypes.create_string_buffer(bufsize)
    out = []
    calls = 0
    while True:
        n = libc.syscall(ctypes.c_long(NR), ctypes.c_int(fd), buf, ctypes.c_uint(bufsize))
        calls += 1
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        if n == 0:
            return out, calls
        raw = buf.raw[:n]
        pos = 0
        while pos < n:
            ino, off, reclen, typ = struct.unpack_from('=QqHB', raw, pos)
            name = raw[pos + 19:pos + reclen].split(b'\0', 1)[0].decode('utf-8', 'backslashreplace')
            out.append((name, ino, off, typ))
            pos += reclen
            if stop_after is not None and len(out) >= stop_after:
                return out, calls

def listing():
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return read(fd)
    finally:
        os.close(fd)

def in_two(first):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        head, _ = read(fd, first)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.lseek(fd, head[-1][2], os.SEEK_SET)
        tail, _ = read(fd)
    finally:
        os.close(fd)
    return [e[0] for e in head] + [e[0] for e in tail]

full, calls = listing()
total = len(full)
result = {
    'names': [e[0] for e in full],
    'calls': calls,
    'd_ino': {e[0]: e[1] for e in full},
    'again': [e[0] for e in listing()[0]],
    'split': {str(k): in_two(k) for k in (1, 2, 3, 17, total // 3, total // 2, total - 1) if 0 < k < total},
    'scandir': sorted(e.name for e in os.scandir(path)),
    'lstat_ino': {e[0]: os.lstat(os.path.join(path, e[0])).st_ino for e in full[::97] if e[0] not in ('.', '..')},
}
print(json.dumps(result))
"#;

/// Checks from inside a chroot into the mount (root of our user namespace may
/// chroot) that links to `/` and `..` chains resolve inside the mount, and from
/// outside it that readlink gives the stored text. argv: MOUNT. Prints JSON.
pub const ESCAPE_PY: &str = r#"
import json, os, sys

mnt = sys.argv[1]
res = {}

def attempt(key, fn):
    try:
        res[key] = fn()
    except OSError as e:
        res[key] = 'error:%s' % (e.strerror,)

def read(p):
    with open(p) as f:
        return f.read()

for name in ('evil', 'evil2', 'up', 'rootlink', 'pw', 'd/dd/back', 'dotdot'):
    attempt('readlink:' + name, lambda: os.readlink(os.path.join(mnt, name)))
attempt('realpath:up', lambda: os.path.realpath(os.path.join(mnt, 'up')))
attempt('realpath:back', lambda: os.path.realpath(os.path.join(mnt, 'd/dd/back')))
attempt('lstat_is_dir:evil2', lambda: os.path.isdir(os.path.join(mnt, 'evil2')) and not os.path.islink(os.path.join(mnt, 'evil2')))
attempt('outside:evil2/passwd', lambda: read(os.path.join(mnt, 'evil2/passwd')))
attempt('outside:etc/passwd', lambda: read(os.path.join(mnt, 'etc/passwd')))
attempt('outside:etc/group', lambda: read(os.path.join(mnt, 'etc/group')))
attempt('outside:lib/passwd', lambda: read(os.path.join(mnt, 'lib/passwd')))

os.chroot(mnt)
os.chdir('/')
attempt('chroot:realpath:up', lambda: os.path.realpath('/up'))
attempt('chroot:realpath:back', lambda: os.path.realpath('/d/dd/back'))
attempt('chroot:realpath:dotdot', lambda: os.path.realpath('/dotdot'))
attempt('chroot:pw', lambda: read('/pw'))
attempt('chroot:evil/passwd', lambda: read('/evil/passwd'))
attempt('chroot:evil_list', lambda: sorted(os.listdir('/evil')))
attempt('chroot:up/etc/passwd', lambda: read('/up/etc/passwd'))
attempt('chroot:back/etc/passwd', lambda: read('/d/dd/back/etc/passwd'))
attempt('chroot:rootlink/etc/passwd', lambda: read('/rootlink/etc/passwd'))
attempt('chroot:dotdot/etc/passwd', lambda: read('/dotdot/etc/passwd'))
attempt('chroot:evil2/passwd', lambda: read('/evil2/passwd'))
attempt('chroot:lib_list', lambda: sorted(os.listdir('/lib')))
attempt('chroot:lib/passwd', lambda: read('/lib/passwd'))
print(json.dumps(res, sort_keys=True))
"#;

/// Writes the helper scripts into the test's work dir; returns their directory.
pub fn install_tools(env: &TestEnv) -> PathBuf {
    let dir = env.path("tools");
    if !dir.join("walk.py").exists() {
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("walk.py"), WALK_PY).unwrap();
        fs::write(dir.join("getdents.py"), GETDENTS_PY).unwrap();
        fs::write(dir.join("escape.py"), ESCAPE_PY).unwrap();
        give_to_user(&dir);
    }
    dir
}

fn script_command(
    env: &TestEnv,
    setuid_helpers: bool,
    argv: &[&str],
    script: &str,
    args: &[&OsStr],
) -> Command {
    let tools = install_tools(env);
    let full = format!("{PRELUDE}\n{script}");
    let mut cmd = if setuid_helpers {
        user_command_with_setuid_helpers(argv[0])
    } else {
        user_command(argv[0])
    };
    cmd.args(&argv[1..])
        .args(["sh", "-c", &full, "sh"])
        .args(args)
        .env("STRATA", strata_bin())
        .env("ROOT", &env.root)
        .env("W", &env.dir)
        .env("T", tools);
    cmd
}

/// The command that runs `script` (with `args` as $1...) as the test user in
/// namespaces of its own, where only the user is mapped (to 0), not yet started.
pub fn ns_command(env: &TestEnv, script: &str, args: &[&OsStr]) -> Command {
    let timeout = NS_TIMEOUT_SECS.to_string();
    let argv = [
        "timeout",
        "-s",
        "KILL",
        &timeout,
        "unshare",
        "-Urm",
        "-pf",
        "--kill-child",
        "--mount-proc",
    ];
    script_command(env, false, &argv, script, args)
}

/// Runs `script` as the test user in namespaces of its own, with only the user
/// mapped (to 0).
pub fn ns_sh(env: &TestEnv, script: &str, args: &[&OsStr]) -> Output {
    ns_command(env, script, args)
        .output()
        .expect("run a script in a user namespace")
}

/// The test user's first subordinate id range in `file` (/etc/subuid or /etc/subgid):
/// (first id, count).
pub fn subid_range(file: &str) -> Option<(u32, u32)> {
    let name = &super::harness::user().name;
    fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? != name {
            return None;
        }
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Runs `script` like `ns_sh`, but with the user's subordinate ids mapped too (the
/// user to 0, its subuid and subgid ranges from 1 on, through newuidmap and
/// newgidmap); None when the user has no ranges or no newuidmap.
pub fn ns_sh_subids(env: &TestEnv, script: &str, args: &[&OsStr]) -> Option<(Output, u32)> {
    let (uid0, ucount) = subid_range("/etc/subuid")?;
    let (gid0, gcount) = subid_range("/etc/subgid")?;
    if !std::path::Path::new("/usr/bin/newuidmap").exists() {
        return None;
    }
    let count = ucount.min(gcount);
    let timeout = NS_TIMEOUT_SECS.to_string();
    let users = format!("--map-users={uid0},1,{count}");
    let groups = format!("--map-groups={gid0},1,{count}");
    let argv = [
        "timeout",
        "-s",
        "KILL",
        &timeout,
        "unshare",
        "--map-root-user",
        &users,
        &groups,
        "-m",
        "-pf",
        "--kill-child",
        "--mount-proc",
    ];
    let out = script_command(env, true, &argv, script, args)
        .output()
        .expect("run a script in a user namespace with subordinate ids");
    Some((out, count + 1))
}

/// Runs `script` as the test user in the host's namespaces, where mounting takes the
/// setuid fusermount3 (so the bounding set is an ordinary user's). Mounts made there
/// are the caller's to clean up.
pub fn host_sh(env: &TestEnv, script: &str, args: &[&OsStr]) -> Output {
    let timeout = NS_TIMEOUT_SECS.to_string();
    script_command(
        env,
        true,
        &["timeout", "-s", "KILL", &timeout],
        script,
        args,
    )
    .output()
    .expect("run a script as the test user")
}

/// The mount points of this process's mount namespace.
pub fn host_mountpoints() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}
