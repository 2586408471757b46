#!/usr/bin/env python3
"""Build strata's realistic multi-layer test image, in OCI and overlay form.

Benchmarks and tests reuse these outputs, so they are built once and cached:

  OUTDIR/rootfs.tar      the Debian rootfs (kept as a cache; not with --small)
  OUTDIR/oci-5/          OCI image layout, ref "latest": the rootfs in 5 layers
  OUTDIR/oci-20/         OCI image layout, ref "latest": the same 5 layers plus 15
                         build-step layers that edit, add and delete files, with
                         whiteouts, opaque directories and a deleted directory
  OUTDIR/overlay-5/layer0..4     the layers unpacked the way kernel overlayfs
  OUTDIR/overlay-20/layer0..19   and fuse-overlayfs read lowerdirs (see below)
  OUTDIR/manifest.txt    per layer: entries, sizes, digests, and every build-step
                         operation (which paths were edited, added, deleted,
                         made opaque), for tests to check against

The rootfs, unless --rootfs-tar or --small is given, comes from
  mmdebstrap --mode=unshare --variant=minbase --include=python3 bookworm rootfs.tar
(about 10,000 entries, 200 MB, 20-40 s, needs a Debian mirror). OUTDIR/rootfs.tar is
reused when present: delete it to fetch a fresh one. Everything after the rootfs
is deterministic (fixed random seed, gzip mtime 0, sorted JSON): the same
rootfs.tar gives the same digests. A fresh rootfs differs in package versions and
in the mtimes of files made at install time, unless SOURCE_DATE_EPOCH is set
(mmdebstrap honours it, and so do the "created" fields here).

Running as an unprivileged user (the intended way) needs, for mmdebstrap's
unshare mode only:
  - a line for your user NAME (not the numeric uid) in both /etc/subuid and
    /etc/subgid with at least 65536 ids, e.g. "builder:100000:65536"; useradd and
    adduser write one by default; otherwise, as root, with a range that no
    other line covers: usermod --add-subuids 200000-265535
    --add-subgids 200000-265535 NAME
  - newuidmap/newgidmap (package uidmap) and unprivileged user namespaces
    (kernel.unprivileged_userns_clone=1 where that sysctl exists).
--small and --rootfs-tar need none of that.

The 5-layer split is by directory and keeps every tar header as it was in the
rootfs (owners, modes, mtimes, symlinks, devices, xattrs); a hardlink goes to
its target's layer, and each layer carries copies of its entries' parent
directories so that it is a valid tar on its own:
  layer0  base: etc, var, top-level dirs, usrmerge symlinks, usr/share/zoneinfo
  layer1  usr/lib (shared libraries) except python3 and perl
  layer2  usr/share: docs, locales, man pages, perl modules (not zoneinfo)
  layer3  usr/bin, usr/sbin, usr/libexec, usr/lib/*/perl*, the rest of usr
  layer4  the python3 standard library, usr/lib/python3*
For Debian this gives about 6, 50, 63, 62 and 25 MB.

Overlay form: whiteouts are character devices 0/0, opaque directories carry
the xattr user.overlay.opaque=y (mount kernel overlayfs with the userxattr option;
fuse-overlayfs reads it too), there are no .wh.* files. Modes and mtimes are
kept, owners are whoever runs this script. Device nodes other than whiteouts
cannot be created unprivileged and are skipped (counted in the output), as are
xattrs outside the user.* namespace.

Re-running replaces the outputs: everything is built in OUTDIR/.tmp-* and then
renamed into place; leftovers of a killed run are removed by the next run.

Examples:
  scripts/make-test-image.py /tmp/strata-testimg            # full Debian image
  scripts/make-test-image.py --small /tmp/strata-testimg-s  # CI: a few seconds
  scripts/make-test-image.py --rootfs-tar my.tar OUTDIR     # any rootfs tarball
"""

import argparse
import collections
import concurrent.futures
import copy
import fcntl
import fnmatch
import glob
import io
import os
import pwd
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ocilayout  # noqa: E402

SEED = 20240601          # the build steps and --small rootfs depend only on this
BUILD_EPOCH = 1700000000  # mtime of build-step entries: fixed, so digests are too
N_BASE = 5
N_STEPS = 15

# Layer split: (glob over leading path components, layer). The rule with most
# components wins, and among equals the later one; a path no rule matches goes to
# layer 0. Globs match whole components, so "usr/lib/python3*" catches
# python3.11 and python3 alike.
SPLIT_RULES = [
    ("usr/*", 3),
    ("usr/lib", 1),
    ("usr/lib/*/perl*", 3),
    ("usr/lib/python3*", 4),
    ("usr/share", 2),
    # zoneinfo: 1300 tiny files give the base layer the many-small-files shape
    # that lookup benchmarks want, at almost no size.
    ("usr/share/zoneinfo", 0),
    ("usr/bin", 3),
    ("usr/sbin", 3),
    ("usr/libexec", 3),
]
LAYER_DESCRIPTIONS = [
    "base: etc, var, top-level dirs and symlinks, zoneinfo, small things",
    "usr/lib: shared libraries (without python3 and perl)",
    "usr/share: docs, locales, man pages, perl modules",
    "usr/bin, usr/sbin, usr/libexec, usr/lib/*/perl*, the rest of usr",
    "python3 standard library (usr/lib/python3*)",
]

# Build steps must leave an image whose shell, coreutils and python still start,
# because tests run commands in it: never delete these, never edit the files
# whose syntax a trailing comment would break.
PROTECTED_NAMES = {
    "sh", "bash", "dash", "ls", "cat", "env", "id", "echo", "true", "false",
    "python3", "python3.11", "perl", "mkdir", "rm", "cp", "mv", "ln", "sleep",
    "stat", "test", "[", "uname", "head", "tail", "grep", "sed", "find", "touch",
    "chmod", "readlink", "date", "printf", "kill", "whoami", "ps", "mount",
    "hostname", "wc", "sort", "dpkg", "apt", "apt-get", "busybox",
    "passwd", "group", "shadow", "gshadow", "nsswitch.conf", "ld.so.cache",
    "ld.so.conf", "hosts", "resolv.conf", "os-release", "login.defs",
}
# Directories whose contents common commands need (alternatives holds the awk
# and pager links, ld.so.conf.d the library path, pam.d su's config): the steps
# neither edit nor delete anything in them, nor make them opaque.
PROTECTED_DIRS = {"etc/alternatives", "etc/ld.so.conf.d", "etc/ssl", "etc/dpkg",
                  "etc/apt", "etc/python3.11", "etc/security", "etc/pam.d"}
