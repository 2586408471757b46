//! Kernel overlayfs as the oracle for strata's writable mounts.
//!
//! One description of the lower layers (builder entries) becomes both an OCI image that
//! strata imports and overlay-format directories that kernel overlayfs mounts (inside
//! `unshare -Urm`, with `userxattr`): each layer tar is unpacked by the extractor of
//! `scripts/make-test-image.py` (whiteouts as char 0/0 devices, opaque directories as
//! `user.overlay.opaque=y`, `user.*` xattrs kept), run inside a user namespace, where
//! an unprivileged user may make 0/0 devices.
//!
//! - `Lowers::prepare` writes and imports the image and unpacks the overlay dirs.
//! - `Lowers::prelude` gives namespace scripts the shell functions `kmount` (kernel
//!   overlayfs over the lowers), `smount` (`strata mount --upper`) and `amount` /
//!   `aumount` (side A of a comparison: strata, or kernel overlayfs for the harness's
//!   own check).
//! - `DIFFOPS_PY` runs one seeded random sequence of operations on two mounts and
//!   reports, op by op, both results and the differences at the paths it touched.

use std::fs;
use std::path::PathBuf;

use super::builder::{Entry, Image, LayerBlob, tar};
use super::harness::{TestEnv, assert_ok, give_to_user};
use super::mountns::{install_tools, ns_sh};

/// The extractor of the test-image script (and the module it imports).
const MAKE_TEST_IMAGE_PY: &str = include_str!("../../scripts/make-test-image.py");
const OCILAYOUT_PY: &str = include_str!("../../scripts/ocilayout.py");

/// Unpacks layer tars (argv: TAR DEST ...) as overlayfs lower dirs.
const EXTRACT_PY: &str = r#"
import importlib.util, os, sys
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('make_test_image', os.path.join(here, 'make_test_image.py'))
mti = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mti)
args = sys.argv[1:]
for tar_path, dest in zip(args[::2], args[1::2]):
    skipped = mti.extract_overlay(tar_path, dest)
    if skipped:
        sys.exit('%s: skipped %r' % (tar_path, dict(skipped)))
"#;

/// One seeded random sequence of operations on two mounts.
/// argv: SEED NOPS ROOT_A ROOT_B UPPER_B [SABOTAGE_AT]. One JSON line per op.
pub const DIFFOPS_PY: &str = r#"
import ctypes, errno, hashlib, json, os, stat, sys, threading

# argv: SEED NOPS ROOT_A ROOT_B UPPER_B [SABOTAGE_AT]
# Runs NOPS seeded random operations on two mounts of the same layers: every op is
# drawn from the state of ROOT_B (the oracle), then applied to ROOT_A and ROOT_B.
# Prints one JSON line per op: the op, both results, and the differences between the
# two mounts at the paths it touched (stat, contents, link target, user xattrs,
# listing). SABOTAGE_AT: before that op, make a file in ROOT_A only (to show that the
# comparison sees a difference).
seed, nops, roots = int(sys.argv[1]), int(sys.argv[2]), (sys.argv[3], sys.argv[4])
upper_b = sys.argv[5]
sabotage_at = int(sys.argv[6]) if len(sys.argv) > 6 else -1
os.umask(0o022)
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
M64 = (1 << 64) - 1


class Rng:
    """splitmix64: the same seed draws the same sequence on every host."""

    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def chance(self, percent):
        return self.below(100) < percent

    def data(self, n):
        out = bytearray()
        while len(out) < n:
            out += self.next().to_bytes(8, 'little')
        return bytes(out[:n])

    def size(self):
        r = self.below(100)
        if r < 10:
            return 0
        if r < 85:
            return 1 + self.below(3000)
        return 1 + self.below(300_000)


