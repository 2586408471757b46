//! The write side of strata's union filesystem, operation by operation:
//! `strata mount --upper DIR IMAGE MOUNTPOINT`, run as the unprivileged test user in
//! namespaces of the test's own (see `support::mountns`).
//!
//! Every operation runs on names of three kinds of place, a "kit" each: `L`, names that
//! live in a lower layer only (`lo/sN/...` in the image); `U`, names made through the
//! mount in a directory the lower does not have (`up/sN/...`); `M`, names made through
//! the mount in a lower directory that keeps lower children of its own (`mx/sN/`, with
//! `old1` and `old2` from two layers). A kit holds a file (mode 0640, an xattr, a
//! sub-second mtime), a directory `dir` (0750, with `a`, `sub/c`), an empty directory, a
//! symlink to `file`, a fifo and a hardlinked pair `h1`/`h2`.
//!
//! The checks run in python inside the namespace (`WOPS_PY` is their library). A check
//! that fails is recorded and the script goes on, so one run lists every failure; after
//! each change a second process (the "peer", which opens and stats afresh for every
//! question) must see it, so stale kernel caches show. The upper directory is inspected
//! from inside the namespace too: whiteouts are char 0/0 devices, opaque directories
//! carry `user.overlay.opaque=y`, owners the host cannot store are in
//! `user.containers.override_stat`. Each script writes its report to `$W/NAME.json`
//! (failed checks, and notes that only inform, such as whether a chmod copied data);
//! the test fails with every failed check of every report. A script that hangs (a FUSE
//! request that never returns) saves its report after 30 s saying where, and kills the
//! daemon so that the namespace ends.
//!
//! To check the harness itself, set `STRATA_WRITE_ORACLE=kernel` in the environment of
//! `cargo test`: the scripts then mount kernel overlayfs (userxattr) with a read-only
//! strata mount as its lower, instead of strata's upper. Kernel overlayfs differs on
//! purpose in a few places (EXDEV for renames of lower directories, hardlinks broken by
//! copy-up, owners it cannot store, no daemon to kill), and those checks fail there.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Output;

use support::fsdiff::*;
use support::mountns::*;
use support::*;

/// Kits of each kind of place in the image.
const SLOTS: usize = 24;
const LOWER_MTIME: i64 = 1_600_000_000;
const LOWER_NSEC: u32 = 123_456_789;

// ---------------------------------------------------------------------------------
// The image

/// `lo/sN/` kits, and the first half of the merged `mx/sN/` directories.
fn kit_layer() -> Vec<Entry> {
    let mut l = vec![Entry::dir("lo"), Entry::dir("mx"), Entry::dir("etc")];
    l.push(Entry::file("etc/hosts", "127.0.0.1 localhost\n"));
    for i in 0..SLOTS {
        let s = format!("lo/s{i}");
        l.extend([
            Entry::dir(&s),
            Entry::file(format!("{s}/file"), format!("lower file s{i}\n"))
                .mode(0o640)
                .xattr("user.k", format!("v{i}"))
                .mtime(LOWER_MTIME)
                .mtime_nsec(LOWER_NSEC),
            Entry::dir(format!("{s}/dir")).mode(0o750),
            Entry::file(format!("{s}/dir/a"), "a\n"),
            Entry::dir(format!("{s}/dir/sub")),
            Entry::file(format!("{s}/dir/sub/c"), "c\n"),
            Entry::dir(format!("{s}/empty")),
            Entry::symlink(format!("{s}/link"), "file"),
            Entry::fifo(format!("{s}/fifo")),
            Entry::file(format!("{s}/h1"), format!("lower hard s{i}\n")),
            Entry::hardlink(format!("{s}/h2"), format!("{s}/h1")),
            Entry::dir(format!("mx/s{i}")),
            Entry::file(format!("mx/s{i}/old1"), "old1\n"),
        ]);
    }
    l
}

/// The second half of the merged directories, and what a test adds.
fn top_layer(extra: Vec<Entry>) -> Vec<Entry> {
    let mut l = vec![Entry::dir("mx")];
    for i in 0..SLOTS {
        l.push(Entry::dir(format!("mx/s{i}")));
        l.push(Entry::file(format!("mx/s{i}/old2"), "old2\n"));
    }
    l.extend(extra);
    l
}

/// A test's work dir, set up (see `setup`).
fn prepared(name: &str, extra: Vec<Entry>, py: &str) -> (TestEnv, Written) {
    let env = TestEnv::new(&format!("write-{name}"));
    let written = setup(&env, extra, name, py);
    (env, written)
}

/// Imports the image as `w:v1` and installs the python library and the test's script
/// `$W/NAME.py`; returns the layout.
fn setup(env: &TestEnv, extra: Vec<Entry>, name: &str, py: &str) -> Written {
    let layers = vec![kit_layer(), top_layer(extra)];
    let blobs = layers.into_iter().map(LayerBlob::plain).collect();
    let written = Image::new(blobs).with_ref("v1").write(&env.path("layout"));
    env.import(&format!("oci:{}:v1", written.path()), Some("w:v1"));
    install(env, "wops", WOPS_PY);
    install(env, name, py);
    if let Some(oracle) = std::env::var_os("STRATA_WRITE_ORACLE") {
        fs::write(env.path("oracle"), oracle.as_encoded_bytes()).unwrap();
        give_to_user(&env.path("oracle"));
    }
    written
}

fn kernel_oracle() -> bool {
    std::env::var("STRATA_WRITE_ORACLE").is_ok_and(|v| v == "kernel")
}

/// Writes `$W/NAME.py`; a test's script (not the library) gets the call of its `main`.
fn install(env: &TestEnv, name: &str, py: &str) {
    let path = env.path(&format!("{name}.py"));
    let run = if name == "wops" { "" } else { "\nrun(main)\n" };
    fs::write(&path, format!("{py}{run}")).unwrap();
    give_to_user(&path);
}

/// Shell functions for the scripts, after `support::mountns::PRELUDE`:
/// `rw_mount MOUNTPOINT UPPER` and `rw_umount MOUNTPOINT`, `py NAME ARGS...`.
const WRITE_SH: &str = r#"
ORACLE=$(cat "$W/oracle" 2>/dev/null || true)
rw_mount() {
    if [ "$ORACLE" = kernel ]; then
        mkdir -p "$1.lower" "$2" "$2.work"
        S mount w:v1 "$1.lower"
        mount -t overlay overlay -o "lowerdir=$1.lower,upperdir=$2,workdir=$2.work,userxattr" "$1"
    else
        S mount --upper "$2" w:v1 "$1"
    fi
}
rw_umount() {
    if [ "$ORACLE" = kernel ]; then
        umount "$1"
        S umount "$1.lower"
    else
        S umount "$1"
    fi
}
# py NAME ARGS...: runs $W/NAME.py; its report says how it went, so a failure does not
# stop the script.
py() {
    name=$1; shift
    if [ -e "$W/hung" ]; then echo "$name.py $*: skipped, a script before it hung" >&2; return 0; fi
    python3 "$W/$name.py" "$@" || echo "$name.py $*: exit status $?" >&2
}
M="$W/mnt"
U="$W/upper"
mkdir -p "$M"
"#;

fn run_ns(env: &TestEnv, script: &str, args: &[&OsStr]) -> Output {
    ns_sh(env, &format!("{WRITE_SH}\n{script}"), args)
}

/// The reports `$W/NAME.json` the python scripts wrote, as lines: every failed check, and
/// the script's own failure. Prints the notes.
fn problems(env: &TestEnv, out: &Output, reports: &[&str], min_checks: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut checks = 0;
    for r in reports {
        let path = env.path(&format!("{r}.json"));
        let Ok(text) = fs::read_to_string(&path) else {
            let why = if env.path("hung").exists() {
                "a script before it hung, see above"
            } else {
                "the script stopped before it"
            };
            problems.push(format!("[{r}] no report: {why}"));
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}\n{text}", path.display()));
        checks += v["checks"].as_u64().unwrap_or(0) as usize;
        for f in v["failures"].as_array().into_iter().flatten() {
            problems.push(format!("[{r}] {}", f.as_str().unwrap_or("?")));
        }
        for n in v["notes"].as_array().into_iter().flatten() {
            eprintln!("note: [{r}] {}", n.as_str().unwrap_or("?"));
        }
    }
    if !out.status.success() {
        problems.push(format!("the namespace script failed\n{}", describe(out)));
    } else if problems.is_empty() && checks < min_checks {
        problems.push(format!(
            "only {checks} checks ran in {reports:?}, want at least {min_checks}"
        ));
    }
    problems
}

#[track_caller]
fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

/// Fails with every problem of the reports (see `problems`).
#[track_caller]
fn finish(env: &TestEnv, out: &Output, reports: &[&str], min_checks: usize) {
    assert_no_problems(&problems(env, out, reports, min_checks));
}

// ---------------------------------------------------------------------------------
// The python side

/// The library of the python scripts (`from wops import *`).
const WOPS_PY: &str = r##"
import ctypes, errno, hashlib, json, os, socket, stat, subprocess, sys, threading, traceback
from contextlib import contextmanager

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
KEEP_SIZE, PUNCH_HOLE = 1, 2
LOWER_MTIME_NS = 1_600_000_000_123_456_789
PRIVATE = ('user.overlay.', 'user.containers.', 'user.fuseoverlayfs.', 'trusted.')
OVERRIDE = 'user.containers.override_stat'

def ename(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def _ok(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), what)

def renameat2(a, b, flags):
    _ok(libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), flags), a)

def fallocate(fd, mode, off, length):
    _ok(libc.fallocate64(fd, mode, off, length), 'fallocate')

def write_all(fd, data, off=None):
    done = 0
    while done < len(data):
        if off is None:
            done += os.write(fd, data[done:])
        else:
            done += os.pwrite(fd, data[done:], off + done)

def write_file(path, data, mode=0o644, sync=False, flags=os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, os.O_WRONLY | flags, mode)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)

def append(path, data, sync=False):
    write_file(path, data, sync=sync, flags=os.O_APPEND)

def sync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def read_file(path):
    with open(path, 'rb') as f:
        return f.read()

def sha(data):
    return hashlib.sha256(data).hexdigest()

def kind(mode):
    for test, k in ((stat.S_ISREG, 'f'), (stat.S_ISDIR, 'd'), (stat.S_ISLNK, 'l'), (stat.S_ISFIFO, 'p'),
                    (stat.S_ISSOCK, 's'), (stat.S_ISCHR, 'c'), (stat.S_ISBLK, 'b')):
        if test(mode):
            return k
    return '?'

def short(v):
    """repr, with long byte strings summed up."""
    if isinstance(v, (bytes, bytearray)) and len(v) > 80:
        return '<%d bytes, sha256 %s..., %r...%r>' % (len(v), sha(bytes(v))[:12], bytes(v[:24]), bytes(v[-8:]))
    r = repr(v)
    return r if len(r) <= 600 else r[:600] + '...'

# Fields of a peer lstat answer, or the error string it was.
def field(st, name):
    return st[name] if isinstance(st, dict) else st

def perm(st):
    return oct(st['mode'] & 0o7777) if isinstance(st, dict) else st

def kindof(st):
    return kind(st['mode']) if isinstance(st, dict) else st

class Checks:
    """Checks that record their failures and let the script go on."""

    def __init__(self, out):
        self.out = out
        self.failures = []
        self.notes = []
        self.n = 0
        self.where = []

    def fail(self, msg):
        self.failures.append('%s: %s' % (' / '.join(self.where) or '-', msg))

    def eq(self, what, got, want):
        self.n += 1
        if got != want:
            self.fail('%s: expected %s, got %s' % (what, short(want), short(got)))
        return got == want

    def true(self, what, cond):
        self.n += 1
        if not cond:
            self.fail(what)
        return cond

    def raises(self, what, fn, *names):
        """fn() must fail with one of the errno names."""
        self.n += 1
        try:
            fn()
        except OSError as e:
            if ename(e) not in names:
                self.fail('%s: expected %s, got %s (%s)' % (what, '/'.join(names), ename(e), e))
            return
        self.fail('%s: expected %s, but it succeeded' % (what, '/'.join(names)))

    @contextmanager
    def step(self, what):
        """A group of checks; an exception ends the group, as a failure, not the script."""
        self.where.append(what)
        try:
            yield
        except OSError as e:
            self.n += 1
            self.fail('raised %s: %s' % (ename(e), e))
        except Exception as e:
            self.n += 1
            self.fail('raised %s: %s\n%s' % (type(e).__name__, e, traceback.format_exc()))
        finally:
            self.where.pop()

    def note(self, msg):
        self.notes.append(msg)

    def save(self):
        with open(self.out, 'w') as f:
            json.dump({'checks': self.n, 'failures': self.failures, 'notes': self.notes}, f, indent=1)

PEER = r'''
import errno, fcntl, hashlib, json, os, stat, sys
def one(req):
    op, p = req['op'], req['path']
    if op == 'lstat':
        st = os.lstat(p)
        return {'mode': st.st_mode, 'size': st.st_size, 'nlink': st.st_nlink, 'ino': st.st_ino,
                'uid': st.st_uid, 'gid': st.st_gid, 'mtime_ns': st.st_mtime_ns,
                'atime_ns': st.st_atime_ns, 'blocks': st.st_blocks, 'rdev': st.st_rdev}
    if op in ('read', 'sha'):
        # Never block on a fifo that should have been a file.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, 'rb') as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, 'not a regular file')
            if op == 'read':
                return f.read().hex()
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
            return h.hexdigest()
    if op == 'ls':
        return sorted(os.listdir(p))
    if op == 'readlink':
        return os.readlink(p)
    if op == 'getxattr':
        return os.getxattr(p, req['name'], follow_symlinks=False).hex()
    if op == 'xattrs':
        return sorted(os.listxattr(p, follow_symlinks=False))
    if op == 'trylock':
        fd = os.open(p, os.O_RDWR)
        try:
            how = req['how']
            if how == 'flock':
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            elif how == 'flock_sh':
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return 'locked'
        finally:
            os.close(fd)
    raise ValueError(op)
for line in sys.stdin:
    req = json.loads(line)
    try:
        out = {'ok': one(req)}
    except OSError as e:
        out = {'err': errno.errorcode.get(e.errno, str(e.errno))}
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()
'''