# Python packages imported while the interpreter starts: deleting them breaks
# `python3 -c ...`. Top-level modules of the stdlib are protected as well.
PY_CORE = {"encodings", "importlib", "collections", "re", "lib-dynload",
           "__pycache__", "json", "sysconfig"}

# An edit reads the whole old file into memory; the biggest files (libraries of
# tens of MB) are not what a build step would patch anyway.
MAX_EDIT_SIZE = 4 << 20


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def norm(name):
    """Canonical key of a tar member name: no ./ or / prefix, no trailing /.

    mmdebstrap writes "./usr/bin", docker writes "usr/bin"; both mean one path.
    The root directory is "".
    """
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    return "" if name == "." else name


def parent_of(key):
    return key.rsplit("/", 1)[0] if "/" in key else ""


def ancestors(key):
    """Proper ancestors of key, outermost first, excluding the root."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def rule_layer(key):
    best, best_len = 0, 0
    parts = key.split("/")
    for pattern, layer in SPLIT_RULES:
        pparts = pattern.split("/")
        # ">=": on equal length the later rule wins, so "usr/lib" beats "usr/*".
        if len(pparts) <= len(parts) and len(pparts) >= best_len and all(
                fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pparts)):
            best, best_len = layer, len(pparts)
    return best


def synth_dir(key, style_of, mtime=BUILD_EPOCH):
    """A directory header for a parent the source tar does not have.

    Named in the same style ("./x" or "x") as the entry that needs it, so a layer
    does not mix the two.
    """
    ti = tarfile.TarInfo(("./" if style_of.startswith("./") else "") + key)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = mtime
    ti.uname = ti.gname = "root"
    return ti


class LayerWriter:
    """Writes one layer tar, adding each entry's missing parent directories.

    dir_header(key) returns the header a parent should get (the rootfs's own
    header when there is one), so a layer's copy of /usr/lib has the same
    owner, mode and mtime as the real one.
    """

    def __init__(self, path, dir_header, plain_names=False):
        self.path = path
        self.plain_names = plain_names
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
        self.dir_header = dir_header
        self.emitted = set()
        self.entries = 0
        self.content_bytes = 0

    def add(self, ti, fileobj=None):
        key = norm(ti.name)
        for a in ancestors(key):
            if a not in self.emitted:
                hdr = self.dir_header(a) or synth_dir(a, ti.name)
                self._write(hdr, None, a)
        if ti.isdir() and key in self.emitted:
            return  # already written as some earlier entry's parent
        self._write(ti, fileobj, key)

    def _write(self, ti, fileobj, key):
        if ti.isdir():
            self.emitted.add(key)
        if self.plain_names and ti.name != key:
            # Build-step layers are named as docker writes them ("usr/bin", not
            # "./usr/bin"), also for the parent headers copied from the rootfs.
            ti = copy.copy(ti)
            ti.name = key
        if ti.issparse():
            # tarfile reads GNU sparse files expanded but cannot write them back
            # as sparse; a plain file with the same content is equivalent.
            ti = copy.copy(ti)
            ti.type = tarfile.REGTYPE
            ti.sparse = None
        self.tar.addfile(ti, fileobj)
        self.entries += 1
        if ti.isreg():
            self.content_bytes += ti.size

    def close(self):
        self.tar.close()


# ---------------------------------------------------------------------------
# The rootfs: from mmdebstrap, a given tarball, or synthesized (--small)

def check_subids():
    """Explain, before a 30 s download, why mmdebstrap's unshare mode would fail."""
    if os.geteuid() == 0:
        return  # root needs no id mapping in unshare mode
    user = pwd.getpwuid(os.getuid()).pw_name
    for f in ("/etc/subuid", "/etc/subgid"):
        count = 0
        try:
            with open(f) as fh:
                for line in fh:
                    parts = line.strip().split(":")
                    if len(parts) == 3 and parts[0] == user:
                        count = int(parts[2])
                        break
        except OSError:
            pass
        if count < 65536:
            sys.exit(f"error: mmdebstrap --mode=unshare needs a line '{user}:START:"
                     f"65536' in {f} (found {count} ids for {user}).\n"
                     "As root, with a range no other line of the file covers:\n"
                     f"  usermod --add-subuids 200000-265535 "
                     f"--add-subgids 200000-265535 {user}\n"
                     "Or use --small, or --rootfs-tar with a tarball you have.")
    if not shutil.which("newuidmap") or not shutil.which("newgidmap"):
        sys.exit("error: newuidmap/newgidmap not found: apt-get install uidmap")