def ename(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def full(root, rel):
    return os.path.join(root, rel) if rel else root


def kind(m):
    for test, k in ((stat.S_ISREG, 'f'), (stat.S_ISDIR, 'd'), (stat.S_ISLNK, 'l'),
                    (stat.S_ISFIFO, 'p'), (stat.S_ISCHR, 'c'), (stat.S_ISBLK, 'b')):
        if test(m):
            return k
    return '?'


def scan(root):
    """{rel: (kind, st)} of every entry below root (not root itself)."""
    out = {}
    def walk(rel):
        for n in sorted(os.listdir(full(root, rel))):
            r = os.path.join(rel, n) if rel else n
            st = os.lstat(full(root, r))
            out[r] = (kind(st.st_mode), st)
            if stat.S_ISDIR(st.st_mode):
                walk(r)
    walk('')
    return out


# ---------------------------------------------------------------------------
# Operations: each takes a root and the op's arguments, and raises OSError or not.

def open_w(path, extra=0, mode=0o644):
    return os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | extra, mode)


def op_create(root, path, data_seed, n):
    fd = open_w(full(root, path), os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, Rng(data_seed).data(n)) if n else None
    finally:
        os.close(fd)


def op_write(root, path, offset, data_seed, n):
    fd = open_w(full(root, path))
    try:
        os.pwrite(fd, Rng(data_seed).data(n), offset)
    finally:
        os.close(fd)


def op_append(root, path, data_seed, n):
    fd = open_w(full(root, path), os.O_APPEND)
    try:
        os.write(fd, Rng(data_seed).data(n))
    finally:
        os.close(fd)


def op_truncate(root, path, length):
    fd = open_w(full(root, path))
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def op_mkdir(root, path, mode):
    os.mkdir(full(root, path), mode)


def op_rmdir(root, path):
    os.rmdir(full(root, path))


def op_unlink(root, path):
    os.unlink(full(root, path))