class Peer:
    """Another process, which looks at the mount afresh for every question. Answers are
    values, or 'error:ENAME'."""

    def __init__(self):
        self.p = subprocess.Popen([sys.executable, '-c', PEER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def ask(self, op, path, **kw):
        self.p.stdin.write(json.dumps(dict(op=op, path=path, **kw)) + '\n')
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        return r['ok'] if 'ok' in r else 'error:' + r['err']

    def lstat(self, p):
        return self.ask('lstat', p)

    def read(self, p):
        r = self.ask('read', p)
        return r if r.startswith('error:') else bytes.fromhex(r)

    def sha(self, p):
        return self.ask('sha', p)

    def ls(self, p):
        return self.ask('ls', p)

    def readlink(self, p):
        return self.ask('readlink', p)

    def xattr(self, p, name):
        r = self.ask('getxattr', p, name=name)
        return r if r.startswith('error:') else bytes.fromhex(r)

    def xattrs(self, p):
        return self.ask('xattrs', p)

    def trylock(self, p, how):
        return self.ask('trylock', p, how=how)

    def warm(self, *paths):
        """Makes the kernel cache what it may: attributes, contents, listings."""
        for p in paths:
            st = self.lstat(p)
            if isinstance(st, dict):
                if stat.S_ISREG(st['mode']):
                    self.read(p)
                elif stat.S_ISDIR(st['mode']):
                    self.ls(p)
                elif stat.S_ISLNK(st['mode']):
                    self.readlink(p)

    def close(self):
        self.p.stdin.close()
        self.p.wait()

class Kit:
    pass

class Ctx:
    """argv: MOUNT UPPER REPORT ARGS..."""

    def __init__(self):
        self.M, self.U, out = sys.argv[1], sys.argv[2], sys.argv[3]
        self.args = sys.argv[4:]
        self.c = Checks(out)
        self.peer = Peer()
        self.slots = {'L': 0, 'U': 0, 'M': 0}

    def rel(self, p):
        return os.path.relpath(p, self.M)

    def up(self, p):
        return os.path.join(self.U, self.rel(p))

    def upper_kind(self, p):
        """What the upper holds for mount path p: 'whiteout', a kind letter, or 'nothing'."""
        try:
            st = os.lstat(self.up(p))
        except FileNotFoundError:
            return 'nothing'
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return 'whiteout'
        return kind(st.st_mode)

    def upper_read(self, p):
        try:
            return read_file(self.up(p))
        except OSError as e:
            return 'error:' + ename(e)

    def upper_xattr(self, p, name):
        try:
            return os.getxattr(self.up(p), name, follow_symlinks=False)
        except OSError as e:
            return 'error:' + ename(e)

    def upper_override(self, p):
        v = self.upper_xattr(p, OVERRIDE)
        if isinstance(v, str):
            return None
        f = v.decode().split(':')
        return int(f[0]), int(f[1]), int(f[2], 8) & 0o7777

    def upper_mode(self, p):
        """The permission bits the upper records: the override's, else the file's own."""
        o = self.upper_override(p)
        if o:
            return oct(o[2])
        try:
            return oct(os.lstat(self.up(p)).st_mode & 0o7777)
        except OSError as e:
            return 'error:' + ename(e)

    def upper_owner(self, p):
        o = self.upper_override(p)
        if o:
            return (o[0], o[1])
        try:
            st = os.lstat(self.up(p))
            return (st.st_uid, st.st_gid)
        except OSError as e:
            return 'error:' + ename(e)

    def check_node(self, p, k, mode):
        """Another process sees p as a k (kind letter) of this mode."""
        st = self.peer.lstat(p)
        self.c.eq('type of ' + self.rel(p), kindof(st), k)
        self.c.eq('mode of ' + self.rel(p), perm(st), oct(mode))

    def check_whiteout(self, p):
        self.c.eq('the upper holds a char 0/0 whiteout for %s' % self.rel(p), self.upper_kind(p), 'whiteout')

    def check_gone(self, p):
        """The name is gone for another process: lstat fails and its directory does not list it."""
        self.c.eq('%s is gone' % self.rel(p), self.peer.lstat(p), 'error:ENOENT')
        names = self.peer.ls(os.path.dirname(p))
        self.c.true('%s is not listed in its directory (%r)' % (self.rel(p), names),
                    isinstance(names, list) and os.path.basename(p) not in names)

    def check_private_hidden(self, p):
        names = self.peer.xattrs(p)
        self.c.true('no private xattr shows through the mount on %s: %r' % (self.rel(p), names),
                    isinstance(names, list) and not any(n.startswith(PRIVATE) for n in names))

    def kit(self, place):
        """A fresh kit of names of this kind of place (see the module comment of write.rs)."""
        i = self.slots[place]
        self.slots[place] += 1
        k = Kit()
        k.place, k.i = place, i
        k.base = {'L': '%s/lo/s%d', 'U': '%s/up/s%d', 'M': '%s/mx/s%d'}[place] % (self.M, i)
        for n in ('file', 'empty', 'link', 'fifo', 'h1', 'h2'):
            setattr(k, n, k.base + '/' + n)
        k.d = k.base + '/dir'
        k.a = k.d + '/a'
        k.sub = k.d + '/sub'
        k.c = k.sub + '/c'
        tag = {'L': b'lower', 'U': b'upper', 'M': b'merged'}[place]
        k.file_data = b'%s file s%d\n' % (tag, i)
        k.h_data = b'%s hard s%d\n' % (tag, i)
        k.xattr = b'v%d' % i
        k.old = ['old1', 'old2'] if place == 'M' else []
        if place != 'L':
            if place == 'U' and not os.path.isdir(self.M + '/up'):
                os.mkdir(self.M + '/up', 0o755)
            if place == 'U':
                os.mkdir(k.base, 0o755)
            write_file(k.file, k.file_data, 0o640)
            os.setxattr(k.file, 'user.k', k.xattr)
            os.utime(k.file, ns=(LOWER_MTIME_NS, LOWER_MTIME_NS))
            os.mkdir(k.d, 0o750)
            write_file(k.a, b'a\n')
            os.mkdir(k.sub, 0o755)
            write_file(k.c, b'c\n')
            os.mkdir(k.empty, 0o755)
            os.symlink('file', k.link)
            os.mkfifo(k.fifo, 0o644)
            write_file(k.h1, k.h_data)
            os.link(k.h1, k.h2)
        return k

    def paths(self, k):
        return [k.base, k.file, k.d, k.a, k.sub, k.c, k.empty, k.link, k.fifo, k.h1, k.h2]

HANG_SECS = 30

def watchdog(x):
    """A hung operation (a FUSE request that never returns) ends the script after
    HANG_SECS, with the report saved and saying where it hung. A process waiting for an
    answer the daemon already took cannot even exit, so the strata daemons of the
    namespace are killed too, and $W/hung tells the scripts after this one to skip."""
    main_id = threading.get_ident()

    def fire():
        frame = sys._current_frames().get(main_id)
        x.c.failures.append('%s: hung for %d s in:\n%s' % (' / '.join(x.c.where) or '-', HANG_SECS,
                                                        ''.join(traceback.format_stack(frame)[-4:])))
        x.c.save()
        open(os.environ['W'] + '/hung', 'w').close()
        for pid in os.listdir('/proc'):
            try:
                with open('/proc/%s/comm' % pid) as f:
                    if f.read().strip() == 'strata':
                        os.kill(int(pid), 9)
            except (OSError, ValueError):
                pass
        os._exit(3)
    t = threading.Timer(HANG_SECS, fire)
    t.daemon = True
    t.start()

def run(main):
    os.umask(0)
    x = Ctx()
    watchdog(x)
    try:
        # '-' for a script that looks at the upper only.
        if x.M != '-' and not os.path.ismount(x.M):
            x.c.fail('%s is not a mount point when the script starts: the mount is gone' % x.M)
            return
        main(x)
    except BaseException:
        x.c.failures.append('the script crashed:\n' + traceback.format_exc())
    finally:
        x.c.save()
        x.peer.close()
"##;

// ---------------------------------------------------------------------------------
// 1. Creating, linking and deleting names

/// Runs `$W/NAME.py` once for each kind of place (`L`, `U`, `M`), in one mount.
fn per_place(name: &str, py: &str, min_checks: usize) {
    let (env, _) = prepared(name, vec![], py);
    let script = format!(
        r#"
        rw_mount "$M" "$U"
        for p in L U M; do py {name} "$M" "$U" "$W/{name}-$p.json" $p; done
        rw_umount "$M"
        "#
    );
    let out = run_ns(&env, &script, &[]);
    let reports = ["L", "U", "M"].map(|p| format!("{name}-{p}"));
    finish(
        &env,
        &out,
        &reports.each_ref().map(String::as_str),
        min_checks,
    );
}

#[test]
fn names_are_created_linked_and_deleted_in_lower_upper_and_merged_dirs() {
    per_place("names", NAMES_PY, 280);
}

// ---------------------------------------------------------------------------------
// 2. Renames

#[test]
fn renames_of_files_and_directories_wherever_they_live() {
    let (env, _) = prepared("rename", vec![], RENAME_PY);
    let out = run_ns(
        &env,
        r#"rw_mount "$M" "$U"; py rename "$M" "$U" "$W/rename.json"; rw_umount "$M""#,
        &[],
    );
    finish(&env, &out, &["rename"], 220);
}

// ---------------------------------------------------------------------------------
// 3. Attributes, data, xattrs, locks, and the ways of opening a file

#[test]
fn attributes_data_xattrs_locks_and_open_files() {
    per_place("data", DATA_PY, 250);
}

// ---------------------------------------------------------------------------------
// 4. Copy-up

const BIG: usize = 64 << 20;
const BIG2: usize = 32 << 20;

/// 64 MiB of zeros but for 4 KiB of 'S' at 0 and 4 KiB of 'T' at 32 MiB.
fn sparse_data() -> Vec<u8> {
    let mut d = vec![0u8; BIG];
    d[..4096].fill(b'S');
    d[32 << 20..(32 << 20) + 4096].fill(b'T');
    d
}

fn copy_up_entries() -> Vec<Entry> {
    let lower = |e: Entry| e.mtime(LOWER_MTIME).mtime_nsec(LOWER_NSEC);
    vec![
        Entry::dir("cu"),
        lower(Entry::file("cu/meta", "meta data\n"))
            .mode(0o640)
            .xattr("user.k", "v")
            .xattr("user.bin", [0u8, 1, 2, 255]),
        lower(Entry::file("cu/w", "write me\n"))
            .mode(0o640)
            .xattr("user.k", "w"),
        lower(Entry::file("cu/sx", "suid\n")).mode(0o4750),
        lower(Entry::dir("cu/dir"))
            .mode(0o710)
            .xattr("user.d", "dv"),
        Entry::file("cu/dir/lowerchild", "lc"),
        Entry::file("cu/h1", "pair\n"),
        Entry::hardlink("cu/h2", "cu/h1"),
        lower(Entry::file("cu/big", sparse_data())),
        lower(Entry::file("cu/big2", random_bytes(9, BIG2))),
    ]
}

#[test]
fn copy_up_keeps_metadata_inode_numbers_and_holes() {
    let (env, written) = prepared("copyup", copy_up_entries(), COPYUP_PY);
    let big2_sha = sha256_hex(&random_bytes(9, BIG2));
    // The store writes a layer's zeros as data; punch holes where they are, so that the
    // lower file is as sparse as the copy-up should keep it.
    let top = written.diff_ids[1].trim_start_matches("sha256:");
    let big = env.layer_dir(top).join("tree/cu/big");
    let blocks = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&fs::metadata(p).unwrap());
    let before = blocks(&big);
    let out = std::process::Command::new("fallocate")
        .arg("--dig-holes")
        .arg(&big)
        .output()
        .expect("run fallocate");
    assert_ok(&out);
    eprintln!(
        "note: the store's copy of cu/big held {} KiB, {} KiB once its holes were punched",
        before / 2,
        blocks(&big) / 2
    );
    assert!(
        blocks(&big) * 512 <= 64 << 10,
        "the lower file is not sparse"
    );
    let out = run_ns(
        &env,
        r#"
        rw_mount "$M" "$U"
        py copyup "$M" "$U" "$W/copyup1.json" first "$1"
        rw_umount "$M"
        rw_mount "$M" "$U"
        py copyup "$M" "$U" "$W/copyup2.json" second "$1"
        rw_umount "$M"
        py copyup - "$U" "$W/copyup3.json" work "$1"
        "#,
        &[OsStr::new(&big2_sha)],
    );
    finish(&env, &out, &["copyup1", "copyup2", "copyup3"], 100);
}

// ---------------------------------------------------------------------------------
// 5. Owners

fn owner_entries() -> Vec<Entry> {
    vec![
        Entry::dir("own"),
        Entry::file("own/t", "owned\n").owner(7, 8).mode(0o640),
        Entry::dir("own/d").owner(9, 9).mode(0o750),
        Entry::file("own/d/x", "x\n"),
    ]
}

#[test]
fn owners_are_kept_in_the_upper_or_its_override_xattr() {
    let (env, _) = prepared("owners", owner_entries(), OWNERS_PY);
    let out = run_ns(
        &env,
        r#"rw_mount "$M" "$U"; py owners "$M" "$U" "$W/owners1.json" single; rw_umount "$M""#,
        &[],
    );
    let mut found = problems(&env, &out, &["owners1"], 6);
    let script = format!(
        r#"{WRITE_SH}
        rw_mount "$M" "$U"; py owners "$M" "$U" "$W/owners2.json" subids; rw_umount "$M"
        rw_mount "$M" "$U"; py owners "$M" "$U" "$W/owners3.json" remounted; rw_umount "$M"
        "#
    );
    match ns_sh_subids(&env, &script, &[]) {
        None => eprintln!("no subordinate ids for the test user: the chown part is skipped"),
        Some((out, _)) => found.extend(problems(&env, &out, &["owners2", "owners3"], 60)),
    }
    assert_no_problems(&found);
}

// ---------------------------------------------------------------------------------
// 6. Persistence across a remount

/// Entries seen by both walks but different in what a remount must keep.
fn remount_diffs(a: &Tree, b: &Tree) -> Vec<String> {
    let mut d = diff_trees(
        a,
        b,
        TreeChecks {
            modes: true,
            xattrs: true,
            link_groups: true,
        },
        |_| false,
    );
    for (p, x) in a {
        let Some(y) = b.get(p) else { continue };
        let mut bad = |what: &str, l: String, r: String| {
            if l != r {
                d.push(format!("'{p}': {what}: {l} before the remount, {r} after"));
            }
        };
        bad("nlink", x.nlink.to_string(), y.nlink.to_string());
        bad(
            "owner",
            format!("{}:{}", x.uid, x.gid),
            format!("{}:{}", y.uid, y.gid),
        );
        if x.kind != "d" {
            bad("mtime", x.mtime_ns.to_string(), y.mtime_ns.to_string());
        }
        // Copied-up and lower files must keep their st_ino; names made in the upper
        // may be numbered afresh.
        if !p.starts_with("up/") {
            bad("st_ino", x.ino.to_string(), y.ino.to_string());
        } else if x.ino != y.ino {
            eprintln!("note: '{p}', made in the upper, changed st_ino across the remount");
        }
    }
    d
}

#[test]
fn everything_fsynced_survives_a_remount_on_the_same_upper() {
    let (env, _) = prepared("persist", vec![], PERSIST_PY);
    let out = run_ns(
        &env,
        r#"
        rw_mount "$M" "$U"
        py persist "$M" "$U" "$W/persist1.json" apply
        walk "$M" > "$W/walk1.jsonl"
        rw_umount "$M"
        rw_mount "$M" "$U"
        py persist "$M" "$U" "$W/persist2.json" verify
        walk "$M" > "$W/walk2.jsonl"
        rw_umount "$M"
        "#,
        &[],
    );
    let mut found = problems(&env, &out, &["persist1", "persist2"], 100);
    if out.status.success() {
        let walk = |n: &str| parse_walk(&fs::read_to_string(env.path(n)).unwrap());
        let (before, after) = (walk("walk1.jsonl"), walk("walk2.jsonl"));
        assert!(
            before.len() > 200,
            "the walk saw only {} entries",
            before.len()
        );
        found.extend(remount_diffs(&before, &after));
    }
    assert_no_problems(&found);
}

// ---------------------------------------------------------------------------------
// 7. kill -9 of the daemon mid-write

#[test]
fn a_killed_daemon_leaves_an_upper_that_mounts_with_everything_fsynced() {
    if kernel_oracle() {
        eprintln!("kernel overlayfs has no daemon to kill: skipped");
        return;
    }
    let (env, _) = prepared("kill", vec![], KILL_PY);
    let out = run_ns(
        &env,
        r#"
        "$STRATA" --root "$ROOT" mount -f --upper "$U" w:v1 "$M" & spid=$!
        wait_mounted "$M"
        py kill "$M" "$U" "$W/kill1.json" write "$W/progress" & wpid=$!
        i=0
        while [ "$(cat "$W/progress" 2>/dev/null || echo 0)" -lt 40 ]; do
            i=$((i + 1)); [ $i -lt 6000 ] || { echo "the writer made no progress" >&2; break; }
            kill -0 $wpid 2>/dev/null || { echo "the writer stopped early" >&2; break; }
            sleep 0.01
        done
        kill -9 $spid
        wait $wpid || echo "the writer failed: $?" >&2
        wait $spid || true
        umount -l "$M" || echo "umount of the dead mount failed" >&2
        M2="$W/mnt2"
        mkdir -p "$M2"
        rw_mount "$M2" "$U"
        py kill "$M2" "$U" "$W/kill2.json" check "$W/progress"
        rw_umount "$M2"
        "#,
        &[],
    );
    finish(&env, &out, &["kill1", "kill2"], 40);
    let progress: u32 = fs::read_to_string(env.path("progress"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(progress >= 40, "the writer got only to round {progress}");
}

// ---------------------------------------------------------------------------------
// 8. Eight processes at once

fn concurrency_entries() -> Vec<Entry> {
    let mut l = vec![Entry::dir("cl")];
    for j in 0..16 {
        l.push(Entry::file(format!("cl/f{j}"), vec![b'L'; 8 * 4096]));
    }
    for j in 0..8 {
        l.push(Entry::file(format!("cl/del{j}"), format!("del{j}\n")));
        l.push(Entry::file(format!("cl/mv{j}"), format!("mv{j}\n")));
    }
    l
}

#[test]
fn eight_processes_changing_one_mount_lose_nothing() {
    let (env, _) = prepared("conc", concurrency_entries(), CONC_PY);
    let out = run_ns(
        &env,
        r#"
        rw_mount "$M" "$U"
        mkdir "$M/c" "$M/c/shared"
        pids=""
        for k in 0 1 2 3 4 5 6 7; do
            py conc "$M" "$U" "$W/conc-w$k.json" worker $k & pids="$pids $!"
        done
        for p in $pids; do wait $p || echo "worker $p failed" >&2; done
        py conc "$M" "$U" "$W/conc1.json" check
        rw_umount "$M"
        rw_mount "$M" "$U"
        py conc "$M" "$U" "$W/conc2.json" check
        rw_umount "$M"
        "#,
        &[],
    );
    let reports = [
        "conc-w0", "conc-w1", "conc-w2", "conc-w3", "conc-w4", "conc-w5", "conc-w6", "conc-w7",
        "conc1", "conc2",
    ];
    finish(&env, &out, &reports, 100);
}

// ---------------------------------------------------------------------------------
// 9. Symlinks never lead a write out of the upper

/// The lower's links out: to `/`, up a `..` chain, and to a directory outside the mount
/// that the test user may write (absolute, and relative from the upper, so that a
/// daemon which followed either from the upper would land there); and directories
/// whose place a symlink takes during the test.
fn escape_entries(outside: &str, rel_out: &str) -> Vec<Entry> {
    let mut l = vec![
        Entry::dir("esc"),
        Entry::symlink("esc/root", "/"),
        Entry::symlink("esc/up", "../../.."),
        Entry::symlink("esc/abs", outside),
        Entry::symlink("esc/rel", format!("../{rel_out}")),
        Entry::dir("race"),
        Entry::dir("race/d"),
        Entry::dir("race/d/sub"),
    ];
    for d in ["esc/d", "esc/e"] {
        l.push(Entry::dir(d));
        for i in 0..10 {
            l.push(Entry::file(format!("{d}/f{i}"), format!("{d}/f{i}\n")));
        }
        l.push(Entry::dir(format!("{d}/sub")));
        l.push(Entry::file(format!("{d}/sub/g"), "g\n"));
        l.push(Entry::dir(format!("{d}/sub2")));
    }
    for i in 0..20 {
        l.push(Entry::file(format!("race/d/f{i}"), format!("f{i}\n")));
    }
    for i in 0..100 {
        l.push(Entry::file(format!("race/d/del{i}"), "del\n"));
    }
    l
}

#[test]
fn symlinks_never_lead_a_write_out_of_the_upper() {
    let env = TestEnv::new("write-escape");
    let outside = env.mkdir("outside");
    fs::write(outside.join("canary"), "canary\n").unwrap();
    give_to_user(&outside);
    let outside_s = outside.display().to_string();
    // From the upper's esc/ (or the mount's root, for a link made there) as many `..` as
    // reach `/`, then down to the outside directory.
    let rel_out = format!("{}{}", "../".repeat(16), outside_s.trim_start_matches('/'));
    setup(
        &env,
        escape_entries(&outside_s, &rel_out),
        "escape",
        ESCAPE_PY,
    );
    let out = run_ns(
        &env,
        r#"
        rw_mount "$M" "$U"
        py escape "$M" "$U" "$W/escape.json" "$1" "$2"
        rw_umount "$M"
        "#,
        &[outside.as_os_str(), OsStr::new(&rel_out)],
    );
    finish(&env, &out, &["escape"], 60);
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "something was made in {}",
        outside.display()
    );
    assert_eq!(
        fs::read_to_string(outside.join("canary")).unwrap(),
        "canary\n"
    );
}

// ---------------------------------------------------------------------------------
// The tests' scripts (each ends in `main(x)`, which `install` calls)

const NAMES_PY: &str = r##"
from wops import *


def main(x):
    c, peer = x.c, x.peer
    P = x.args[0]
    with c.step(P):
        k = x.kit(P)
        peer.warm(*x.paths(k))
        names(x, k)
    if P == 'L':
        extra(x)


def names(x, k):
    c, peer = x.c, x.peer
    P = k.place
    with c.step('create'):
        new = k.base + '/new'
        fd = os.open(new, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        os.write(fd, b'new\n')
        os.close(fd)
        c.eq('content', peer.read(new), b'new\n')
        c.eq('mode', perm(peer.lstat(new)), oct(0o640))
        c.true('listed', 'new' in peer.ls(k.base))
        c.eq('the upper holds it', x.upper_read(new), b'new\n')
        for p in (k.file, k.d, k.link, k.fifo):
            c.raises('O_CREAT|O_EXCL over %s' % x.rel(p),
                     lambda: os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), 'EEXIST')
        deep = k.sub + '/new2'
        write_file(deep, b'deep')
        c.eq('a file made two directories down', peer.read(deep), b'deep')
        c.eq('listing of the directory two down', peer.ls(k.sub), ['c', 'new2'])
        c.eq('the upper holds the file two down', x.upper_read(deep), b'deep')
    with c.step('mkdir'):
        d = k.base + '/newdir'
        os.mkdir(d, 0o750)
        x.check_node(d, 'd', 0o750)
        c.eq('empty', peer.ls(d), [])
        for p in (k.file, k.d, k.link, k.empty):
            c.raises('mkdir over %s' % x.rel(p), lambda: os.mkdir(p), 'EEXIST')
        os.mkdir(d + '/inner')
        c.eq('a child', peer.ls(d), ['inner'])
        c.eq('the upper holds it', x.upper_kind(d), 'd')
    with c.step('mknod fifo'):
        f = k.base + '/newfifo'
        os.mkfifo(f, 0o600)
        x.check_node(f, 'p', 0o600)
        r = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
        w = os.open(f, os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b'ping')
        c.eq('it carries data as a fifo', os.read(r, 4), b'ping')
        os.close(w)
        os.close(r)
        os.mknod(k.base + '/newfifo2', stat.S_IFIFO | 0o640)
        c.eq('mknod S_IFIFO', kindof(peer.lstat(k.base + '/newfifo2')), 'p')
        c.eq('the upper holds a fifo', x.upper_kind(f), 'p')
    with c.step('mknod socket'):
        sp = k.base + '/sock'
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(sp)
        srv.listen(1)
        c.eq('type', kindof(peer.lstat(sp)), 's')
        cl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cl.settimeout(10)
        cl.connect(sp)
        conn, _ = srv.accept()
        cl.sendall(b'hi')
        c.eq('a client connects through the bound path', conn.recv(2), b'hi')
        for s in (conn, cl, srv):
            s.close()
        c.eq('the upper holds a socket', x.upper_kind(sp), 's')
    with c.step('symlink'):
        l = k.base + '/newlink'
        os.symlink('file', l)
        c.eq('readlink', peer.readlink(l), 'file')
        c.eq('type', kindof(peer.lstat(l)), 'l')
        c.eq('reads through to the file', peer.read(l), k.file_data)
        os.symlink('/an/absolute/target', k.base + '/newlink2')
        c.eq('readlink of an absolute target', peer.readlink(k.base + '/newlink2'), '/an/absolute/target')
        c.raises('symlink over a file', lambda: os.symlink('x', k.file), 'EEXIST')
        c.eq('the upper holds it', os.readlink(x.up(l)), 'file')
    with c.step('link'):
        hl = k.base + '/newhard'
        os.link(k.file, hl)
        s1, s2 = peer.lstat(k.file), peer.lstat(hl)
        c.eq('same inode', field(s2, 'ino'), field(s1, 'ino'))
        c.eq('nlink of the first name', field(s1, 'nlink'), 2)
        c.eq('nlink of the new name', field(s2, 'nlink'), 2)
        c.eq('mode of the new name', perm(s2), oct(0o640))
        append(hl, b'+')
        c.eq('a write through the new name shows in the old', peer.read(k.file), k.file_data + b'+')
        k.file_data += b'+'
        c.eq('xattr of the new name', peer.xattr(hl, 'user.k'), k.xattr)
        c.raises('link to a directory', lambda: os.link(k.d, k.base + '/dirlink'), 'EPERM')
        c.raises('link over an existing name', lambda: os.link(k.file, k.h2), 'EEXIST')
        os.link(k.link, k.base + '/linklink', follow_symlinks=False)
        c.eq('a hardlink of the symlink is a symlink', peer.readlink(k.base + '/linklink'), 'file')
        os.link(k.fifo, k.base + '/fifolink')
        c.eq('a hardlink of the fifo is a fifo', kindof(peer.lstat(k.base + '/fifolink')), 'p')
        c.eq('nlink of the fifo', field(peer.lstat(k.fifo), 'nlink'), 2)
    with c.step('hardlinked pair'):
        s1, s2 = peer.lstat(k.h1), peer.lstat(k.h2)
        c.eq('same inode', field(s2, 'ino'), field(s1, 'ino'))
        c.eq('nlink', (field(s1, 'nlink'), field(s2, 'nlink')), (2, 2))
        append(k.h1, b'more\n')
        c.eq('a write to h1 shows in h2', peer.read(k.h2), k.h_data + b'more\n')
        s1b, s2b = peer.lstat(k.h1), peer.lstat(k.h2)
        c.eq('h1 keeps its inode number', field(s1b, 'ino'), field(s1, 'ino'))
        c.eq('h2 still shares it', field(s2b, 'ino'), field(s1b, 'ino'))
        c.eq('size of h2', field(s2b, 'size'), len(k.h_data) + 5)
        k.h_data += b'more\n'
    with c.step('unlink'):
        for p in (k.link, k.fifo, k.h1):
            os.unlink(p)
            x.check_gone(p)
            if P == 'L':
                x.check_whiteout(p)
            else:
                c.true('the upper holds no %s (or a whiteout): %s' % (x.rel(p), x.upper_kind(p)),
                       x.upper_kind(p) in ('nothing', 'whiteout'))
        c.eq('h2 keeps the content', peer.read(k.h2), k.h_data)
        c.eq('h2 has one link left', field(peer.lstat(k.h2), 'nlink'), 1)
        c.eq('the other name of the fifo remains', kindof(peer.lstat(k.base + '/fifolink')), 'p')
        c.eq('its nlink', field(peer.lstat(k.base + '/fifolink'), 'nlink'), 1)
        c.raises('unlink a directory', lambda: os.unlink(k.d), 'EISDIR')
        c.raises('unlink a missing name', lambda: os.unlink(k.base + '/nope'), 'ENOENT')
        c.raises('unlink a deleted name', lambda: os.unlink(k.link), 'ENOENT')
    with c.step('a new name where a deleted one was'):
        write_file(k.h1, b'reborn', 0o600)
        c.eq('content', peer.read(k.h1), b'reborn')
        c.eq('mode', perm(peer.lstat(k.h1)), oct(0o600))
        c.eq('nlink', field(peer.lstat(k.h1), 'nlink'), 1)
        c.true('not the old inode', field(peer.lstat(k.h1), 'ino') != field(peer.lstat(k.h2), 'ino'))
        c.eq('h2 unchanged', peer.read(k.h2), k.h_data)
        c.eq('the upper holds a file', x.upper_kind(k.h1), 'f')
        os.mkdir(k.fifo, 0o700)
        c.eq('a directory where the fifo was', kindof(peer.lstat(k.fifo)), 'd')
        c.eq('it is empty', peer.ls(k.fifo), [])
    with c.step('rmdir'):
        c.raises('rmdir a directory with children', lambda: os.rmdir(k.d), 'ENOTEMPTY')
        c.raises('rmdir a file', lambda: os.rmdir(k.file), 'ENOTDIR')
        os.rmdir(k.empty)
        x.check_gone(k.empty)
        if P == 'L':
            x.check_whiteout(k.empty)
        os.unlink(k.a)
        c.raises('rmdir while a subdirectory remains', lambda: os.rmdir(k.d), 'ENOTEMPTY')
        os.unlink(k.c)
        c.raises('rmdir while a file made through the mount remains', lambda: os.rmdir(k.sub), 'ENOTEMPTY')
        os.unlink(k.sub + '/new2')
        c.eq('sub is empty now', peer.ls(k.sub), [])
        os.rmdir(k.sub)
        c.eq('dir is empty now', peer.ls(k.d), [])
        os.rmdir(k.d)
        x.check_gone(k.d)
        if P == 'L':
            x.check_whiteout(k.d)
    with c.step('a directory made where a deleted one was'):
        os.mkdir(k.d, 0o755)
        c.eq('it shows none of the old children', peer.ls(k.d), [])
        c.eq('mode', perm(peer.lstat(k.d)), oct(0o755))
        if P == 'L':
            c.eq('the upper marks it opaque', x.upper_xattr(k.d, 'user.overlay.opaque'), b'y')
        x.check_private_hidden(k.d)
        c.raises('no opaque xattr through the mount', lambda: os.getxattr(k.d, 'user.overlay.opaque'),
                 'ENODATA', 'EPERM', 'EOPNOTSUPP')
        os.mkdir(k.d + '/sub')
        c.eq('a new subdirectory is empty too', peer.ls(k.d + '/sub'), [])
    with c.step('the whole directory'):
        expect = sorted(['dir', 'fifo', 'fifolink', 'file', 'h1', 'h2', 'linklink', 'new', 'newdir',
                         'newfifo', 'newfifo2', 'newhard', 'newlink', 'newlink2', 'sock'] + k.old)
        c.eq('listing', peer.ls(k.base), expect)
        if P != 'U':
            c.raises('rmdir with lower children left', lambda: os.rmdir(k.base), 'ENOTEMPTY')
        for n in expect:
            p = k.base + '/' + n
            if os.path.isdir(p) and not os.path.islink(p):
                for sub in os.listdir(p):
                    os.rmdir(p + '/' + sub)
                os.rmdir(p)
            else:
                os.unlink(p)
        c.eq('empty', peer.ls(k.base), [])
        os.rmdir(k.base)
        x.check_gone(k.base)
        if P != 'U':
            x.check_whiteout(k.base)
        os.mkdir(k.base)
        c.eq('made again, it is empty', peer.ls(k.base), [])
        if P != 'U':
            c.eq('and opaque in the upper', x.upper_xattr(k.base, 'user.overlay.opaque'), b'y')


def extra(x):
    c, peer = x.c, x.peer
    with c.step('a char 0/0 device made through the mount'):
        p = x.M + '/lo/s5/zerodev'
        try:
            os.mknod(p, stat.S_IFCHR | 0o644, os.makedev(0, 0))
            c.note('mknod of a char 0/0 device through the mount worked; lstat then says %r, the directory lists it: %r'
                   % (peer.lstat(p), 'zerodev' in peer.ls(x.M + '/lo/s5')))
        except OSError as e:
            c.note('mknod of a char 0/0 device through the mount: %s' % ename(e))

"##;

const RENAME_PY: &str = r##"
from wops import *

NEXT = {'L': 'U', 'U': 'M', 'M': 'L'}

def moved(x, src, dst, lower):
    """Renames, and checks the old name is gone (and whited out if it was a lower one)."""
    os.rename(src, dst)
    x.check_gone(src)
    if lower:
        x.check_whiteout(src)


def main(x):
    c, peer = x.c, x.peer
    K = {P: {role: x.kit(P) for role in 'ABCDT'} for P in 'LUM'}
    for P in 'LUM':
        for k in K[P].values():
            peer.warm(*x.paths(k))
    for P in 'LUM':
        with c.step(P):
            files(x, K[P]['A'], K[NEXT[P]]['T'])
            dirs(x, K[P]['B'], K[P]['C'], K[P]['T'], K[NEXT[P]]['T'])
            noreplace(x, K[P]['D'])
    exchange(x, K)


def files(x, A, O):
    c, peer = x.c, x.peer
    P = A.place
    with c.step('a file in its directory'):
        dst = A.base + '/file.mv'
        ino = field(peer.lstat(A.file), 'ino')
        moved(x, A.file, dst, P == 'L')
        st = peer.lstat(dst)
        c.eq('content', peer.read(dst), A.file_data)
        c.eq('mode', perm(st), oct(0o640))
        c.eq('mtime', field(st, 'mtime_ns'), LOWER_MTIME_NS)
        c.eq('xattr', peer.xattr(dst, 'user.k'), A.xattr)
        c.eq('inode number', field(st, 'ino'), ino)
    with c.step('a file into a directory of another kind (%s)' % O.place):
        dst2 = O.base + '/from-' + P
        moved(x, A.base + '/file.mv', dst2, False)
        c.eq('content', peer.read(dst2), A.file_data)
        c.eq('the upper holds it', x.upper_read(dst2), A.file_data)
    with c.step('a hardlinked file over an existing file'):
        ino = field(peer.lstat(A.h2), 'ino')
        os.rename(A.h1, O.file)
        x.check_gone(A.h1)
        c.eq('content of the target', peer.read(O.file), A.h_data)
        s1, s2 = peer.lstat(O.file), peer.lstat(A.h2)
        c.eq('the target shares the inode of the other name', field(s1, 'ino'), field(s2, 'ino'))
        c.eq('which kept its number', field(s2, 'ino'), ino)
        c.eq('nlink', (field(s1, 'nlink'), field(s2, 'nlink')), (2, 2))
        append(O.file, b'!')
        c.eq('a write through the new name shows in the other', peer.read(A.h2), A.h_data + b'!')
        A.h_data += b'!'
    with c.step('a symlink and a fifo'):
        os.rename(A.link, A.base + '/link.mv')
        c.eq('readlink', peer.readlink(A.base + '/link.mv'), 'file')
        x.check_gone(A.link)
        os.rename(A.fifo, A.d + '/fifo.mv')
        c.eq('the fifo moved into a subdirectory', kindof(peer.lstat(A.d + '/fifo.mv')), 'p')
        x.check_gone(A.fifo)
    with c.step('onto itself and onto another name of its inode'):
        os.rename(A.h2, A.h2)
        c.eq('unchanged', peer.read(A.h2), A.h_data)
        os.link(A.h2, A.base + '/h3')
        os.rename(A.h2, A.base + '/h3')
        c.eq('both names remain (POSIX)', (kindof(peer.lstat(A.h2)), kindof(peer.lstat(A.base + '/h3'))), ('f', 'f'))
        c.eq('nlink', field(peer.lstat(A.h2), 'nlink'), 3)
    with c.step('a file over a directory and a directory over a file'):
        c.raises('file over a directory', lambda: os.rename(A.base + '/h3', A.d), 'EISDIR')
        c.raises('directory over a file', lambda: os.rename(A.empty, A.base + '/h3'), 'ENOTDIR')
        c.raises('a missing name', lambda: os.rename(A.base + '/nope', A.base + '/nope2'), 'ENOENT')


def dirs(x, B, C, T, O):
    c, peer = x.c, x.peer
    P = B.place
    with c.step('a directory in its parent'):
        nd = B.base + '/dir.mv'
        moved(x, B.d, nd, P == 'L')
        c.eq('listing', peer.ls(nd), ['a', 'sub'])
        c.eq('a file two down', peer.read(nd + '/sub/c'), b'c\n')
        c.eq('mode', perm(peer.lstat(nd)), oct(0o750))
    with c.step('a directory into a parent of another kind (%s)' % O.place):
        nd2 = O.base + '/dir-from-' + P
        moved(x, B.base + '/dir.mv', nd2, False)
        c.eq('listing', peer.ls(nd2), ['a', 'sub'])
        append(nd2 + '/a', b'+')
        c.eq('a write to a child after the move', peer.read(nd2 + '/a'), b'a\n+')
        write_file(nd2 + '/sub/new', b'n')
        os.unlink(nd2 + '/sub/c')
        c.eq('a new and a deleted child two down', peer.ls(nd2 + '/sub'), ['new'])
    with c.step('a directory moved back where it was'):
        os.rename(O.base + '/dir-from-' + P, B.d)
        c.eq('listing', peer.ls(B.d), ['a', 'sub'])
        c.eq('the deleted child stays deleted', peer.ls(B.sub), ['new'])
        c.eq('the changed child stays changed', peer.read(B.a), b'a\n+')
    with c.step('a directory over an empty directory'):
        os.rename(B.d, B.empty)
        x.check_gone(B.d)
        c.eq('listing', peer.ls(B.empty), ['a', 'sub'])
        c.eq('two down', peer.ls(B.empty + '/sub'), ['new'])
    with c.step('a directory over one whose lower children were all deleted'):
        os.unlink(C.a)
        os.unlink(C.c)
        os.rmdir(C.sub)
        c.eq('the target looks empty', peer.ls(C.d), [])
        os.rename(B.empty, C.d)
        c.eq('listing', peer.ls(C.d), ['a', 'sub'])
        c.eq('no deleted lower child comes back two down', peer.ls(C.sub), ['new'])
        c.eq('content', peer.read(C.a), b'a\n+')
    with c.step('a directory over a non-empty directory'):
        nd = B.base + '/nd'
        os.mkdir(nd)
        c.raises('over a directory with children', lambda: os.rename(nd, T.d), 'ENOTEMPTY')
        c.eq('the target is unchanged', peer.ls(T.d), ['a', 'sub'])
        c.raises('into its own subdirectory', lambda: os.rename(C.d, C.sub + '/x'), 'EINVAL')
    with c.step('the parent of it all'):
        nb = B.base + '.mv'
        os.rename(B.base, nb)
        x.check_gone(B.base)
        c.eq('listing of the moved parent', peer.ls(nb),
             sorted(['fifo', 'file', 'h1', 'h2', 'link', 'nd'] + B.old))
        c.eq('a file in it', peer.read(nb + '/file'), B.file_data)
        s1, s2 = peer.lstat(nb + '/h1'), peer.lstat(nb + '/h2')
        c.eq('the hardlinked pair in it shares an inode', field(s1, 'ino'), field(s2, 'ino'))
        c.eq('and has two links', field(s1, 'nlink'), 2)
        if P != 'U':
            x.check_whiteout(B.base)
    with c.step('a new directory under the old name of a moved one'):
        # The daemon keeps descriptors of upper directories by path: the name must
        # lead to the new directory, the moved one keep what it had.
        os.mkdir(B.base)
        write_file(B.base + '/file', b'new')
        os.mkdir(B.base + '/d')
        write_file(B.base + '/d/a', b'new a')
        c.eq('the new directory holds only what was made in it', peer.ls(B.base), ['d', 'file'])
        c.eq('its file', peer.read(B.base + '/file'), b'new')
        c.eq('two down', peer.read(B.base + '/d/a'), b'new a')
        c.eq('the upper holds it there', x.upper_read(B.base + '/d/a'), b'new a')
        c.eq('the moved one keeps its file', peer.read(nb + '/file'), B.file_data)
        c.eq('and its directory', peer.ls(nb + '/nd'), [])


def noreplace(x, D):
    c, peer = x.c, x.peer
    with c.step('RENAME_NOREPLACE'):
        c.raises('onto a file', lambda: renameat2(D.h1, D.file, RENAME_NOREPLACE), 'EEXIST')
        c.raises('onto a directory', lambda: renameat2(D.empty, D.d, RENAME_NOREPLACE), 'EEXIST')
        c.raises('onto a symlink', lambda: renameat2(D.h1, D.link, RENAME_NOREPLACE), 'EEXIST')
        c.eq('the target is unchanged', peer.read(D.file), D.file_data)
        c.eq('the source is unchanged', peer.read(D.h1), D.h_data)
        renameat2(D.link, D.base + '/link.nr', RENAME_NOREPLACE)
        c.eq('onto a new name', peer.readlink(D.base + '/link.nr'), 'file')
        x.check_gone(D.link)
        os.unlink(D.fifo)
        renameat2(D.h1, D.fifo, RENAME_NOREPLACE)
        c.eq('onto a deleted name', peer.read(D.fifo), D.h_data)
        c.eq('which is a file now', kindof(peer.lstat(D.fifo)), 'f')
        renameat2(D.empty, D.base + '/empty.nr', RENAME_NOREPLACE)
        c.eq('a directory onto a new name', peer.ls(D.base + '/empty.nr'), [])


def exchange(x, K):
    c, peer = x.c, x.peer
    L, U, M = K['L']['D'], K['U']['D'], K['M']['D']
    with c.step('RENAME_EXCHANGE of a lower file and an upper file'):
        renameat2(L.file, U.file, RENAME_EXCHANGE)
        c.eq('the lower name shows the upper data', peer.read(L.file), U.file_data)
        c.eq('the upper name shows the lower data', peer.read(U.file), L.file_data)
        c.eq('xattrs went along (lower name)', peer.xattr(L.file, 'user.k'), U.xattr)
        c.eq('xattrs went along (upper name)', peer.xattr(U.file, 'user.k'), L.xattr)
        c.eq('the upper holds the upper data under the lower name', x.upper_read(L.file), U.file_data)
        c.eq('and the lower data under the upper name', x.upper_read(U.file), L.file_data)
    with c.step('RENAME_EXCHANGE of a merged-dir file and a lower directory'):
        renameat2(M.file, L.d, RENAME_EXCHANGE)
        c.eq('the file name holds the directory', peer.ls(M.file), ['a', 'sub'])
        c.eq('a child of it', peer.read(M.file + '/sub/c'), b'c\n')
        c.eq('the directory name holds the file', peer.read(L.d), M.file_data)
    with c.step('RENAME_EXCHANGE of two directories'):
        write_file(U.d + '/only-upper', b'u')
        renameat2(U.d, M.d, RENAME_EXCHANGE)
        c.eq('one', peer.ls(M.d), ['a', 'only-upper', 'sub'])
        c.eq('the other', peer.ls(U.d), ['a', 'sub'])
    with c.step('RENAME_EXCHANGE with a missing name'):
        c.raises('missing target', lambda: renameat2(L.h2, L.base + '/nope', RENAME_EXCHANGE), 'ENOENT')
        c.eq('nothing moved', peer.read(L.h2), L.h_data)

"##;

const DATA_PY: &str = r##"
from wops import *
import fcntl, mmap


def main(x):
    c, peer = x.c, x.peer
    P = x.args[0]
    K = {role: x.kit(P) for role in 'ABCD'}
    for k in K.values():
        peer.warm(*x.paths(k))
    with c.step(P):
        attrs(x, K['A'])
        data(x, K['B'])
        cfr_xattrs_locks(x, K['C'])
        opens(x, K['D'])
    if P != 'L':
        return
    with c.step('statfs'):
        sm, su = os.statvfs(x.M), os.statvfs(x.U)
        c.eq('size of the filesystem as the upper\'s', sm.f_blocks * sm.f_frsize, su.f_blocks * su.f_frsize)
        c.true('free space shows (%d blocks)' % sm.f_bavail, sm.f_bavail > 0)
        c.true('name length limit %d' % sm.f_namemax, sm.f_namemax >= 200)
        fd = os.open(x.M + '/lo/s0/h2', os.O_RDONLY)
        sf = os.fstatvfs(fd)
        os.close(fd)
        c.eq('fstatvfs of a lower file says the same', sf.f_blocks * sf.f_frsize, sm.f_blocks * sm.f_frsize)


def attrs(x, k):
    c, peer = x.c, x.peer
    with c.step('chmod'):
        os.chmod(k.file, 0o600)
        st = peer.lstat(k.file)
        c.eq('mode', perm(st), oct(0o600))
        c.eq('mtime unchanged', field(st, 'mtime_ns'), LOWER_MTIME_NS)
        c.eq('content unchanged', peer.read(k.file), k.file_data)
        c.eq('xattr kept', peer.xattr(k.file, 'user.k'), k.xattr)
        c.eq('the upper records the mode', x.upper_mode(k.file), oct(0o600))
        os.chmod(k.d, 0o700)
        c.eq('a directory', perm(peer.lstat(k.d)), oct(0o700))
        c.eq('its children are still there', peer.ls(k.d), ['a', 'sub'])
        os.chmod(k.fifo, 0o620)
        c.eq('a fifo', perm(peer.lstat(k.fifo)), oct(0o620))
        os.chmod(k.h1, 0o4755)
        c.eq('setuid', perm(peer.lstat(k.h1)), oct(0o4755))
        c.eq('the other name of the pair', perm(peer.lstat(k.h2)), oct(0o4755))
        os.chmod(k.link, 0o604)
        c.eq('through a symlink it changes the file', perm(peer.lstat(k.file)), oct(0o604))
        c.eq('not the symlink', perm(peer.lstat(k.link)), oct(0o777))
    with c.step('chown within the namespace'):
        os.chown(k.file, 0, 0)
        os.chown(k.d, 0, 0)
        os.lchown(k.link, 0, 0)
        c.eq('owner', (field(peer.lstat(k.file), 'uid'), field(peer.lstat(k.file), 'gid')), (0, 0))
        c.eq('mode after chown', perm(peer.lstat(k.file)), oct(0o604))
        c.eq('readlink after lchown', peer.readlink(k.link), 'file')
    with c.step('utimens'):
        A, B = 1_500_000_000_111_111_111, 1_400_000_000_222_222_222
        os.utime(k.file, ns=(A, B))
        st = peer.lstat(k.file)
        c.eq('mtime', field(st, 'mtime_ns'), B)
        c.eq('atime', field(st, 'atime_ns'), A)
        c.eq('content unchanged', peer.read(k.file), k.file_data)
        c.eq('the upper file has the mtime', os.lstat(x.up(k.file)).st_mtime_ns, B)
        os.utime(k.d, ns=(A, B + 1))
        c.eq('a directory', field(peer.lstat(k.d), 'mtime_ns'), B + 1)
        os.utime(k.link, ns=(A, B + 2), follow_symlinks=False)
        c.eq('a symlink itself', field(peer.lstat(k.link), 'mtime_ns'), B + 2)
        c.eq('not its target', field(peer.lstat(k.file), 'mtime_ns'), B)
        os.utime(k.fifo, ns=(A, B + 3))
        c.eq('a fifo', field(peer.lstat(k.fifo), 'mtime_ns'), B + 3)
        os.utime(k.h2)
        c.true('UTIME_NOW', field(peer.lstat(k.h2), 'mtime_ns') > 1_700_000_000 * 10**9)
        c.eq('on both names', field(peer.lstat(k.h1), 'mtime_ns'), field(peer.lstat(k.h2), 'mtime_ns'))


def data(x, k):
    c, peer = x.c, x.peer
    with c.step('write'):
        fd = os.open(k.file, os.O_RDWR)
        os.pwrite(fd, b'XY', 1)
        want = k.file_data[:1] + b'XY' + k.file_data[3:]
        c.eq('read back on the same descriptor', os.pread(fd, 100, 0), want)
        c.eq('another process reads it', peer.read(k.file), want)
        with c.step('fsync'):
            os.fsync(fd)
            os.fdatasync(fd)
        os.close(fd)
        c.eq('mode kept', perm(peer.lstat(k.file)), oct(0o640))
        c.eq('xattr kept', peer.xattr(k.file, 'user.k'), k.xattr)
        c.eq('the upper holds it', x.upper_read(k.file), want)
        fd = os.open(k.file, os.O_WRONLY)
        os.pwrite(fd, b'far', 100)
        os.close(fd)
        want2 = want + b'\0' * (100 - len(want)) + b'far'
        c.eq('a write past the end leaves zeros before it', peer.read(k.file), want2)
        c.eq('size', field(peer.lstat(k.file), 'size'), 103)
    with c.step('fsync of directories'):
        sync_dir(k.base)
        sync_dir(k.d)
    with c.step('truncate'):
        os.truncate(k.h1, 4)
        c.eq('shorter, seen through the other name', peer.read(k.h2), k.h_data[:4])
        os.truncate(k.h1, 10000)
        c.eq('longer', peer.read(k.h2), k.h_data[:4] + b'\0' * 9996)
        c.eq('size', field(peer.lstat(k.h2), 'size'), 10000)
        fd = os.open(k.a, os.O_RDWR)
        os.ftruncate(fd, 1)
        c.eq('ftruncate', peer.read(k.a), b'a')
        os.close(fd)
        os.truncate(k.c, 0)
        c.eq('to zero', peer.read(k.c), b'')
        c.eq('the upper holds the shorter file', x.upper_read(k.a), b'a')
    with c.step('fallocate'):
        fd = os.open(k.file, os.O_RDWR)
        size = os.fstat(fd).st_size
        fallocate(fd, 0, 0, 8192)
        c.eq('mode 0 past the end grows the file', field(peer.lstat(k.file), 'size'), 8192)
        c.eq('with zeros', peer.read(k.file)[size:], b'\0' * (8192 - size))
        fallocate(fd, KEEP_SIZE, 8192, 1 << 20)
        st = peer.lstat(k.file)
        c.eq('KEEP_SIZE keeps the size', field(st, 'size'), 8192)
        c.true('KEEP_SIZE allocates: %r blocks' % field(st, 'blocks'),
               isinstance(st, dict) and st['blocks'] * 512 >= (1 << 20))
        os.pwrite(fd, b'D' * 8192, 0)
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 0, 4096)
        c.eq('PUNCH_HOLE zeroes the range', peer.read(k.file), b'\0' * 4096 + b'D' * 4096)
        c.eq('and keeps the size', field(peer.lstat(k.file), 'size'), 8192)
        os.close(fd)
        c.eq('the upper holds it', x.upper_read(k.file), b'\0' * 4096 + b'D' * 4096)


def cfr_xattrs_locks(x, k):
    c, peer = x.c, x.peer
    with c.step('copy_file_range'):
        src = os.open(k.file, os.O_RDONLY)
        dst_path = k.base + '/cfr'
        dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        done = 0
        while done < len(k.file_data):
            n = os.copy_file_range(src, dst, len(k.file_data) - done, done, done)
            if n == 0:
                break
            done += n
        os.close(dst)
        os.close(src)
        c.eq('from this file into a new file', peer.read(dst_path), k.file_data)
        src = os.open(dst_path, os.O_RDONLY)
        dst = os.open(k.a, os.O_WRONLY)
        n = os.copy_file_range(src, dst, 3, 0, 1)
        os.close(dst)
        os.close(src)
        c.eq('bytes copied', n, 3)
        c.eq('from the new file into this place\'s file at an offset', peer.read(k.a), b'a' + k.file_data[:3])
    with c.step('xattrs'):
        os.setxattr(k.file, 'user.new', b'\x00\xffbin')
        c.eq('set', peer.xattr(k.file, 'user.new'), b'\x00\xffbin')
        c.eq('list', peer.xattrs(k.file), ['user.k', 'user.new'])
        c.eq('the upper holds both', (x.upper_xattr(k.file, 'user.k'), x.upper_xattr(k.file, 'user.new')),
             (k.xattr, b'\x00\xffbin'))
        big = bytes(range(256)) * 4
        os.setxattr(k.file, 'user.big', big)
        c.eq('a 1 KiB value', peer.xattr(k.file, 'user.big'), big)
        c.raises('XATTR_CREATE over an existing one', lambda: os.setxattr(k.file, 'user.k', b'x', os.XATTR_CREATE), 'EEXIST')
        c.raises('XATTR_REPLACE of a missing one', lambda: os.setxattr(k.file, 'user.nope', b'x', os.XATTR_REPLACE), 'ENODATA')
        os.setxattr(k.file, 'user.k', b'replaced', os.XATTR_REPLACE)
        c.eq('XATTR_REPLACE', peer.xattr(k.file, 'user.k'), b'replaced')
        os.removexattr(k.file, 'user.k')
        c.eq('removed', peer.xattr(k.file, 'user.k'), 'error:ENODATA')
        c.eq('list after removing', peer.xattrs(k.file), ['user.big', 'user.new'])
        c.eq('the upper lost it too', x.upper_xattr(k.file, 'user.k'), 'error:ENODATA')
        c.raises('remove a missing one', lambda: os.removexattr(k.file, 'user.k'), 'ENODATA')
        os.setxattr(k.d, 'user.dir', b'd')
        c.eq('on a directory', peer.xattr(k.d, 'user.dir'), b'd')
        c.eq('whose children stay', peer.ls(k.d), ['a', 'sub'])
        c.raises('user.* on a symlink', lambda: os.setxattr(k.link, 'user.x', b'1', follow_symlinks=False), 'EPERM')
        c.eq('content unchanged', peer.read(k.file), k.file_data)
        x.check_private_hidden(k.file)
        x.check_private_hidden(k.d)
    with c.step('flock'):
        fd = os.open(k.c, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        c.eq('another process cannot take it', peer.trylock(k.c, 'flock'), 'error:EAGAIN')
        fcntl.flock(fd, fcntl.LOCK_UN)
        c.eq('after unlocking it can', peer.trylock(k.c, 'flock'), 'locked')
        fcntl.flock(fd, fcntl.LOCK_SH)
        c.eq('a shared lock beside a shared lock', peer.trylock(k.c, 'flock_sh'), 'locked')
        c.eq('no exclusive beside a shared lock', peer.trylock(k.c, 'flock'), 'error:EAGAIN')
        os.close(fd)
        fd = os.open(k.h1, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        c.eq('a lock on h1 holds h2, the same file', peer.trylock(k.h2, 'flock'), 'error:EAGAIN')
        os.close(fd)
    with c.step('POSIX locks'):
        fd = os.open(k.c, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        got = peer.trylock(k.c, 'lockf')
        c.true('another process cannot take it: %r' % got, got in ('error:EAGAIN', 'error:EACCES'))
        fcntl.lockf(fd, fcntl.LOCK_UN)
        c.eq('after unlocking it can', peer.trylock(k.c, 'lockf'), 'locked')
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
        got = peer.trylock(k.c, 'lockf')
        c.true('a lock on bytes 0-9 holds off a whole-file lock: %r' % got, got in ('error:EAGAIN', 'error:EACCES'))
        os.close(fd)
        fd = os.open(k.h2, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        got = peer.trylock(k.h1, 'lockf')
        c.true('a lock on h2 holds h1, the same file: %r' % got, got in ('error:EAGAIN', 'error:EACCES'))
        os.close(fd)
        c.eq('closing releases it', peer.trylock(k.h1, 'lockf'), 'locked')


def opens(x, k):
    c, peer = x.c, x.peer
    with c.step('O_TRUNC'):
        fd = os.open(k.file, os.O_WRONLY | os.O_TRUNC)
        c.eq('fstat size', os.fstat(fd).st_size, 0)
        c.eq('another process sees it empty', peer.read(k.file), b'')
        os.write(fd, b'T')
        os.close(fd)
        c.eq('then written', peer.read(k.file), b'T')
        c.eq('mode kept', perm(peer.lstat(k.file)), oct(0o640))
        c.eq('xattr kept', peer.xattr(k.file, 'user.k'), k.xattr)
        fd = os.open(k.a, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        c.eq('O_CREAT|O_TRUNC of an existing file', (peer.read(k.a), perm(peer.lstat(k.a))), (b'', oct(0o644)))
    with c.step('O_APPEND'):
        f1 = os.open(k.h1, os.O_WRONLY | os.O_APPEND)
        f2 = os.open(k.h2, os.O_WRONLY | os.O_APPEND)
        os.write(f1, b'1')
        os.write(f2, b'2')
        os.write(f1, b'3')
        os.lseek(f1, 0, os.SEEK_SET)
        os.write(f1, b'4')
        os.close(f1)
        os.close(f2)
        c.eq('every write lands at the end', peer.read(k.h1), k.h_data + b'1234')
        k.h_data += b'1234'
    with c.step('mmap MAP_SHARED'):
        fd = os.open(k.c, os.O_RDWR)
        os.ftruncate(fd, 8192)
        mm = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[0:5] = b'MMAP!'
        mm[4096:4100] = b'PAGE'
        mm.flush()
        want = b'MMAP!' + b'\0' * 4091 + b'PAGE' + b'\0' * 4092
        c.eq('read back through another open of this process', read_file(k.c), want)
        c.eq('another process reads it', peer.read(k.c), want)
        mm[5:6] = b'?'
        mm.close()
        os.close(fd)
        want = want[:5] + b'?' + want[6:]
        c.eq('a store after the flush, after close', peer.read(k.c), want)
        fd = os.open(k.h2, os.O_RDWR)
        mm = mmap.mmap(fd, 0)
        mm[0:1] = b'#'
        mm.close()
        os.close(fd)
        k.h_data = b'#' + k.h_data[1:]
        c.eq('a mapping of a whole file shows in its other name', peer.read(k.h1), k.h_data)
    with c.step('a file unlinked while open'):
        fd = os.open(k.file, os.O_RDWR)
        os.unlink(k.file)
        c.eq('nlink', os.fstat(fd).st_nlink, 0)
        c.eq('its data is readable', os.pread(fd, 100, 0), b'T')
        os.pwrite(fd, b'UV', 1)
        c.eq('and writable', os.pread(fd, 100, 0), b'TUV')
        c.eq('fstat size', os.fstat(fd).st_size, 3)
        x.check_gone(k.file)
        write_file(k.file, b'new', 0o600)
        c.eq('a new file of that name is another file', peer.read(k.file), b'new')
        c.eq('the open one is unchanged', os.pread(fd, 100, 0), b'TUV')
        os.close(fd)
        c.eq('after close the new file stays', peer.read(k.file), b'new')
        c.eq('the upper holds the new file', x.upper_read(k.file), b'new')
        fd = os.open(k.h2, os.O_RDWR)
        os.unlink(k.h2)
        c.eq('nlink of an open name of a pair', os.fstat(fd).st_nlink, 1)
        c.eq('nlink the other name shows', field(peer.lstat(k.h1), 'nlink'), 1)
        os.pwrite(fd, b'%', 0)
        os.close(fd)
        c.eq('a write through the unlinked name reaches the other', peer.read(k.h1)[:1], b'%')

"##;

const COPYUP_PY: &str = r##"
from wops import *

BIG = 64 << 20


def sparse_sha(z_at):
    h = hashlib.sha256()
    first = bytearray(b'S' * 4096)
    first[z_at] = ord('Z')
    h.update(first)
    zero = b'\0' * (1 << 20)

    def zeros(n):
        while n:
            k = min(n, len(zero))
            h.update(zero[:k])
            n -= k
    zeros((32 << 20) - 4096)
    h.update(b'T' * 4096)
    zeros(BIG - (32 << 20) - 4096)
    return h.hexdigest()


NAMES = ['meta', 'w', 'sx', 'dir', 'h1', 'h2', 'big', 'big2']


def main(x):
    c, peer = x.c, x.peer
    phase, big2_sha = x.args
    cu = x.M + '/cu'
    p = {n: cu + '/' + n for n in NAMES}
    inos_path = os.environ['W'] + '/cu-inos.json'
    if phase == 'work':
        left = []
        for root, dirs, files in os.walk(x.U + '.work'):
            left += [os.path.join(root, f) for f in files]
        c.eq('nothing left in the work dir after the mounts', left, [])
        return
    if phase == 'first':
        inos = {n: os.lstat(p[n]).st_ino for n in NAMES}
        with open(inos_path, 'w') as f:
            json.dump(inos, f)
        peer.warm(*[p[n] for n in NAMES if not n.startswith('big')])
        first(x, p, big2_sha)
    else:
        with open(inos_path) as f:
            inos = json.load(f)
    with c.step('inode numbers (%s)' % phase):
        for n in NAMES:
            c.eq('st_ino of cu/%s as it was before the copy-up' % n, field(peer.lstat(p[n]), 'ino'), inos[n])
        c.eq('the pair still shares it', field(peer.lstat(p['h2']), 'ino'), field(peer.lstat(p['h1']), 'ino'))
    with c.step('everything again (%s)' % phase):
        again(x, p, big2_sha)


def kept(x, p, mode, xattrs, data):
    """What the mount and the upper say of a copied-up file."""
    c, peer = x.c, x.peer
    st = peer.lstat(p)
    c.eq('mode', perm(st), oct(mode))
    c.eq('mtime', field(st, 'mtime_ns'), LOWER_MTIME_NS)
    c.eq('xattr names', peer.xattrs(p), sorted(xattrs))
    for k, v in xattrs.items():
        c.eq('xattr ' + k, peer.xattr(p, k), v)
    c.eq('content', peer.read(p), data)
    c.eq('nlink', field(st, 'nlink'), 1)
    c.eq('the upper holds a file', x.upper_kind(p), 'f')
    c.eq('the upper records the mode', x.upper_mode(p), oct(mode))
    c.eq('the upper file has the lower mtime', os.lstat(x.up(p)).st_mtime_ns if x.upper_kind(p) == 'f' else None,
         LOWER_MTIME_NS)
    for k, v in xattrs.items():
        c.eq('the upper holds xattr ' + k, x.upper_xattr(p, k), v)


def first(x, p, big2_sha):
    c, peer = x.c, x.peer
    with c.step('a metadata-only change (setxattr)'):
        os.setxattr(p['meta'], 'user.added', b'1')
        kept(x, p['meta'], 0o640, {'user.k': b'v', 'user.bin': b'\x00\x01\x02\xff', 'user.added': b'1'},
             b'meta data\n')
    with c.step('open for writing, then setxattr, of a setuid file'):
        os.close(os.open(p['sx'], os.O_RDWR))
        c.eq('mode after an open for writing', perm(peer.lstat(p['sx'])), oct(0o4750))
        os.setxattr(p['sx'], 'user.added', b'1')
        kept(x, p['sx'], 0o4750, {'user.added': b'1'}, b'suid\n')
    with c.step('a write'):
        fd = os.open(p['w'], os.O_WRONLY)
        os.pwrite(fd, b'W', 0)
        os.close(fd)
        st = peer.lstat(p['w'])
        c.eq('mode', perm(st), oct(0o640))
        c.eq('xattr', peer.xattr(p['w'], 'user.k'), b'w')
        c.eq('content', peer.read(p['w']), b'Write me\n')
        c.eq('the upper holds the data', x.upper_read(p['w']), b'Write me\n')
        c.eq('and the xattr', x.upper_xattr(p['w'], 'user.k'), b'w')
        c.eq('and the mode', x.upper_mode(p['w']), oct(0o640))
    with c.step('a hardlinked pair'):
        append(p['h1'], b'+')
        c.eq('the other name', peer.read(p['h2']), b'pair\n+')
    with c.step('a lower directory, by a new child'):
        write_file(p['dir'] + '/child', b'child')
        st = peer.lstat(p['dir'])
        c.eq('mode', perm(st), oct(0o710))
        c.eq('xattr', peer.xattr(p['dir'], 'user.d'), b'dv')
        c.eq('listing', peer.ls(p['dir']), ['child', 'lowerchild'])
        c.eq('the upper holds a directory', x.upper_kind(p['dir']), 'd')
        c.eq('with the mode', x.upper_mode(p['dir']), oct(0o710))
        c.eq('and the xattr', x.upper_xattr(p['dir'], 'user.d'), b'dv')
    with c.step('a write to a big sparse file'):
        c.eq('size', field(peer.lstat(p['big']), 'size'), BIG)
        fd = os.open(p['big'], os.O_WRONLY)
        os.pwrite(fd, b'Z', 100)
        os.close(fd)
        c.eq('content', peer.sha(p['big']), sparse_sha(100))
        st = os.lstat(x.up(p['big']))
        c.eq('size of the upper copy', st.st_size, BIG)
        c.true('the upper copy keeps the holes: it holds %d bytes of data for 8 KiB written' % (st.st_blocks * 512),
               st.st_blocks * 512 <= (1 << 20))
    with c.step('chmod of a big file'):
        os.chmod(p['big2'], 0o600)
        c.eq('mode', perm(peer.lstat(p['big2'])), oct(0o600))
        c.eq('content', peer.sha(p['big2']), big2_sha)
        k = x.upper_kind(p['big2'])
        if k == 'f':
            st = os.lstat(x.up(p['big2']))
            c.note('chmod of a 32 MiB lower file: the upper holds a file of size %d with %d bytes allocated (%s)'
                   % (st.st_size, st.st_blocks * 512,
                      'the data was copied' if st.st_blocks * 512 >= (32 << 20) else 'a metadata-only copy-up'))
        else:
            c.note('chmod of a 32 MiB lower file: the upper holds %s for it' % k)


def again(x, p, big2_sha):
    c, peer = x.c, x.peer
    with c.step('cu/meta'):
        kept(x, p['meta'], 0o640, {'user.k': b'v', 'user.bin': b'\x00\x01\x02\xff', 'user.added': b'1'},
             b'meta data\n')
    with c.step('cu/sx'):
        kept(x, p['sx'], 0o4750, {'user.added': b'1'}, b'suid\n')
    c.eq('cu/w', peer.read(p['w']), b'Write me\n')
    c.eq('cu/h2', peer.read(p['h2']), b'pair\n+')
    c.eq('cu/dir', (perm(peer.lstat(p['dir'])), peer.ls(p['dir'])), (oct(0o710), ['child', 'lowerchild']))
    c.eq('cu/big', peer.sha(p['big']), sparse_sha(100))
    c.eq('cu/big2', (perm(peer.lstat(p['big2'])), peer.sha(p['big2'])), (oct(0o600), big2_sha))

"##;

const OWNERS_PY: &str = r##"
from wops import *


def owner(st):
    return (field(st, 'uid'), field(st, 'gid')) if isinstance(st, dict) else st


def main(x):
    c, peer = x.c, x.peer
    phase = x.args[0]
    M = x.M
    t, d = M + '/own/t', M + '/own/d'
    if phase == 'single':
        # Only our own id is mapped: the daemon cannot give the upper files the lower
        # owners, so the override xattr must keep them.
        with c.step('a copy-up of a file owned by ids the namespace does not map'):
            append(t, b'+')
            c.eq('content', peer.read(t), b'owned\n+')
            c.eq('the upper records the lower owner', x.upper_owner(t), (7, 8))
            c.eq('and the mode', x.upper_mode(t), oct(0o640))
        with c.step('a copy-up of such a directory'):
            write_file(d + '/new', b'n')
            c.eq('the upper records the lower owner', x.upper_owner(d), (9, 9))
            c.eq('and the mode', x.upper_mode(d), oct(0o750))
            os.chmod(d + '/x', 0o600)
        with c.step('chown to 0 in a namespace of one id'):
            os.chown(M + '/lo/s2/file', 0, 0)
            c.eq('owner', owner(peer.lstat(M + '/lo/s2/file')), (0, 0))
        return
    if phase == 'subids':
        with c.step('what the single-id namespace copied up'):
            c.eq('own/t', (owner(peer.lstat(t)), perm(peer.lstat(t)), peer.read(t)), ((7, 8), oct(0o640), b'owned\n+'))
            c.eq('own/d', (owner(peer.lstat(d)), perm(peer.lstat(d))), ((9, 9), oct(0o750)))
            c.eq('own/d/x', (owner(peer.lstat(d + '/x')), perm(peer.lstat(d + '/x'))), ((0, 0), oct(0o600)))
        os.mkdir(M + '/up', 0o755)
        write_file(M + '/up/x', b'x')
        os.mkdir(M + '/up/dd')
        os.mkfifo(M + '/up/ff')
        for rel, uid, gid in (('lo/s0/file', 1000, 1001), ('up/x', 5, 6), ('up/dd', 3, 4), ('up/ff', 11, 12),
                              ('lo/s1/dir', 20, 21), ('lo/s1/h1', 30, 31)):
            with c.step('chown %s to %d:%d' % (rel, uid, gid)):
                os.chown(M + '/' + rel, uid, gid)
        with c.step('chmod 04750 of a chowned lower file'):
            os.chmod(M + '/lo/s0/file', 0o4750)
        with c.step('files made by uid 1000'):
            os.mkdir(M + '/up/pub', 0o777)
            pid = os.fork()
            if pid == 0:
                try:
                    os.setgroups([])
                    os.setgid(1001)
                    os.setuid(1000)
                    write_file(M + '/up/pub/byuser', b'u')
                    os.mkdir(M + '/up/pub/dirbyuser')
                    os._exit(0)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            c.eq('a process of uid 1000 creates files', status, 0)
            try:
                os.symlink('x', M + '/up/sl')
                os.lchown(M + '/up/sl', 2, 2)
                c.note('lchown of a symlink to 2:2: it shows %r' % (owner(peer.lstat(M + '/up/sl')),))
            except OSError as e:
                c.note('lchown of a symlink to 2:2: %s' % ename(e))
    with c.step('owners (%s)' % phase):
        for rel, want in (('lo/s0/file', (1000, 1001)), ('up/x', (5, 6)), ('up/dd', (3, 4)), ('up/ff', (11, 12)),
                          ('lo/s1/dir', (20, 21)), ('lo/s1/h1', (30, 31)), ('lo/s1/h2', (30, 31)),
                          ('up/pub/byuser', (1000, 1001)), ('up/pub/dirbyuser', (1000, 1001)),
                          ('own/t', (7, 8)), ('own/d', (9, 9))):
            p = M + '/' + rel
            c.eq('%s through the mount' % rel, owner(peer.lstat(p)), want)
            c.eq('%s in the upper (its owner or the override xattr)' % rel, x.upper_owner(p), want)
        c.eq('setuid kept beside the owner', perm(peer.lstat(M + '/lo/s0/file')), oct(0o4750))
        c.eq('the upper records it', x.upper_mode(M + '/lo/s0/file'), oct(0o4750))
        c.eq('content of a chowned lower file', peer.read(M + '/lo/s0/file'), b'lower file s0\n')
        c.eq('the children of a chowned lower dir', peer.ls(M + '/lo/s1/dir'), ['a', 'sub'])
        x.check_private_hidden(M + '/lo/s0/file')
        x.check_private_hidden(M + '/own/t')

"##;

const PERSIST_PY: &str = r##"
from wops import *
import mmap

T1 = 1_555_000_000_000_000_001
T2 = 1_444_444_444_444_444_444
KIT = ['dir', 'empty', 'fifo', 'file', 'h1', 'h2', 'link']


def apply(x):
    c, M = x.c, x.M
    touched = set()

    def t(p):
        touched.add(os.path.dirname(p))
        return p

    def new_file():
        os.mkdir(t(M + '/up'), 0o755)
        write_file(t(M + '/up/new'), b'persist-new', 0o600, sync=True)
        os.setxattr(M + '/up/new', 'user.p', b'1')
        os.utime(M + '/up/new', ns=(T1, T1))

    def pwrite():
        fd = os.open(M + '/lo/s0/file', os.O_WRONLY)
        os.pwrite(fd, b'W', 0)
        os.fsync(fd)
        os.close(fd)

    def mapped():
        fd = os.open(t(M + '/lo/s0/h1'), os.O_RDWR)
        mm = mmap.mmap(fd, 0)
        mm[0:4] = b'MMAP'
        mm.flush()
        mm.close()
        os.fsync(fd)
        os.close(fd)

    def dir_rename():
        os.rename(t(M + '/lo/s1/dir'), M + '/lo/s1/dir.mv')
        append(t(M + '/lo/s1/dir.mv/sub/c'), b'+', sync=True)

    def deletes():
        os.unlink(t(M + '/lo/s2/file'))
        os.unlink(M + '/lo/s2/dir/a')
        os.unlink(M + '/lo/s2/dir/sub/c')
        os.rmdir(M + '/lo/s2/dir/sub')
        os.rmdir(M + '/lo/s2/dir')
        os.mkdir(M + '/lo/s2/dir')
        write_file(t(M + '/lo/s2/dir/fresh'), b'fresh', sync=True)

    def attrs():
        os.chmod(t(M + '/lo/s3/file'), 0o604)
        os.chmod(M + '/lo/s3/dir', 0o700)
        os.utime(M + '/lo/s3/h1', ns=(T2, T2))
        os.setxattr(M + '/lo/s3/file', 'user.new', b'\x00\xff')
        os.removexattr(M + '/lo/s3/file', 'user.k')

    def links():
        os.symlink('new', t(M + '/up/sl'))
        os.link(M + '/lo/s4/file', t(M + '/lo/s4/file.hl'))
        os.link(M + '/up/new', M + '/up/new.hl')
        os.truncate(M + '/lo/s4/h1', 3)

    def punch():
        fd = os.open(t(M + '/lo/s6/file'), os.O_RDWR)
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 0, 4)
        os.fsync(fd)
        os.close(fd)

    def unlinked_open():
        fd = os.open(M + '/up/tmp', os.O_RDWR | os.O_CREAT, 0o644)
        os.unlink(M + '/up/tmp')
        os.write(fd, b'gone')
        os.fsync(fd)
        os.close(fd)

    def replace():
        write_file(M + '/up/repl', b'replacement', sync=True)
        os.rename(M + '/up/repl', M + '/lo/s6/h1')

    def merged():
        for n in ('old1', 'old2'):
            os.unlink(M + '/mx/s0/' + n)
        os.rmdir(t(M + '/mx/s0'))
        write_file(t(M + '/mx/s1/n'), b'n', sync=True)

    def retype():
        os.unlink(t(M + '/lo/s7/link'))
        os.mkdir(M + '/lo/s7/link')
        os.unlink(M + '/lo/s7/fifo')
        write_file(M + '/lo/s7/fifo', b'f', sync=True)

    def renames():
        os.rename(t(M + '/lo/s8/h1'), M + '/lo/s8/file')
        os.rename(t(M + '/lo/s9/dir'), t(M + '/lo/s10/dir9'))
        append(M + '/lo/s10/dir9/a', b'+', sync=True)

    def zero_dev():
        try:
            os.mknod(M + '/up/zerodev', stat.S_IFCHR | 0o644, os.makedev(0, 0))
        except OSError as e:
            c.note('mknod of a char 0/0 device through the mount: %s' % ename(e))
            return
        c.note('mknod of a char 0/0 device through the mount worked; the upper holds a %s'
               % x.upper_kind(M + '/up/zerodev'))
        open(os.environ['W'] + '/zerodev-made', 'w').close()

    for fn in (new_file, pwrite, mapped, dir_rename, deletes, attrs, links, punch, unlinked_open, replace,
               merged, retype, renames, zero_dev):
        with c.step('apply: ' + fn.__name__):
            fn()
    with c.step('private xattrs set through the mount'):
        for rel, name, val in (('lo/s5', 'user.overlay.opaque', b'y'),
                               ('lo/s5/file', 'user.containers.override_stat', b'0:0:04777'),
                               ('lo/s5/dir', 'user.overlay.redirect', b'/lo/s6/dir'),
                               ('lo/s5/empty', 'user.overlay.origin', b'x')):
            try:
                os.setxattr(M + '/' + rel, name, val)
                c.note('setxattr %s on %s through the mount worked' % (name, rel))
                touched.add(os.path.dirname(M + '/' + rel))
            except OSError as e:
                c.note('setxattr %s on %s through the mount: %s' % (name, rel, ename(e)))
    with c.step('fsync of every directory touched'):
        for d in sorted(touched):
            sync_dir(d)


def verify(x, when):
    c, peer, M = x.c, x.peer, x.M

    def content(rel, data):
        c.eq('content of ' + rel, peer.read(M + '/' + rel), data)

    def ls(rel, names):
        c.eq('listing of ' + rel, peer.ls(M + '/' + rel), sorted(names))

    def st(rel, name):
        return field(peer.lstat(M + '/' + rel), name)

    def gone(rel):
        x.check_gone(M + '/' + rel)

    with c.step(when):
        content('up/new', b'persist-new')
        c.eq('mode of up/new', perm(peer.lstat(M + '/up/new')), oct(0o600))
        c.eq('xattr of up/new', peer.xattr(M + '/up/new', 'user.p'), b'1')
        c.eq('mtime of up/new', st('up/new', 'mtime_ns'), T1)
        c.eq('up/new.hl is up/new', (st('up/new.hl', 'ino'), st('up/new', 'nlink')), (st('up/new', 'ino'), 2))
        content('lo/s0/file', b'Wower file s0\n')
        content('lo/s0/h1', b'MMAP' + b'lower hard s0\n'[4:])
        content('lo/s0/h2', b'MMAP' + b'lower hard s0\n'[4:])
        c.eq('lo/s0/h1 and h2 one inode', st('lo/s0/h1', 'ino'), st('lo/s0/h2', 'ino'))
        gone('lo/s1/dir')
        ls('lo/s1/dir.mv', ['a', 'sub'])
        content('lo/s1/dir.mv/sub/c', b'c\n+')
        gone('lo/s2/file')
        ls('lo/s2/dir', ['fresh'])
        content('lo/s2/dir/fresh', b'fresh')
        c.eq('mode of lo/s3/file', perm(peer.lstat(M + '/lo/s3/file')), oct(0o604))
        c.eq('xattrs of lo/s3/file', peer.xattrs(M + '/lo/s3/file'), ['user.new'])
        c.eq('user.new of lo/s3/file', peer.xattr(M + '/lo/s3/file', 'user.new'), b'\x00\xff')
        c.eq('mode of lo/s3/dir', perm(peer.lstat(M + '/lo/s3/dir')), oct(0o700))
        ls('lo/s3/dir', ['a', 'sub'])
        c.eq('mtime of lo/s3/h1', st('lo/s3/h1', 'mtime_ns'), T2)
        c.eq('up/sl', peer.readlink(M + '/up/sl'), 'new')
        c.eq('lo/s4/file.hl is lo/s4/file', (st('lo/s4/file.hl', 'ino'), st('lo/s4/file', 'nlink')),
             (st('lo/s4/file', 'ino'), 2))
        content('lo/s4/file.hl', b'lower file s4\n')
        content('lo/s4/h2', b'low')
        ls('lo/s5', KIT)
        c.eq('mode of lo/s5/file', perm(peer.lstat(M + '/lo/s5/file')), oct(0o640))
        ls('lo/s5/dir', ['a', 'sub'])
        ls('lo/s5/empty', [])
        content('lo/s6/file', b'\0' * 4 + b'lower file s6\n'[4:])
        gone('up/tmp')
        content('lo/s6/h1', b'replacement')
        content('lo/s6/h2', b'lower hard s6\n')
        c.eq('nlink of lo/s6/h2', st('lo/s6/h2', 'nlink'), 1)
        gone('mx/s0')
        ls('mx/s1', ['n', 'old1', 'old2'])
        c.eq('lo/s7/link is a directory now', (kindof(peer.lstat(M + '/lo/s7/link')), peer.ls(M + '/lo/s7/link')),
             ('d', []))
        content('lo/s7/fifo', b'f')
        content('lo/s8/file', b'lower hard s8\n')
        c.eq('lo/s8/file took the inode of h1', st('lo/s8/file', 'ino'), st('lo/s8/h2', 'ino'))
        gone('lo/s8/h1')
        gone('lo/s9/dir')
        ls('lo/s10/dir9', ['a', 'sub'])
        content('lo/s10/dir9/a', b'a\n+')
        if os.path.exists(os.environ['W'] + '/zerodev-made'):
            # The device the container made must stay a device: not turn into a whiteout.
            ls('up', ['new', 'new.hl', 'sl', 'zerodev'])
            c.eq('up/zerodev is a char device 0/0', (kindof(peer.lstat(M + '/up/zerodev')), st('up/zerodev', 'rdev')),
                 ('c', 0))
        else:
            ls('up', ['new', 'new.hl', 'sl'])
        ls('lo', ['s%d' % i for i in range(24)])
        ls('mx', ['s%d' % i for i in range(1, 24)])


def main(x):
    if x.args[0] == 'apply':
        apply(x)
        verify(x, 'before the remount')
    else:
        verify(x, 'after the remount')

"##;

const KILL_PY: &str = r##"
from wops import *

SLOTS = 24


def block(i):
    return hashlib.sha256(b'%d' % i).digest() * 128


def record(i):
    return b'%08d %s\n' % (i, sha(block(i))[:16].encode())


def writer(x):
    c, M = x.c, x.M
    progress = x.args[1]
    i = 0
    try:
        os.mkdir(M + '/kill', 0o755)
        sync_dir(M)
        log = os.open(M + '/kill/log', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        dfd = os.open(M + '/kill', os.O_RDONLY | os.O_DIRECTORY)
        while True:
            fd = os.open(M + '/kill/f%d' % i, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            write_all(fd, block(i))
            os.fsync(fd)
            os.close(fd)
            if i % 7 == 0 and i >= 7:
                os.rename(M + '/kill/f%d' % (i - 7), M + '/kill/r%d' % (i - 7))
            os.fsync(dfd)
            os.write(log, record(i))
            os.fsync(log)
            if i % 5 == 0:
                j = (i // 5) % SLOTS
                append(M + '/lo/s%d/h1' % j, b'%d\n' % i, sync=True)
            with open(progress + '.tmp', 'w') as f:
                f.write('%d' % i)
            os.replace(progress + '.tmp', progress)
            i += 1
    except OSError as e:
        c.note('the writer stopped after %d rounds: %s' % (i, ename(e)))


def check(x):
    c, peer, M = x.c, x.peer, x.M
    with open(x.args[1]) as f:
        last = int(f.read())
    c.note('%d rounds were fsynced before the kill' % (last + 1))
    with c.step('files'):
        bad = []
        for i in range(last + 1):
            name = 'r%d' % i if (i + 7) <= last and i % 7 == 0 else 'f%d' % i
            got = peer.read(M + '/kill/' + name)
            if got == 'error:ENOENT' and i % 7 == 0 and i + 7 == last + 1:
                # Renamed in the round the kill cut short.
                name = 'r%d' % i
                got = peer.read(M + '/kill/' + name)
            if got != block(i):
                bad.append('%s: %s' % (name, got if isinstance(got, str) else '%d bytes, wrong' % len(got)))
        c.eq('files fsynced before the kill that are missing or wrong', bad, [])
        for i in range(0, last - 6, 7):
            c.eq('the renamed f%d is gone' % i, peer.lstat(M + '/kill/f%d' % i), 'error:ENOENT')
    with c.step('the log'):
        log = peer.read(M + '/kill/log')
        want = b''.join(record(i) for i in range(last + 1))
        c.eq('the fsynced records', log[:len(want)] if isinstance(log, bytes) else log, want)
        more = b''.join(record(i) for i in range(last + 1, last + 4))
        c.true('what follows them is the start of the next records: %r' % log[len(want):len(want) + 60],
               isinstance(log, bytes) and more.startswith(log[len(want):]))
    with c.step('appends to lower files'):
        for j in range(SLOTS):
            lines = b''.join(b'%d\n' % i for i in range(0, last + 1, 5) if (i // 5) % SLOTS == j)
            want = b'lower hard s%d\n' % j + lines
            got = peer.read(M + '/lo/s%d/h1' % j)
            c.true('lo/s%d/h1 starts with what was fsynced: want %r, got %r' % (j, want, got),
                   isinstance(got, bytes) and got.startswith(want))
            c.eq('lo/s%d/h2 is the same file' % j, peer.read(M + '/lo/s%d/h2' % j), got)
    with c.step('the mount works'):
        write_file(M + '/kill/after', b'after')
        c.eq('a new file', peer.read(M + '/kill/after'), b'after')
    left = sum(len(f) for _, _, f in os.walk(x.U + '.work'))
    c.note('files in the work dir after the remount: %d' % left)


def main(x):
    if x.args[0] == 'write':
        writer(x)
    else:
        check(x)

"##;

const CONC_PY: &str = r##"
from wops import *
import random

WORKERS = 8


def block(k, j):
    return hashlib.sha256(b'%d/%d' % (k, j)).digest() * 128


def rec(k, n):
    return b'%02d %04d %s\n' % (k, n, sha(b'%d-%d' % (k, n))[:40].encode())


def worker(x, K):
    c, M = x.c, x.M
    rng = random.Random(K)
    base, shared = M + '/c/p%d' % K, M + '/c/shared'
    exp = {}
    wins = {}
    finished = False

    def put(p, data):
        write_file(p, data)
        exp[x.rel(p)] = sha(data)

    def move(a, b):
        os.rename(a, b)
        ra, rb = x.rel(a), x.rel(b)
        for key in [k for k in exp if k == ra or k.startswith(ra + '/')]:
            exp[rb + key[len(ra):]] = exp[key]
            exp[key] = None

    def attempt(key, fn, loses):
        try:
            fn()
            wins[key] = True
        except OSError as e:
            if ename(e) not in loses:
                raise
            wins[key] = False

    with c.step('worker %d' % K):
        os.mkdir(base)
        for i in range(40):
            put(base + '/f%d' % i, rng.randbytes(rng.randint(1, 20000)))
        for i in range(0, 40, 4):
            move(base + '/f%d' % i, base + '/f%d.r' % i)
        for i in range(1, 40, 4):
            move(base + '/f%d' % i, shared + '/p%d_f%d' % (K, i))
        for i in range(2, 40, 4):
            os.unlink(base + '/f%d' % i)
            exp[x.rel(base + '/f%d' % i)] = None
        for i in range(3, 40, 8):
            put(base + '/tmp%d' % i, rng.randbytes(rng.randint(1, 20000)))
            move(base + '/tmp%d' % i, base + '/f%d' % i)
        for j in range(5):
            d = base + '/d%d' % j
            os.mkdir(d)
            for i in range(5):
                put(d + '/g%d' % i, rng.randbytes(rng.randint(1, 5000)))
            move(d, shared + '/p%d_d%d' % (K, j))
        for j in range(16):
            fd = os.open(M + '/cl/f%d' % j, os.O_WRONLY)
            write_all(fd, block(K, j), K * 4096)
            os.close(fd)
        for j in range(8):
            attempt('del%d' % j, lambda: os.unlink(M + '/cl/del%d' % j), ('ENOENT',))
            attempt('mv%d' % j, lambda: os.rename(M + '/cl/mv%d' % j, M + '/cl/moved%d_%d' % (j, K)), ('ENOENT',))
            attempt('race%d' % j, lambda: os.mkdir(shared + '/race%d' % j), ('EEXIST',))
        fd = os.open(shared + '/log', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for n in range(50):
            os.write(fd, rec(K, n))
        os.close(fd)
        for n in range(20):
            d = shared + '/churn%d' % K
            os.mkdir(d)
            write_file(d + '/x', b'x')
            os.unlink(d + '/x')
            os.rmdir(d)
        finished = True
    with open(os.environ['W'] + '/conc-exp-%d.json' % K, 'w') as f:
        json.dump({'exp': exp, 'wins': wins, 'finished': finished}, f)


def check(x):
    c, peer, M = x.c, x.peer, x.M
    exp, wins, done = {}, {}, []
    for k in range(WORKERS):
        with open(os.environ['W'] + '/conc-exp-%d.json' % k) as f:
            w = json.load(f)
        exp.update(w['exp'])
        wins[k] = w['wins']
        if w['finished']:
            done.append(k)
        else:
            c.fail('worker %d did not finish (see its report): what it did after that is not checked' % k)
    with c.step('files of the workers'):
        bad = []
        for rel, h in sorted(exp.items()):
            p = M + '/' + rel
            if h is None:
                st = peer.lstat(p)
                if st != 'error:ENOENT':
                    bad.append('%s should be gone: %r' % (rel, st))
            else:
                got = peer.sha(p)
                if got != h:
                    bad.append('%s: %s' % (rel, 'wrong content' if not got.startswith('error:') else got))
        c.eq('lost or torn', bad, [])
        for k in done:
            want = sorted(r.split('/')[-1] for r, h in exp.items() if h and r.startswith('c/p%d/' % k))
            c.eq('listing of c/p%d' % k, peer.ls(M + '/c/p%d' % k), want)
        want = set(r.split('/')[2] for r, h in exp.items() if h and r.startswith('c/shared/'))
        want |= {'race%d' % j for j in range(8)} | {'log'}
        if len(done) == WORKERS:
            c.eq('listing of c/shared', peer.ls(M + '/c/shared'), sorted(want))
    with c.step('lower files written by all at once'):
        for j in range(16):
            got = peer.read(M + '/cl/f%d' % j)
            c.eq('size of cl/f%d' % j, len(got) if isinstance(got, bytes) else got, WORKERS * 4096)
            wrong = [k for k in done if not isinstance(got, bytes) or got[k * 4096:(k + 1) * 4096] != block(k, j)]
            c.eq('blocks of cl/f%d that lost their worker\'s write' % j, wrong, [])
    with c.step('races'):
        moved = []
        for j in range(8):
            for what in ('del', 'mv', 'race'):
                n = sum(wins[k].get('%s%d' % (what, j), False) for k in range(WORKERS))
                if len(done) == WORKERS:
                    c.eq('processes whose %s%d succeeded' % (what, j), n, 1)
                else:
                    c.true('processes whose %s%d succeeded: %d' % (what, j, n), n <= 1)
            c.eq('cl/del%d is gone' % j, peer.lstat(M + '/cl/del%d' % j), 'error:ENOENT')
            c.eq('cl/mv%d is gone' % j, peer.lstat(M + '/cl/mv%d' % j), 'error:ENOENT')
            for k in range(WORKERS):
                if wins[k].get('mv%d' % j):
                    moved.append('moved%d_%d' % (j, k))
                    c.eq('content of moved%d_%d' % (j, k), peer.read(M + '/cl/moved%d_%d' % (j, k)), b'mv%d\n' % j)
            c.eq('race%d is a directory' % j, kindof(peer.lstat(M + '/c/shared/race%d' % j)), 'd')
        if len(done) == WORKERS:
            c.eq('listing of cl', peer.ls(M + '/cl'), sorted(['f%d' % j for j in range(16)] + moved))
    with c.step('the shared log'):
        log = peer.read(M + '/c/shared/log')
        lines = log.split(b'\n')[:-1] if isinstance(log, bytes) else []
        c.eq('records', len(lines) - sum(1 for l in lines if int(l[:2] or b'0') not in done), len(done) * 50)
        bad = [l for l in lines if l + b'\n' != rec(int(l[:2]), int(l[3:7]))] if all(len(l) > 8 for l in lines) else lines
        c.eq('torn records', bad[:5], [])
        seen = {}
        for l in lines:
            if len(l) > 8:
                seen.setdefault(int(l[:2]), []).append(int(l[3:7]))
        c.eq('each process\'s records, once each, in order', {k: v for k, v in seen.items() if k in done},
             {k: list(range(50)) for k in done})
        for k in seen:
            if k not in done:
                c.eq('the records of worker %d, which did not finish, in order' % k, seen[k], list(range(len(seen[k]))))


def main(x):
    if x.args[0] == 'worker':
        worker(x, int(x.args[1]))
    else:
        check(x)

"##;

const ESCAPE_PY: &str = r##"
from wops import *

SWAPS = 300


def snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (kind(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def act(acts, key, fn):
    try:
        fn()
        acts[key] = 'ok'
    except OSError as e:
        acts[key] = ename(e)


def ops_in(acts, d, tag):
    """Changes to lower files of the directory d (by its new name), which copy them up."""
    act(acts, tag + 'append f0', lambda: append(d + '/f0', b'+'))
    act(acts, tag + 'append sub/g', lambda: append(d + '/sub/g', b'+'))
    act(acts, tag + 'create new', lambda: write_file(d + '/new', b'new'))
    act(acts, tag + 'setxattr f1', lambda: os.setxattr(d + '/f1', 'user.x', b'1'))
    act(acts, tag + 'chmod f2', lambda: os.chmod(d + '/f2', 0o600))
    act(acts, tag + 'truncate f3', lambda: os.truncate(d + '/f3', 1))
    act(acts, tag + 'rename f4', lambda: os.rename(d + '/f4', d + '/sub/f4'))
    act(acts, tag + 'unlink f5', lambda: os.unlink(d + '/f5'))
    act(acts, tag + 'link f6', lambda: os.link(d + '/f6', d + '/f6.link'))
    act(acts, tag + 'mkdir newdir', lambda: os.mkdir(d + '/newdir'))
    act(acts, tag + 'utime f7', lambda: os.utime(d + '/f7', ns=(1, 1)))
    act(acts, tag + 'rmdir sub2', lambda: os.rmdir(d + '/sub2'))
    act(acts, tag + 'mkfifo', lambda: os.mkfifo(d + '/fifo'))


def container(outside, rel_out, out_fd):
    """In a chroot into the mount, as a container would be."""
    acts = {}
    act(acts, 'write esc/root/x_root', lambda: write_file('/esc/root/x_root', b'r'))
    act(acts, 'write esc/up/x_up', lambda: write_file('/esc/up/x_up', b'u'))
    act(acts, 'mkdir esc/root/d_root', lambda: os.mkdir('/esc/root/d_root'))
    act(acts, 'write esc/abs/x_abs', lambda: write_file('/esc/abs/x_abs', b'a'))
    act(acts, 'write esc/rel/x_rel', lambda: write_file('/esc/rel/x_rel', b'r'))
    act(acts, 'symlink cetc', lambda: os.symlink('/etc', '/cetc'))
    act(acts, 'write cetc/x_etc', lambda: write_file('/cetc/x_etc', b'e'))
    act(acts, 'symlink cout', lambda: os.symlink(outside, '/cout'))
    act(acts, 'write cout/x', lambda: write_file('/cout/x', b'x'))
    act(acts, 'symlink crel', lambda: os.symlink(rel_out, '/crel'))
    act(acts, 'write crel/x', lambda: write_file('/crel/x', b'x'))
    # A lower directory moved away, a symlink out in its place, then changes to the
    # moved directory's lower children.
    for d, target in (('/esc/d', outside), ('/esc/e', '../' + rel_out)):
        act(acts, d + ': rename', lambda: os.rename(d, d + '2'))
        act(acts, d + ': symlink', lambda: os.symlink(target, d))
        ops_in(acts, d + '2', d + '2: ')
        act(acts, d + ': write through the symlink', lambda: write_file(d + '/x', b'x'))
    # The same as a race: a loop swaps race/d for symlinks out and back while this
    # process changes what is in it.
    pid = os.fork()
    if pid == 0:
        for i in range(SWAPS):
            for fn in (lambda: os.rename('/race/d', '/race/d.x'),
                       lambda: os.symlink(outside, '/race/d'),
                       lambda: os.unlink('/race/d'),
                       lambda: os.symlink('../' + rel_out, '/race/d'),
                       lambda: os.unlink('/race/d'),
                       lambda: os.rename('/race/d.x', '/race/d')):
                try:
                    fn()
                except OSError:
                    pass
        os._exit(0)
    done = errors = 0
    for i in range(100000):
        d = '/race/d'
        for fn in (lambda: append(d + '/f%d' % (i % 20), b'.'),
                   lambda: write_file(d + '/n%d' % (i % 50), b'n'),
                   lambda: os.setxattr(d + '/f%d' % ((i + 7) % 20), 'user.r', b'%d' % i),
                   lambda: os.chmod(d + '/f%d' % ((i + 3) % 20), 0o600 + (i % 2) * 0o44),
                   lambda: os.unlink(d + '/del%d' % (i % 100)),
                   lambda: os.mkdir(d + '/sub/s%d' % (i % 5)),
                   lambda: os.rmdir(d + '/sub/s%d' % ((i + 2) % 5)),
                   lambda: os.truncate(d + '/f%d' % ((i + 11) % 20), i % 7),
                   lambda: os.rename(d + '/n%d' % (i % 50), d + '/sub/n%d' % (i % 50))):
            try:
                fn()
                done += 1
            except OSError:
                errors += 1
        if i % 20 == 19 and os.waitpid(pid, os.WNOHANG)[0] == pid:
            pid = None
            break
    if pid:
        os.waitpid(pid, 0)
    acts['race'] = 'ok'
    acts['race ops'] = [done, errors]
    os.write(out_fd, json.dumps(acts).encode())


def main(x):
    c, peer, M = x.c, x.peer, x.M
    outside, rel_out = x.args
    W = os.environ['W']
    acts_path = W + '/escape-acts.json'
    out_fd = os.open(acts_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    root_before = sorted(os.listdir('/'))
    out_before = snapshot(outside)
    w_before = sorted(os.listdir(W))
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(M)
            os.chdir('/')
            container(outside, rel_out, out_fd)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    os.close(out_fd)
    c.eq('the chrooted process exit status', status, 0)
    with open(acts_path) as f:
        acts = json.load(f)
    c.note('race: %r operations done and failed while the directory was swapped %d times'
           % (acts.get('race ops'), SWAPS))
    with c.step('nothing outside'):
        c.eq('the directory the links point to is unchanged', snapshot(outside), out_before)
        c.eq('/ of the namespace is unchanged', sorted(os.listdir('/')), root_before)
        c.eq('the test\'s work dir holds nothing new', sorted(os.listdir(W)), w_before)
    with c.step('what the container did'):
        for key, want in (('write esc/root/x_root', 'ok'), ('write esc/up/x_up', 'ok'),
                          ('mkdir esc/root/d_root', 'ok'), ('write esc/abs/x_abs', 'ENOENT'),
                          ('write esc/rel/x_rel', 'ENOENT'), ('symlink cetc', 'ok'), ('write cetc/x_etc', 'ok'),
                          ('symlink cout', 'ok'), ('write cout/x', 'ENOENT'), ('symlink crel', 'ok'),
                          ('write crel/x', 'ENOENT'), ('race', 'ok')):
            c.eq(key, acts.get(key), want)
        for d in ('/esc/d', '/esc/e'):
            for key in sorted(k for k in acts if k.startswith(d)):
                want = 'ENOENT' if key.endswith('through the symlink') else 'ok'
                c.eq(key, acts[key], want)
    with c.step('it all landed in the mount and the upper'):
        c.eq('x_root', peer.read(M + '/x_root'), b'r')
        c.eq('x_up', peer.read(M + '/x_up'), b'u')
        c.eq('d_root', kindof(peer.lstat(M + '/d_root')), 'd')
        c.eq('etc/x_etc', peer.read(M + '/etc/x_etc'), b'e')
        for rel in ('x_root', 'x_up', 'etc/x_etc'):
            c.eq('the upper holds ' + rel, x.upper_kind(M + '/' + rel), 'f')
        c.eq('the upper holds d_root', x.upper_kind(M + '/d_root'), 'd')
        for d, target in (('esc/d', outside), ('esc/e', '../' + rel_out)):
            c.eq(d + ' is the symlink', peer.readlink(M + '/' + d), target)
            m = M + '/' + d + '2'
            c.eq(d + '2/f0', peer.read(m + '/f0'), ('%s/f0\n+' % d).encode())
            c.eq(d + '2/sub/g', peer.read(m + '/sub/g'), b'g\n+')
            c.eq(d + '2/f3', peer.read(m + '/f3'), b'e')
            c.eq(d + '2 listing', peer.ls(m),
                 sorted(['f0', 'f1', 'f2', 'f3', 'f6', 'f6.link', 'f7', 'f8', 'f9', 'fifo', 'new', 'newdir', 'sub']))
            c.eq(d + '2/sub listing', peer.ls(m + '/sub'), ['f4', 'g'])
            c.eq('the upper holds ' + d + '2/f0', x.upper_read(m + '/f0'), ('%s/f0\n+' % d).encode())
            c.true('the upper holds a whiteout or nothing for %s2/f5: %s' % (d, x.upper_kind(m + '/f5')),
                   x.upper_kind(m + '/f5') in ('whiteout', 'nothing'))
        c.true('race/d is back: %r' % peer.lstat(M + '/race/d'), kindof(peer.lstat(M + '/race/d')) == 'd')
        names = peer.ls(M + '/race/d')
        c.true('race/d still lists its lower files: %r' % names,
               isinstance(names, list) and all('f%d' % i in names for i in range(20)))

"##;