def run_mmdebstrap(outdir, mirror):
    if not shutil.which("mmdebstrap"):
        sys.exit("error: mmdebstrap not found: apt-get install mmdebstrap "
                 "(or use --small / --rootfs-tar)")
    check_subids()
    final = os.path.join(outdir, "rootfs.tar")
    # The ".tar" suffix tells mmdebstrap the output format; the .tmp- prefix makes
    # a killed run's leftover recognisable for the cleanup.
    tmp = os.path.join(outdir, f".tmp-rootfs-{os.getpid()}.tar")
    cmd = ["mmdebstrap", "--mode=unshare", "--variant=minbase",
           "--include=python3", "bookworm", tmp]
    if mirror:
        cmd.append(mirror)
    log("running: " + " ".join(cmd))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    tail = collections.deque(maxlen=40)
    for line in proc.stdout:
        tail.append(line.rstrip("\n"))
        log("  mmdebstrap: " + line.rstrip("\n"))
    rc = proc.wait()
    if rc != 0:
        ocilayout.rmtree_force(tmp)
        text = "\n".join(tail)
        hint = ""
        if any(s in text for s in ("Failed to fetch", "Could not resolve",
                                   "Could not connect", "Temporary failure",
                                   "Unable to connect",
                                   "Network is unreachable", "Connection failed",
                                   "Cannot initiate the connection",
                                   "apt-get update failed")):
            hint = ("\nmmdebstrap could not reach a Debian mirror. Check the network "
                    "or proxy, or pass --mirror URL, or use --small or --rootfs-tar.")
        elif "newuidmap" in text or "subuid" in text or "unshare" in text:
            hint = ("\nmmdebstrap's unshare mode failed: check /etc/subuid, "
                    "/etc/subgid, uidmap and unprivileged user namespaces "
                    "(see --help).")
        sys.exit(f"error: mmdebstrap failed (exit {rc}).{hint}")
    os.replace(tmp, final)
    log(f"mmdebstrap took {time.monotonic() - t0:.1f} s")
    return final