def renameat2(root, src, dst, flags):
    if libc.renameat2(AT_FDCWD, full(root, src).encode(), AT_FDCWD, full(root, dst).encode(),
                      ctypes.c_uint(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def op_rename(root, src, dst):
    os.rename(full(root, src), full(root, dst))


def op_rename_noreplace(root, src, dst):
    renameat2(root, src, dst, RENAME_NOREPLACE)


def op_rename_exchange(root, src, dst):
    renameat2(root, src, dst, RENAME_EXCHANGE)


def op_symlink(root, target, path):
    os.symlink(target, full(root, path))


def op_link(root, src, dst):
    os.link(full(root, src), full(root, dst), follow_symlinks=False)


def op_chmod(root, path, mode):
    # Never a symlink here (the generator picks none), so following is harmless.
    os.chmod(full(root, path), mode)


def op_utime(root, path, atime_ns, mtime_ns):
    os.utime(full(root, path), ns=(atime_ns, mtime_ns), follow_symlinks=False)


def op_setxattr(root, path, name, value_seed, n):
    os.setxattr(full(root, path), name, Rng(value_seed).data(n), follow_symlinks=False)


def op_removexattr(root, path, name):
    os.removexattr(full(root, path), name, follow_symlinks=False)


def op_mkfifo(root, path, mode):
    os.mkfifo(full(root, path), mode)


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith('op_')}
# Which arguments are paths in the tree (for the state check after the op).
PATH_ARGS = {
    'create': [0], 'write': [0], 'append': [0], 'truncate': [0], 'mkdir': [0],
    'rmdir': [0], 'unlink': [0], 'rename': [0, 1], 'rename_noreplace': [0, 1],
    'rename_exchange': [0, 1], 'symlink': [1], 'link': [0, 1], 'chmod': [0],
    'utime': [0], 'setxattr': [0], 'removexattr': [0], 'mkfifo': [0],
}
WEIGHTS = [
    ('create', 10), ('write', 10), ('append', 6), ('truncate', 6), ('mkdir', 6),
    ('rmdir', 5), ('unlink', 8), ('rename', 10), ('rename_noreplace', 4),
    ('rename_exchange', 5), ('symlink', 5), ('link', 5), ('chmod', 5), ('utime', 4),
    ('setxattr', 6), ('removexattr', 4), ('mkfifo', 3),
]
XATTRS = ['user.a', 'user.b', 'user.comment', 'user.one', 'user.bin', 'user.dirattr']
FILE_MODES = [0o600, 0o644, 0o640, 0o755, 0o700, 0o444, 0o4755, 0o2755, 0o000]
DIR_MODES = [0o755, 0o700, 0o750, 0o1777, 0o555]
LINK_TARGETS = ['n1', 'data/x', '/nowhere/at/all', 'tool', 'x' * 200]


def apply(root, op, args):
    try:
        OPS[op](root, *args)
        return 'ok'
    except OSError as e:
        return ename(e)


# ---------------------------------------------------------------------------
# The state of the paths an op touched, on one mount.

def snap(root, rel, times):
    p = full(root, rel)
    try:
        st = os.lstat(p)
    except OSError as e:
        return 'error:' + ename(e)
    k = kind(st.st_mode)
    s = {'type': k, 'mode': oct(stat.S_IMODE(st.st_mode))}
    if times:
        s['atime_ns'], s['mtime_ns'] = st.st_atime_ns, st.st_mtime_ns
    if k != 'd':
        s['size'], s['nlink'] = st.st_size, st.st_nlink
    if k == 'l':
        s['link'] = os.readlink(p)
    if k == 'f':
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                h = hashlib.sha256()
                while True:
                    b = os.read(fd, 1 << 20)
                    if not b:
                        break
                    h.update(b)
                s['sha256'] = h.hexdigest()[:16]
            finally:
                os.close(fd)
        except OSError as e:
            s['sha256'] = 'error:' + ename(e)
    if k in 'fd':
        try:
            s['xattrs'] = {n: os.getxattr(p, n, follow_symlinks=False).hex()[:32]
                           for n in sorted(os.listxattr(p, follow_symlinks=False))}
        except OSError as e:
            s['xattrs'] = 'error:' + ename(e)
    if k == 'd':
        try:
            s['names'] = sorted(os.listdir(p))
        except OSError as e:
            s['names'] = 'error:' + ename(e)
    return s


def state_diff(op, args):
    rels = []
    for i in PATH_ARGS[op]:
        r = args[i]
        for x in (r, os.path.dirname(r)):
            if x not in rels:
                rels.append(x)
    diffs = []
    for r in rels:
        times = op == 'utime' and r == args[0]
        a, b = snap(roots[0], r, times), snap(roots[1], r, times)
        if a != b:
            diffs.append({'path': r, 'a': a, 'b': b})
    return diffs


# ---------------------------------------------------------------------------
# Drawing ops from the oracle's tree.

rng = Rng(seed)
start = scan(roots[1])
# Directories of the lowers: kernel overlayfs (userxattr, so no redirect_dir) cannot
# rename them (EXDEV); strata can. Tested on their own, left out here.
lower_dirs = {r for r, (k, _) in start.items() if k == 'd'}
# Names of lower files with other hardlinked names: kernel overlayfs without index
# breaks the link on copy-up and counts links in the lower. Tested on their own.
protected = {r for r, (k, st) in start.items() if k != 'd' and st.st_nlink > 1}
pool = sorted({os.path.basename(r) for r in start} | {'n%d' % i for i in range(6)})
weighted = [name for name, w in WEIGHTS for _ in range(w)]


def same_upper_inode(a, b):
    """Two names of one inode in the oracle's upper. Renaming one over the other must
    do nothing and succeed (as on ext4); kernel overlayfs without index says ESTALE
    when the inode was copied up. Left out; the hardlink test checks strata."""
    try:
        x = os.lstat(os.path.join(upper_b, a))
        y = os.lstat(os.path.join(upper_b, b))
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def touches_protected(path):
    return any(path == p or path.startswith(p + '/') for p in protected)


def below(path, dir):
    return path.startswith(dir + '/')


def draw(tree):
    entries = sorted(r for r in tree if not touches_protected(r))
    dirs = [''] + [r for r in entries if tree[r][0] == 'd']
    files = [r for r in entries if tree[r][0] == 'f']
    nondirs = [r for r in entries if tree[r][0] != 'd']
    upper_dirs = [r for r in dirs if r and r not in lower_dirs]
    empty_dirs = [r for r in dirs if r and not any(below(x, r) for x in tree)]

    def pick(seq, fallback):
        return rng.pick(seq) if seq else fallback()

    def fresh():
        while True:
            d = rng.pick(dirs)
            p = os.path.join(d, rng.pick(pool)) if d else rng.pick(pool)
            if not touches_protected(p):
                return p

    def existing():
        return pick(entries, fresh)

    def target():
        return existing() if rng.chance(40) else fresh()

    def a_file():
        return pick(files, existing) if rng.chance(85) else existing()

    def data():
        return [rng.next() & 0xffffffff, rng.size()]

    op = rng.pick(weighted)
    if op == 'create':
        return op, [a_file() if rng.chance(35) else fresh()] + data()
    if op == 'write':
        f = a_file()
        size = tree[f][1].st_size if f in tree else 0
        return op, [f, rng.below(size + 5000)] + data()
    if op == 'append':
        return op, [a_file()] + data()
    if op == 'truncate':
        f = a_file()
        size = tree[f][1].st_size if f in tree else 0
        return op, [f, rng.below(2 * size + 10)]
    if op == 'mkdir':
        return op, [target(), rng.pick([0o755, 0o700, 0o775])]
    if op == 'rmdir':
        return op, [pick(empty_dirs, existing) if rng.chance(60) else existing()]
    if op == 'unlink':
        return op, [pick(nondirs, existing) if rng.chance(85) else existing()]
    if op in ('rename', 'rename_noreplace', 'rename_exchange'):
        src = pick(upper_dirs, existing) if rng.chance(30) else pick(nondirs, existing)
        if op == 'rename_exchange':
            dst = existing()
            if tree.get(dst, ('?',))[0] == 'd' and dst in lower_dirs:
                return None
        elif tree.get(src, ('?',))[0] == 'd' and rng.chance(50):
            dst = pick(empty_dirs, existing) if rng.chance(70) else pick(dirs[1:], fresh)
        else:
            dst = target()
        if tree.get(src, ('?',))[0] == 'd' and src in lower_dirs:
            return None
        if same_upper_inode(src, dst):
            return None
        return op, [src, dst]
    if op == 'symlink':
        return op, [rng.pick(LINK_TARGETS + pool), fresh() if rng.chance(80) else existing()]
    if op == 'link':
        src = pick(nondirs, existing) if rng.chance(90) else existing()
        return op, [src, fresh() if rng.chance(85) else existing()]
    if op == 'chmod':
        p = pick([r for r in entries if tree[r][0] != 'l'], fresh)
        modes = DIR_MODES if tree.get(p, ('?',))[0] == 'd' else FILE_MODES
        return op, [p, rng.pick(modes)]
    if op == 'utime':
        base = 1_500_000_000 * 10**9
        return op, [existing(), base + rng.below(10**17), base + rng.below(10**17)]
    if op == 'setxattr':
        return op, [existing(), rng.pick(XATTRS), rng.next() & 0xffffffff, rng.below(64)]
    if op == 'removexattr':
        return op, [existing(), rng.pick(XATTRS)]
    if op == 'mkfifo':
        return op, [target(), rng.pick([0o644, 0o600])]
    raise AssertionError(op)


def hung(rec, stage):
    """An op that never returns: say which, and stop (a process blocked on a FUSE
    request dies with the process)."""
    rec = dict(rec, diffs=[])
    rec[stage] = 'HUNG'
    print(json.dumps(rec, sort_keys=True), flush=True)
    sys.stderr.write('op #%d %s %s: side %s did not return within %d s\n'
                     % (rec['i'], rec['op'], json.dumps(rec['args']), stage, HANG_SECS))
    sys.stderr.flush()
    os._exit(3)


def guarded(rec, stage, fn):
    timer = threading.Timer(HANG_SECS, hung, (rec, stage))
    timer.daemon = True
    timer.start()
    try:
        return fn()
    finally:
        timer.cancel()


HANG_SECS = 20
i = 0
while i < nops:
    tree = scan(roots[1])
    drawn = draw(tree)
    if drawn is None:
        continue
    op, args = drawn
    if i == sabotage_at:
        op_create(roots[0], 'only-in-a', 1, 7)
    rec = {'i': i, 'op': op, 'args': args}
    rec['a'] = guarded(rec, 'a', lambda: apply(roots[0], op, args))
    rec['b'] = guarded(rec, 'b', lambda: apply(roots[1], op, args))
    rec['diffs'] = guarded(rec, 'a', lambda: state_diff(op, args))
    print(json.dumps(rec, sort_keys=True), flush=True)
    i += 1
"#;

/// Writes the scripts this module runs into the test's tools dir; returns the dir.
pub fn install_overlay_tools(env: &TestEnv) -> PathBuf {
    let dir = install_tools(env);
    for (name, text) in [
        ("make_test_image.py", MAKE_TEST_IMAGE_PY),
        ("ocilayout.py", OCILAYOUT_PY),
        ("extract.py", EXTRACT_PY),
        ("diffops.py", DIFFOPS_PY),
    ] {
        fs::write(dir.join(name), text).unwrap();
    }
    give_to_user(&dir);
    dir
}

/// Layers written both ways: an image in the store, and overlay-format directories.
pub struct Lowers {
    /// The image's name in the store.
    pub image: String,
    /// The overlay-format layer directories, bottom first.
    pub dirs: Vec<PathBuf>,
}

impl Lowers {
    /// Imports `layers` (bottom first) as the image `name` and unpacks each layer's
    /// tar, the same bytes, as an overlay lower dir.
    pub fn prepare(env: &TestEnv, layers: &[Vec<Entry>], name: &str) -> Lowers {
        let blobs = layers.iter().cloned().map(LayerBlob::plain).collect();
        let written = Image::new(blobs).with_ref("v1").write(&env.path("layout"));
        env.import(&format!("oci:{}:v1", written.path()), Some(name));

        let tars = env.mkdir("tars");
        let mut args = Vec::new();
        let mut dirs = Vec::new();
        for (i, entries) in layers.iter().enumerate() {
            let tar_path = tars.join(format!("layer{i}.tar"));
            fs::write(&tar_path, tar(entries)).unwrap();
            let dir = env.path(&format!("lower{i}"));
            args.push(tar_path.into_os_string());
            args.push(dir.clone().into_os_string());
            dirs.push(dir);
        }
        give_to_user(&tars);
        install_overlay_tools(env);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        assert_ok(&ns_sh(env, r#"python3 "$T/extract.py" "$@""#, &args));
        Lowers {
            image: name.to_string(),
            dirs,
        }
    }

    /// `lowerdir=` of kernel overlayfs: the top layer first.
    pub fn lowerdir(&self) -> String {
        let dirs: Vec<String> = self
            .dirs
            .iter()
            .rev()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(":")
    }

    /// Shell functions for namespace scripts over these lowers; side A of a
    /// comparison is strata, or kernel overlayfs when `kernel_as_a`.
    pub fn prelude(&self, kernel_as_a: bool) -> String {
        format!(
            r#"
IMAGE='{image}'
LOWERS='{lowers}'
SIDE_A={side_a}
# kmount UPPER WORK MNT [OPTIONS]: kernel overlayfs over the lowers.
kmount() {{
    mkdir -p "$1" "$2" "$3"
    mount -t overlay overlay -o "lowerdir=$LOWERS,upperdir=$1,workdir=$2,userxattr${{4:+,$4}}" "$3"
}}
# smount UPPER MNT: strata, read-write over UPPER (its work dir is UPPER.work).
smount() {{
    mkdir -p "$2"
    S mount --upper "$1" "$IMAGE" "$2"
    wait_mounted "$2" || {{ echo "strata mount succeeded, but nothing is mounted on $2" >&2; return 1; }}
}}
sumount() {{ timeout -s KILL 20 "$STRATA" --root "$ROOT" umount "$1"; wait_gone "$1"; }}
amount() {{ if [ "$SIDE_A" = kernel ]; then kmount "$1" "$1.work" "$2"; else smount "$1" "$2"; fi; }}
aumount() {{ if [ "$SIDE_A" = kernel ]; then umount "$1"; else sumount "$1"; fi; }}
"#,
            image = self.image,
            lowers = self.lowerdir(),
            side_a = if kernel_as_a { "kernel" } else { "strata" },
        )
    }
}