class SmallRootfs:
    """A synthetic Debian-shaped rootfs of about 2000 entries, for CI.

    It has the shapes the real one has and the tests care about: the usrmerge
    symlinks, device nodes, setuid and setgid files, non-root owners, library
    symlink chains, hardlinks (one across the layer split), a fifo, xattrs, long,
    spaced and non-ASCII names, empty files, and files from bytes to a megabyte.
    Content is cheap to compress so that --small stays fast.
    """

    WORDS = ("strata layer index union lookup whiteout opaque copy up inode "
             "mount namespace debian python package file directory").split()

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.entries = []   # (TarInfo, bytes or None)
        self.dirs = set()
        self.mtime = BUILD_EPOCH - 86400 * 30

    def _ti(self, name, kind, mode, uid=0, gid=0, uname="root", gname="root"):
        ti = tarfile.TarInfo("./" + name)
        ti.type, ti.mode, ti.mtime = kind, mode, self.mtime + self.rng.randrange(86400)
        ti.uid, ti.gid, ti.uname, ti.gname = uid, gid, uname, gname
        return ti

    def dir(self, name, mode=0o755, **kw):
        if not name:
            return  # the root has its own entry
        for a in ancestors(name):
            if a not in self.dirs:
                self.dir(a)
        if name not in self.dirs:
            self.dirs.add(name)
            self.entries.append((self._ti(name, tarfile.DIRTYPE, mode, **kw), None))

    def text(self, size):
        out, n = [], 0
        while n < size:
            w = self.rng.choice(self.WORDS)
            out.append(w)
            n += len(w) + 1
        return (" ".join(out) + "\n").encode()[:size]

    def binary(self, size):
        # Repeating a random 4 KiB block gives ELF-like sizes at text-like
        # compression speed; fully random data would make gzip the bottleneck.
        block = self.rng.randbytes(4096)
        return (block * (size // 4096 + 1))[:size]

    def file(self, name, data, mode=0o644, pax=None, **kw):
        self.dir(parent_of(name))
        ti = self._ti(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        if pax:
            ti.pax_headers = dict(pax)
        self.entries.append((ti, data))

    def symlink(self, name, target):
        self.dir(parent_of(name))
        ti = self._ti(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries.append((ti, None))

    def hardlink(self, name, target):
        self.dir(parent_of(name))
        ti = self._ti(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = "./" + target
        self.entries.append((ti, None))

    def node(self, name, kind, major, minor, mode):
        ti = self._ti(name, kind, mode)
        ti.devmajor, ti.devminor = major, minor
        self.entries.append((ti, None))

    def size(self):
        # Mostly small files with a long tail, like a real distribution.
        r = self.rng.random()
        if r < 0.55:
            return self.rng.randrange(0, 2048)
        if r < 0.9:
            return self.rng.randrange(2048, 32768)
        if r < 0.99:
            return self.rng.randrange(32768, 262144)
        return self.rng.randrange(262144, 1 << 20)

    def build(self):
        rng = self.rng
        self.entries.append((self._ti("", tarfile.DIRTYPE, 0o755), None))
        self.entries[-1][0].name = "."
        for d, mode in (("boot", 0o755), ("dev", 0o755), ("etc", 0o755),
                        ("home", 0o755), ("media", 0o755), ("mnt", 0o755),
                        ("opt", 0o755), ("proc", 0o555), ("root", 0o700),
                        ("run", 0o755), ("srv", 0o755), ("sys", 0o555),
                        ("tmp", 0o1777), ("usr", 0o755), ("var", 0o755)):
            self.dir(d, mode)
        for link in ("bin", "sbin", "lib", "lib64"):
            self.symlink(link, "usr/" + link)
        for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                                   ("random", 1, 8), ("urandom", 1, 9),
                                   ("tty", 5, 0), ("console", 5, 1), ("ptmx", 5, 2)):
            self.node("dev/" + name, tarfile.CHRTYPE, major, minor, 0o666)
        self.dir("dev/pts")
        self.symlink("dev/fd", "/proc/self/fd")
        self.node("run/initctl", tarfile.FIFOTYPE, 0, 0, 0o600)

        # etc: config files, a few subdirectories, alternatives symlinks.
        self.file("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n"
                  b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        self.file("etc/group", b"root:x:0:\nshadow:x:42:\nmail:x:8:\n"
                  b"nogroup:x:65534:\n")
        self.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640, gid=42,
                  gname="shadow")
        self.file("etc/hostname", b"strata\n")
        self.file("etc/with space.conf", self.text(200))
        self.file("etc/motd", b"")
        for sub in ("apt/apt.conf.d", "apt/sources.list.d", "apt/trusted.gpg.d",
                    "default", "cron.daily", "security", "skel", "python3.11",
                    "ld.so.conf.d", "profile.d", "logrotate.d", "pam.d",
                    "systemd/system", "init.d"):
            for i in range(rng.randrange(3, 12)):
                self.file(f"etc/{sub}/conf-{i:02d}", self.text(rng.randrange(50, 3000)))
        for i in range(40):
            self.file(f"etc/config-{i:02d}.conf", self.text(rng.randrange(20, 4000)))
        for i in range(25):
            self.symlink(f"etc/alternatives/alt-{i:02d}", f"/usr/bin/tool-{i:03d}")

        # var: dpkg database and the usual spool/log dirs.
        for i in range(110):
            self.file(f"var/lib/dpkg/info/pkg-{i:03d}.list",
                      self.text(rng.randrange(100, 4000)))
        self.dir("var/mail", 0o2775, gid=8, gname="mail")
        self.dir("var/tmp", 0o1777)
        self.file("var/log/lastlog", b"", 0o664)
        self.dir("var/cache/apt")

        # usr/bin: binaries, setuid su, the python symlink chain, a hardlink pair.
        for i in range(130):
            self.file(f"usr/bin/tool-{i:03d}", self.binary(self.size()), 0o755)
        self.file("usr/bin/su", self.binary(60000), 0o4755)
        self.file("usr/bin/wall", self.binary(30000), 0o2755, gid=5, gname="tty")
        self.file("usr/bin/python3.11", self.binary(600000), 0o755)
        self.symlink("usr/bin/python3", "python3.11")
        self.file("usr/bin/perl", self.binary(400000), 0o755)
        self.hardlink("usr/bin/perl5.36.0", "usr/bin/perl")
        self.file("usr/bin/ping", self.binary(90000), 0o755,
                  pax={"SCHILY.xattr.security.selinux": "system_u:object_r:ping_exec_t:s0"})
        self.file("usr/bin/annotated", self.text(300), 0o755,
                  pax={"SCHILY.xattr.user.strata.test": "hello"})
        for i in range(40):
            self.file(f"usr/sbin/admin-{i:02d}", self.binary(self.size()), 0o755)
        self.file("usr/libexec/helper", self.binary(20000), 0o755)
        self.file("usr/include/strata.h", self.text(900))

        # usr/lib: versioned libraries with the .so.N -> .so.N.M.K symlinks.
        for i in range(90):
            real = f"usr/lib/x86_64-linux-gnu/libs{i:03d}.so.{i % 4}.{i % 7}.0"
            self.file(real, self.binary(self.size() + 4096))
            self.symlink(f"usr/lib/x86_64-linux-gnu/libs{i:03d}.so.{i % 4}",
                         os.path.basename(real))
        for i in range(20):
            self.file(f"usr/lib/x86_64-linux-gnu/perl-base/Mod{i:02d}.pm", self.text(2000))
        # A hardlink whose name the split rules put in another layer than its
        # target: it must follow the target into layer 0.
        self.file("etc/strata-hardlink.conf", self.text(500))
        self.hardlink("usr/lib/strata/hardlinked.conf", "etc/strata-hardlink.conf")

        # usr/lib/python3.11: top-level modules and packages.
        py = "usr/lib/python3.11"
        for i in range(120):
            self.file(f"{py}/mod{i:03d}.py", self.text(rng.randrange(200, 40000)))
        for pkg in ("encodings", "importlib", "collections", "json", "email",
                    "unittest", "http", "urllib", "xml/dom", "xml/etree", "asyncio",
                    "concurrent/futures", "logging", "xmlrpc", "wsgiref",
                    "sqlite3", "ctypes", "curses", "dbm", "html"):
            self.file(f"{py}/{pkg}/__init__.py", self.text(rng.randrange(0, 3000)))
            for i in range(rng.randrange(5, 20)):
                self.file(f"{py}/{pkg}/m{i:02d}.py", self.text(rng.randrange(200, 30000)))
                self.file(f"{py}/{pkg}/__pycache__/m{i:02d}.cpython-311.pyc",
                          self.binary(rng.randrange(200, 20000)))
        for i in range(30):
            self.file(f"{py}/lib-dynload/_ext{i:02d}.cpython-311-x86_64-linux-gnu.so",
                      self.binary(self.size()))

        # usr/share: docs per package, locales, man pages, zoneinfo, perl.
        for i in range(70):
            d = f"usr/share/doc/pkg-{i:03d}"
            self.file(f"{d}/copyright", self.text(rng.randrange(500, 8000)))
            self.file(f"{d}/changelog.Debian.gz", self.binary(rng.randrange(300, 5000)))
            if i % 3 == 0:
                self.file(f"{d}/README", self.text(1000))
        self.file("usr/share/doc/naïve-pkg/Ünïcode notes.txt", self.text(400))
        self.file("usr/share/doc/long/" + "a-really-long-directory-name-" * 3 + "/"
                  + "and-an-even-longer-file-name-to-pass-the-ustar-limit-" * 2 + ".txt",
                  self.text(100))
        for lang in ("de", "fr", "es", "it", "ja", "pt_BR", "ru", "zh_CN", "nl", "sv",
                     "pl", "cs", "da", "fi", "ko"):
            for dom in ("apt", "dpkg", "coreutils", "tar"):
                self.file(f"usr/share/locale/{lang}/LC_MESSAGES/{dom}.mo",
                          self.text(rng.randrange(2000, 60000)))
        for sec in range(1, 9):
            for i in range(18):
                self.file(f"usr/share/man/man{sec}/page{i:02d}.{sec}.gz",
                          self.binary(rng.randrange(300, 6000)))
        for area in ("Europe", "America", "Asia"):
            for i in range(30):
                self.file(f"usr/share/zoneinfo/{area}/City{i:02d}", self.binary(2200))
        for i in range(60):
            self.file(f"usr/share/perl/5.36/Lib{i:02d}.pm",
                      self.text(rng.randrange(500, 9000)))

    def write(self, path):
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for ti, data in self.entries:
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)
        return len(self.entries)


# ---------------------------------------------------------------------------
# Splitting the rootfs into the base layers

def read_rootfs(path):
    tar = tarfile.open(path, "r:*")
    members = tar.getmembers()
    return tar, members


def split_rootfs(src, members, layer_paths):
    """Write the N_BASE layer tars; return their LayerWriters (closed)."""
    dirs = {}
    for m in members:
        if m.isdir():
            dirs.setdefault(norm(m.name), m)
    layer_of = {}
    writers = [LayerWriter(p, dirs.get) for p in layer_paths]
    for m in members:
        key = norm(m.name)
        if m.islnk():
            # The link must live in the same layer as its target, or the layer
            # that has the link would not have the data it points to.
            target = norm(m.linkname)
            if target not in layer_of:
                sys.exit(f"error: hardlink {m.name} -> {m.linkname}: target not "
                         "earlier in the tar")
            layer = layer_of[target]
        else:
            layer = rule_layer(key)
        if key == "":
            layer = 0
        layer_of[key] = layer
        for a in ancestors(key):
            p = dirs.get(a)
            if p is None and a in layer_of:
                sys.exit(f"error: {m.name} lies under {a}, which is not a directory")
        fileobj = src.extractfile(m) if m.isreg() else None
        writers[layer].add(m, fileobj)
    for w in writers:
        w.close()
    return writers


# ---------------------------------------------------------------------------
# The build steps: 15 layers of edits, additions and deletions on top

class View:
    """The merged image as the build steps see it: path -> (header, content).

    content is a tar member of the rootfs (read on demand), bytes written by a
    step, or None. Tracking the merge lets each step touch only paths that still
    exist and lets manifest.txt say exactly what each whiteout hides. A children
    index keeps "everything under usr/share/doc" from scanning 10,000 paths.
    """

    def __init__(self, src, members):
        self.src = src
        self.items = {}
        self.kids = collections.defaultdict(set)
        self.hardlinked = set()
        for m in members:
            if m.islnk():
                self.hardlinked.add(norm(m.name))
                self.hardlinked.add(norm(m.linkname))
            self.set(norm(m.name), m, m if m.isreg() else None)

    def set(self, key, ti, content=None):
        self.items[key] = (ti, content)
        if key:
            self.kids[parent_of(key)].add(key)

    def header(self, key):
        return self.items[key][0] if key in self.items else None

    def dir_header(self, key):
        h = self.header(key)
        return h if h is not None and h.isdir() else None

    def content(self, key):
        src = self.items[key][1]
        if isinstance(src, bytes):
            return src
        return self.src.extractfile(src).read()

    def children(self, key):
        return sorted(self.kids.get(key, ()))

    def descendants(self, key):
        out, stack = [], [key]
        while stack:
            for k in self.kids.get(stack.pop(), ()):
                out.append(k)
                stack.append(k)
        return sorted(out)

    def remove(self, key):
        for k in self.descendants(key) + [key]:
            self.items.pop(k, None)
            self.kids.pop(k, None)
        if key:
            self.kids[parent_of(key)].discard(key)


def find_busy_dirs(view):
    py = sorted(k for k in view.items if fnmatch.fnmatchcase(k, "usr/lib/python3.*")
                and "/" not in k[len("usr/lib/"):] and view.dir_header(k))
    busy = [d for d in (py[:1] + ["usr/share/doc", "etc", "usr/bin"])
            if view.dir_header(d)]
    if len(busy) < 4:
        sys.exit("error: the rootfs lacks some of usr/lib/python3.*, usr/share/doc, "
                 "etc, usr/bin; the build steps need them")
    return busy


class StepBuilder:
    """Generates the build-step layers and records what each one did."""

    def __init__(self, view, seed):
        self.view = view
        self.rng = random.Random(seed)
        self.busy = find_busy_dirs(view)
        self.pydir = self.busy[0]
        self.ops = []          # (layer, kind, path, detail) for manifest.txt
        self.deleted = []      # files deleted so far, for one later re-creation

    # -- choosing targets --------------------------------------------------
    def _protected(self, key):
        name = key.rsplit("/", 1)[-1]
        if name in PROTECTED_NAMES or key in self.view.hardlinked:
            return True
        if any(key.startswith(d + "/") for d in PROTECTED_DIRS):
            return True
        if key.startswith(self.pydir + "/"):
            rest = key[len(self.pydir) + 1:]
            if "/" not in rest or rest.split("/")[0] in PY_CORE:
                return True
        return False

    def _free(self, key, claimed):
        return not any(key == c or key.startswith(c + "/") or c.startswith(key + "/")
                       for c in claimed)

    def _files(self, top, claimed, max_size=None):
        out = []
        for k in sorted(self.view.descendants(top)):
            ti = self.view.header(k)
            if ti.isreg() and not self._protected(k) and self._free(k, claimed) \
                    and (max_size is None or ti.size <= max_size):
                out.append(k)
        return out

    def _dirs(self, top, claimed, min_children):
        out = []
        for k in sorted(self.view.descendants(top)):
            if self.view.dir_header(k) and not self._protected(k + "/x") \
                    and k not in PROTECTED_DIRS \
                    and self._free(k, claimed) \
                    and not any(d in self.view.hardlinked
                                for d in self.view.descendants(k)):
                n = len(self.view.children(k))
                if n >= min_children:
                    out.append(k)
        return out

    # -- header helpers ----------------------------------------------------
    def _new(self, key, kind, mode, step, size=0):
        ti = tarfile.TarInfo(key)
        ti.type, ti.mode, ti.size = kind, mode, size
        ti.mtime = BUILD_EPOCH + step * 3600
        ti.uname = ti.gname = "root"
        return ti

    def _marker(self, key, step):
        # Whiteouts are empty regular files; their mode and owner mean nothing.
        return self._new(key, tarfile.REGTYPE, 0o644, step)

    # -- one layer -----------------------------------------------------------
    def build_layer(self, step, path):
        """Write layer number `step` (5..19) to path; return its LayerWriter."""
        rng, view = self.rng, self.view
        entries = []           # (TarInfo, bytes or None), written in this order
        claimed = []
        theme = self.busy[step % len(self.busy)]
        summary = collections.Counter()

        def record(kind, key, detail=""):
            self.ops.append((step, kind, key, detail))
            summary[kind] += 1

        def delete_dir(d):
            """Whites out directory d, and records how much it hid."""
            n = len(view.descendants(d))
            entries.append((self._marker(parent_of(d) + "/.wh." + d.rsplit("/", 1)[1],
                                         step), None))
            view.remove(d)
            claimed.append(d)
            record("delete-dir", d, f"hides={n}")

        # Special operations at fixed steps, so that every variant of the image
        # (--small or Debian) has them at the same depth.
        if step == 8:      # delete a whole directory of the python stdlib
            cands = [d for d in self._dirs(self.pydir, claimed, 3)
                     if d.count("/") == self.pydir.count("/") + 1]
            delete_dir(rng.choice(cands))
        if step in (11, 14):   # opaque directory: docs in one, config in the other
            top = "usr/share/doc" if step == 11 else "etc"
            d = rng.choice(self._dirs(top, claimed, 3))
            hidden = sorted(view.descendants(d))
            ti = copy.copy(view.dir_header(d))
            ti.mtime = BUILD_EPOCH + step * 3600
            entries.append((ti, None))
            entries.append((self._marker(d + "/.wh..wh..opq", step), None))
            view.remove(d)
            view.set(d, ti)
            claimed.append(d)
            for i in range(2):
                data = f"replaces the contents of /{d} (step {step}, file {i})\n".encode()
                k = f"{d}/opaque-new-{i}"
                nti = self._new(k, tarfile.REGTYPE, 0o644, step, len(data))
                entries.append((nti, data))
                view.set(k, nti, data)
            record("opaque", d, "hides=" + ",".join(h[len(d) + 1:] for h in hidden[:5])
                   + (",..." if len(hidden) > 5 else "") + f" count={len(hidden)}")
        if step == 16:     # delete a whole documentation directory
            delete_dir(rng.choice(self._dirs("usr/share/doc", claimed, 2)))
        if step == 17 and self.deleted:   # a file deleted below comes back
            k = self.deleted[0]
            if self._free(k, claimed) and view.dir_header(parent_of(k)):
                data = f"re-created in step {step}\n".encode()
                nti = self._new(k, tarfile.REGTYPE, 0o644, step, len(data))
                entries.append((nti, data))
                view.set(k, nti, data)
                claimed.append(k)
                record("recreate", k)

        # Ordinary steps: mostly in the theme directory, some elsewhere, as a
        # Dockerfile's RUN lines would do.
        def pick_top():
            return theme if rng.random() < 0.75 else rng.choice(self.busy)

        for _ in range(rng.randint(1, 4)):          # edit: new content
            cands = self._files(pick_top(), claimed, MAX_EDIT_SIZE)
            if not cands:
                continue
            k = rng.choice(cands)
            old = view.header(k)
            # Append rather than replace: binaries keep running, python modules
            # and config files stay valid, and the size changes as it would.
            data = view.content(k) + f"\n# edited by build step {step}\n".encode()
            ti = copy.copy(old)
            ti.name = k
            ti.size, ti.mtime = len(data), BUILD_EPOCH + step * 3600
            ti.pax_headers = dict(old.pax_headers)
            entries.append((ti, data))
            view.set(k, ti, data)
            claimed.append(k)
            record("edit", k, f"size={old.size}->{len(data)}")

        for _ in range(rng.randint(1, 5)):          # add: new files
            top = pick_top()
            parent = top
            subdirs = self._dirs(top, claimed, 1)
            if subdirs and rng.random() < 0.5:
                parent = rng.choice(subdirs)
            if rng.random() < 0.2:
                # A new directory too, as `mkdir -p` in a build would make.
                nd = f"{parent}/strata-step{step}-dir"
                if view.header(nd) is None and self._free(nd, claimed):
                    ti = self._new(nd, tarfile.DIRTYPE, 0o755, step)
                    entries.append((ti, None))
                    view.set(nd, ti)
                    record("add-dir", nd)
                    parent = nd
            k = f"{parent}/strata-step{step}-{summary['add']}"
            if view.header(k) is not None or not self._free(k, claimed):
                continue
            mode = 0o755 if top == "usr/bin" else 0o644
            data = (f"#!/bin/sh\necho step {step}\n" if mode == 0o755
                    else f"added by build step {step}\n" * rng.randrange(1, 200)).encode()
            ti = self._new(k, tarfile.REGTYPE, mode, step, len(data))
            entries.append((ti, data))
            view.set(k, ti, data)
            claimed.append(k)
            record("add", k, f"size={len(data)}")

        for _ in range(rng.randint(1, 3)):          # delete: whiteout files
            cands = self._files(pick_top(), claimed)
            if not cands:
                continue
            k = rng.choice(cands)
            entries.append((self._marker(parent_of(k) + "/.wh." + k.rsplit("/", 1)[1],
                                         step), None))
            view.remove(k)
            claimed.append(k)
            self.deleted.append(k)
            record("delete", k)

        if step == 13:     # metadata only: chmod, same content
            cands = self._files("etc", claimed, MAX_EDIT_SIZE)
            k = rng.choice(cands)
            old = view.header(k)
            ti = copy.copy(old)
            ti.name, ti.mode = k, 0o600
            ti.mtime = BUILD_EPOCH + step * 3600
            data = view.content(k)
            entries.append((ti, data))
            view.set(k, ti, data)
            claimed.append(k)
            record("chmod", k, f"mode={old.mode:o}->600")
        if step == 10:     # a new hardlink pair and a symlink inside one layer
            a = "usr/bin/strata-step10-tool"
            data = b"#!/bin/sh\necho strata tool\n"
            ti = self._new(a, tarfile.REGTYPE, 0o755, step, len(data))
            entries.append((ti, data))
            view.set(a, ti, data)
            hl = self._new("usr/bin/strata-step10-alias", tarfile.LNKTYPE, 0o755, step)
            hl.linkname = a
            entries.append((hl, None))
            view.set(norm(hl.name), hl, data)
            view.hardlinked.update({a, norm(hl.name)})
            sl = self._new("usr/bin/strata-step10-link", tarfile.SYMTYPE, 0o777, step)
            sl.linkname = "strata-step10-tool"
            entries.append((sl, None))
            view.set(norm(sl.name), sl)
            record("add-hardlink", norm(hl.name), "target=" + a)
            record("add-symlink", norm(sl.name), "target=strata-step10-tool")

        w = LayerWriter(path, view.dir_header, plain_names=True)
        for ti, data in entries:
            w.add(ti, io.BytesIO(data) if data is not None else None)
        w.close()
        w.description = (f"build step {step}: " +
                         ", ".join(f"{v} {k}" for k, v in sorted(summary.items())))
        return w


# ---------------------------------------------------------------------------
# Overlay form

def extract_overlay(tar_path, dest):
    """Unpack one layer tar as an overlayfs lowerdir; return skip counters.

    Directory modes and mtimes are applied last (deepest first), so that a
    read-only directory like proc/ (0555) does not stop us creating its entries.
    """
    os.mkdir(dest, 0o755)
    made_dirs = {""}            # dirs we created: no symlink can be in the way
    dir_meta = []
    skipped = collections.Counter()
    with tarfile.open(tar_path, "r:") as tar:
        for m in tar:
            key = norm(m.name)
            if key.startswith("/") or ".." in key.split("/"):
                sys.exit(f"error: unsafe name in layer: {m.name!r}")
            parent, _, base = key.rpartition("/")
            for a in ancestors(key):
                if a not in made_dirs:
                    p = os.path.join(dest, a)
                    if os.path.islink(p) or (os.path.lexists(p) and not os.path.isdir(p)):
                        sys.exit(f"error: {m.name}: {a} is not a directory")
                    if not os.path.lexists(p):
                        os.mkdir(p, 0o700)
                        dir_meta.append((p, 0o755, m.mtime))
                    made_dirs.add(a)
            path = os.path.join(dest, key) if key else dest
            if base == ".wh..wh..opq":
                os.setxattr(os.path.join(dest, parent) if parent else dest,
                            "user.overlay.opaque", b"y")
                continue
            if base.startswith(".wh."):
                wpath = os.path.join(dest, parent, base[4:])
                os.mknod(wpath, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                # The marker's mtime, not the clock: rebuilt trees stay identical.
                os.utime(wpath, (m.mtime, m.mtime))
                continue
            if key and os.path.lexists(path) and not (m.isdir() and os.path.isdir(path)):
                ocilayout.rmtree_force(path)   # a later entry for a path wins
            if m.isdir():
                if key and not os.path.isdir(path):
                    os.mkdir(path, 0o700)
                made_dirs.add(key)
                dir_meta.append((path, m.mode, m.mtime))
            elif m.isreg():
                with open(path, "xb") as out:
                    shutil.copyfileobj(tar.extractfile(m), out, ocilayout.CHUNK)
                os.chmod(path, m.mode & 0o7777)
                os.utime(path, (m.mtime, m.mtime))
            elif m.issym():
                os.symlink(m.linkname, path)
                os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
            elif m.islnk():
                os.link(os.path.join(dest, norm(m.linkname)), path)
            elif m.isfifo():
                os.mkfifo(path)
                os.chmod(path, m.mode & 0o7777)   # mkfifo's mode is umasked
                os.utime(path, (m.mtime, m.mtime))
            elif m.ischr() or m.isblk():
                skipped["device"] += 1
                continue
            else:
                skipped["other"] += 1
                continue
            for k, v in m.pax_headers.items():
                if not k.startswith("SCHILY.xattr."):
                    continue
                name = k[len("SCHILY.xattr."):]
                # Unprivileged, only user.* can be set, and not on symlinks.
                if name.startswith("user.") and not m.issym():
                    os.setxattr(path, name, v.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
                else:
                    skipped["xattr"] += 1
    for path, mode, mtime in reversed(dir_meta):
        os.chmod(path, mode & 0o7777)
        os.utime(path, (mtime, mtime))
    return skipped


# ---------------------------------------------------------------------------

def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def clean_leftovers(outdir):
    for p in glob.glob(os.path.join(outdir, ".tmp-*")):
        log(f"removing leftover {p}")
        ocilayout.rmtree_force(p)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", metavar="OUTDIR", help="output directory (created)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--rootfs-tar", metavar="PATH",
                     help="use this rootfs tarball (plain, .gz, .xz or .bz2) "
                          "instead of running mmdebstrap")
    src.add_argument("--small", action="store_true",
                     help="synthetic rootfs of ~2000 entries instead of Debian: "
                          "no network, a few seconds (for CI)")
    ap.add_argument("--mirror", metavar="URL",
                    help="Debian mirror for mmdebstrap (default: its own choice)")
    ap.add_argument("--compress-level", type=int, default=6, metavar="N",
                    help="gzip level of the OCI layers (default: %(default)s)")
    args = ap.parse_args()

    t_start = time.monotonic()
    outdir = os.path.abspath(args.outdir)
    os.makedirs(outdir, exist_ok=True)
    # One build per OUTDIR at a time: the cleanup below would otherwise delete a
    # concurrent build's work directory.
    lock = open(os.path.join(outdir, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"waiting for another build in {outdir} to finish")
        fcntl.flock(lock, fcntl.LOCK_EX)
    clean_leftovers(outdir)

    work = tempfile.mkdtemp(dir=outdir, prefix=".tmp-build-")
    timings = {}
    try:
        t = time.monotonic()
        if args.small:
            small = SmallRootfs(SEED)
            small.build()
            rootfs = os.path.join(work, "rootfs-small.tar")
            small.write(rootfs)
            source = f"synthetic (--small, seed {SEED})"
        elif args.rootfs_tar:
            rootfs = os.path.abspath(args.rootfs_tar)
            source = rootfs
        else:
            rootfs = os.path.join(outdir, "rootfs.tar")
            if os.path.exists(rootfs):
                log(f"reusing cached {rootfs} (delete it to rebuild)")
            else:
                run_mmdebstrap(outdir, args.mirror)
            source = "mmdebstrap --mode=unshare --variant=minbase --include=python3 " \
                     "bookworm (" + rootfs + ")"
        timings["rootfs"] = time.monotonic() - t

        t = time.monotonic()
        src, members = read_rootfs(rootfs)
        layers_dir = os.path.join(work, "layers")
        os.mkdir(layers_dir)
        base_paths = [os.path.join(layers_dir, f"layer{i}.tar") for i in range(N_BASE)]
        writers = split_rootfs(src, members, base_paths)
        for w, d in zip(writers, LAYER_DESCRIPTIONS):
            w.description = d
        timings["split"] = time.monotonic() - t

        t = time.monotonic()
        view = View(src, members)
        steps = StepBuilder(view, SEED)
        for i in range(N_BASE, N_BASE + N_STEPS):
            p = os.path.join(layers_dir, f"layer{i}.tar")
            writers.append(steps.build_layer(i, p))
        src.close()
        timings["steps"] = time.monotonic() - t

        # OCI layouts: oci-20 shares the 5 base blobs with oci-5 by hardlink.
        t = time.monotonic()
        config = dict(cmd=["/bin/sh"],
                      env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                           "/sbin:/bin", "LANG=C.UTF-8"],
                      workdir="/")
        oci5, oci20 = os.path.join(work, "oci-5"), os.path.join(work, "oci-20")
        # zlib and sha256 release the GIL on large buffers, so threads really
        # compress layers in parallel; gzip is most of the build time otherwise.
        log(f"compressing {len(writers)} layers")
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            futures = [pool.submit(ocilayout.add_layer, oci5 if i < N_BASE else oci20,
                                   w.path, args.compress_level, w.description)
                       for i, w in enumerate(writers)]
            layers = [f.result() for f in futures]
        m5 = ocilayout.write_image(oci5, layers[:N_BASE], ref="latest", **config)
        for layer in layers[:N_BASE]:
            ocilayout.link_blob(oci5, oci20, layer.digest)
        m20 = ocilayout.write_image(oci20, layers, ref="latest", **config)
        timings["oci"] = time.monotonic() - t

        t = time.monotonic()
        skipped = {}
        for variant, n in (("overlay-5", N_BASE), ("overlay-20", N_BASE + N_STEPS)):
            vdir = os.path.join(work, variant)
            os.mkdir(vdir)
            for i in range(n):
                skipped[(variant, i)] = extract_overlay(writers[i].path,
                                                        os.path.join(vdir, f"layer{i}"))
        timings["overlay"] = time.monotonic() - t

        manifest = write_manifest(os.path.join(work, "manifest.txt"), source, members,
                                  writers, layers, m5, m20, steps.ops, skipped)

        # Swap all outputs first, delete the old ones after: the window in which
        # oci-5 is new but overlay-20 still old stays a few renames short.
        t = time.monotonic()
        olds = [ocilayout.publish(os.path.join(work, name), os.path.join(outdir, name),
                                  defer_cleanup=True)
                for name in ("oci-5", "oci-20", "overlay-5", "overlay-20",
                             "manifest.txt")]
        for old in olds:
            if old:
                ocilayout.rmtree_force(old)
        timings["publish"] = time.monotonic() - t
    finally:
        t = time.monotonic()
        ocilayout.rmtree_force(work)
        timings["cleanup"] = time.monotonic() - t

    devs = sum(s["device"] for (v, _), s in skipped.items() if v == "overlay-5")
    xat = sum(s["xattr"] for (v, _), s in skipped.items() if v == "overlay-5")
    # The op lines are for tests; people want the layer table.
    print("\n".join(line for line in manifest.splitlines()
                    if line.startswith(("source", "manifest", "#   "))))
    print(f"written: {outdir}/{{oci-5,oci-20,overlay-5,overlay-20,manifest.txt}}")
    print(f"overlay: skipped {devs} device node(s) and {xat} non-user xattr(s) "
          "per variant (cannot be created unprivileged)")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
          + f", total {time.monotonic() - t_start:.1f}s")


def write_manifest(path, source, members, writers, layers, m5, m20, ops, skipped):
    """manifest.txt: a readable report that tests can also parse line by line.

    Lines are "key value" words separated by single tabs; comment lines start
    with "#". One "layer" line per layer, one "op" line per build-step change.
    """
    lines = ["# strata test image (scripts/make-test-image.py)",
             f"source\t{source}",
             f"rootfs_entries\t{len(members)}",
             f"rootfs_content_bytes\t{sum(m.size for m in members if m.isreg())}",
             f"manifest\toci-5\t{m5}",
             f"manifest\toci-20\t{m20}",
             "# layer\tindex\tentries\tcontent_bytes\ttar_bytes\tgzip_bytes\tdigest"
             "\tdiff_id\tskipped_devices\tdescription"]
    for i, (w, l) in enumerate(zip(writers, layers)):
        s = skipped.get(("overlay-20", i), {})
        lines.append("\t".join(str(x) for x in (
            "layer", i, w.entries, w.content_bytes, l.tar_size, l.size, l.digest,
            l.diff_id, s.get("device", 0), w.description)))
    lines.append("# op\tlayer\tkind\tpath\tdetail   (kinds: edit add add-dir delete "
                 "delete-dir opaque recreate chmod add-hardlink add-symlink)")
    for step, kind, key, detail in ops:
        lines.append("\t".join(("op", str(step), kind, key, detail)))
    lines.append("# summary (entries, uncompressed content, gzip):")
    for i, (w, l) in enumerate(zip(writers, layers)):
        lines.append(f"#   layer{i:<2} {w.entries:6d} entries {human(w.content_bytes):>10}"
                     f" {human(l.size):>10}  {w.description}")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    main()
