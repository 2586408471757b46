"""Write OCI image layouts from plain layer tarballs.

Importable helper for scripts/make-default-image.py and scripts/make-test-image.py.
Standard library only, so the scripts run on any machine with python3 and nothing
else: no skopeo, umoci or docker is needed to *produce* an image, only to check one.

Typical use:

    import ocilayout
    ocilayout.write_oci_layout("out/oci", ["layer0.tar", "layer1.tar"],
                               ref="latest", cmd=["/bin/sh"],
                               env=["PATH=/usr/bin:/bin"])

or, to share compressed layers between several layouts (the 20-layer test image
reuses the 5-layer one's blobs instead of compressing 200 MB twice):

    layers = [ocilayout.add_layer("out/oci-5", t) for t in tars]
    ocilayout.write_image("out/oci-5", layers, ref="latest")
    ocilayout.link_blob("out/oci-5", "out/oci-20", layers[0].digest)

Everything written is deterministic: the same input tars and options give the same
digests on every run and every machine of the same architecture (gzip mtime is 0, the
gzip header carries no file name, JSON keys are sorted, "created" comes from
SOURCE_DATE_EPOCH or is the epoch). Tests and benchmarks can then compare digests.

This file is a module, not a command; `python3 ocilayout.py --help` says so.
"""

import dataclasses
import datetime
import gzip
import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import tempfile

MEDIA_LAYOUT_VERSION = "1.0.0"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

# 1 MiB: big enough that the per-call overhead of hashing and zlib is negligible,
# small enough that a 200 MB layer never sits in memory.
CHUNK = 1 << 20

# Python's platform.machine() returns the kernel's name for the CPU; OCI uses Go's
# GOARCH names. Only amd64 and arm64 matter to strata today, the rest are cheap.
_GOARCH = {
    "x86_64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "i386": "386", "i686": "386",
    "armv7l": "arm", "armv6l": "arm",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


def host_architecture():
    """The host's CPU as an OCI/GOARCH architecture name (amd64, arm64, ...)."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine)


def source_date_epoch():
    """Timestamp for "created" fields and synthetic tar entries.

    Honours SOURCE_DATE_EPOCH (reproducible-builds.org) so that a packager can pin
    it; otherwise 0, because a wall-clock time would change every digest per run.
    """
    try:
        return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    except ValueError:
        return 0


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Layer:
    """One compressed layer stored in a layout's blobs/."""
    digest: str      # "sha256:<hex>" of the gzip blob: what manifests reference
    diff_id: str     # "sha256:<hex>" of the uncompressed tar: what configs reference
    size: int        # bytes of the gzip blob (the descriptor's size)
    tar_size: int    # bytes of the uncompressed tar, for reports
    comment: str = ""  # becomes the history entry's created_by


class _HashingWriter:
    """File-like sink that hashes and counts what gzip writes through it.

    GzipFile needs only write() and flush() on its fileobj; hashing here lets us get
    the compressed digest in the same single pass that compresses the data.
    """

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        return self._f.write(b)

    def flush(self):
        self._f.flush()


def _blob_path(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def init_layout(layout):
    """Create (or keep) the oci-layout file and blobs/sha256 directory."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    path = os.path.join(layout, "oci-layout")
    if not os.path.exists(path):
        _write_atomic(path, _json_bytes({"imageLayoutVersion": MEDIA_LAYOUT_VERSION}))


def _json_bytes(obj):
    # Sorted keys and no whitespace: the digest of a config or manifest must not
    # depend on dict insertion order or on a Python version's default formatting.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _write_atomic(path, data):
    # Write-then-rename so that a reader (or a killed run) never sees half a file.
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def add_blob(layout, data):
    """Store bytes as a content-addressed blob; return (digest, size)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = _blob_path(layout, digest)
    if not os.path.exists(path):
        _write_atomic(path, data)
    return digest, len(data)


def add_layer(layout, tar_path, compresslevel=6, comment=""):
    """gzip a layer tar into the layout's blobs, streaming; return its Layer.

    compresslevel 6 is gzip(1)'s default: level 9 costs about twice the time for a
    percent or two of size, which matters when the test image is rebuilt in CI.
    """
    init_layout(layout)
    blobdir = os.path.join(layout, "blobs", "sha256")
    fd, tmp = tempfile.mkstemp(dir=blobdir, prefix=".tmp-")
    diff = hashlib.sha256()
    tar_size = 0
    try:
        with os.fdopen(fd, "wb") as raw, open(tar_path, "rb") as src:
            sink = _HashingWriter(raw)
            # filename="" keeps the temporary name out of the gzip header, and
            # mtime=0 keeps the clock out: both would change the digest per run.
            with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0,
                               compresslevel=compresslevel) as gz:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    diff.update(chunk)
                    tar_size += len(chunk)
                    gz.write(chunk)
        digest = "sha256:" + sink.sha.hexdigest()
        os.chmod(tmp, 0o644)
        os.replace(tmp, _blob_path(layout, digest))
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return Layer(digest=digest, diff_id="sha256:" + diff.hexdigest(),
                 size=sink.size, tar_size=tar_size, comment=comment)


def link_blob(src_layout, dst_layout, digest):
    """Make a blob of src_layout available in dst_layout without copying if possible.

    Hardlinks cost nothing and blobs are immutable, so sharing the inode is safe;
    across filesystems (or where links are refused) fall back to a copy.
    """
    init_layout(dst_layout)
    src = _blob_path(src_layout, digest)
    dst = _blob_path(dst_layout, digest)
    if os.path.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst + ".tmp-copy"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def make_config(layers, architecture=None, entrypoint=None, cmd=None, env=None,
                workdir=None, user=None, labels=None, created=None):
    """The image config (application/vnd.oci.image.config.v1+json) as a dict."""
    if created is None:
        created = rfc3339(source_date_epoch())
    cfg = {}
    # Only set what was asked for: an empty Entrypoint and an absent one mean
    # different things to runtimes that merge a user's command with the image's.
    if entrypoint is not None:
        cfg["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        cfg["Cmd"] = list(cmd)
    if env is not None:
        cfg["Env"] = list(env)
    if workdir is not None:
        cfg["WorkingDir"] = workdir
    if user is not None:
        cfg["User"] = user
    if labels:
        cfg["Labels"] = dict(labels)
    config = {
        "architecture": architecture or host_architecture(),
        "os": "linux",
        "created": created,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        "history": [{"created": created,
                     "created_by": x.comment or "strata scripts/ocilayout.py"}
                    for x in layers],
    }
    return config


def write_image(layout, layers, ref="latest", annotations=None, **config_kwargs):
    """Write config + manifest for already-stored layers and tag them as ref.

    index.json keeps other refs already in the layout (one layout can hold several
    images) and replaces an existing descriptor of the same ref.
    Returns the manifest digest.
    """
    init_layout(layout)
    config = make_config(layers, **config_kwargs)
    config_digest, config_size = add_blob(layout, _json_bytes(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": MT_LAYER_GZIP, "digest": x.digest, "size": x.size}
                   for x in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    man_digest, man_size = add_blob(layout, _json_bytes(manifest))

    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path, "rb") as f:
            index = json.load(f)
    index["manifests"] = [m for m in index.get("manifests", [])
                          if m.get("annotations", {}).get(REF_ANNOTATION) != ref]
    index["manifests"].append({
        "mediaType": MT_MANIFEST,
        "digest": man_digest,
        "size": man_size,
        "platform": {"architecture": config["architecture"], "os": "linux"},
        "annotations": {REF_ANNOTATION: ref},
    })
    _write_atomic(index_path, _json_bytes(index))
    return man_digest


def write_oci_layout(layout, layer_tars, ref="latest", compresslevel=6,
                     comments=None, **config_kwargs):
    """One call: compress layer_tars (bottom first) into layout and tag as ref.

    Returns (manifest_digest, [Layer, ...]).
    """
    comments = comments or [""] * len(layer_tars)
    layers = [add_layer(layout, t, compresslevel, c)
              for t, c in zip(layer_tars, comments)]
    return write_image(layout, layers, ref=ref, **config_kwargs), layers


# --- publishing whole output directories --------------------------------------
# Both image scripts build into a temporary directory next to the destination and
# then swap it in, so that a consumer never sees a half-written image and a re-run
# replaces the old one. These helpers live here to avoid a third module.

def rmtree_force(path):
    """shutil.rmtree that also works on trees with read-only directories.

    Unpacked layers keep the image's modes, e.g. proc/ and sys/ are 0555: an
    unprivileged owner must first give itself write permission on a directory
    before it may unlink the entries in it.
    """
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
        return
    if not os.path.exists(path):
        return
    os.chmod(path, os.lstat(path).st_mode | stat.S_IRWXU)
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, os.lstat(p).st_mode | stat.S_IRWXU)
    shutil.rmtree(path)


def publish(tmp_path, final_path, defer_cleanup=False):
    """Replace final_path by tmp_path (a file or directory on the same filesystem).

    rename(2) cannot atomically replace a non-empty directory, so the old one is
    first renamed aside, then the new one renamed in: a reader sees either the
    complete old or the complete new output, except for the instant between the
    two renames where the path does not exist at all.

    The old output is deleted here, or, with defer_cleanup, returned for the
    caller to delete once all its outputs are swapped: deleting a few hundred MB
    takes seconds, and outputs that belong together should change together.
    """
    old = None
    if os.path.lexists(final_path):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(final_path)),
                               prefix=".tmp-old-")
        os.rename(final_path, os.path.join(old, "x"))
    os.rename(tmp_path, final_path)
    if old and not defer_cleanup:
        rmtree_force(old)
        old = None
    return old


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    sys.stderr.write("ocilayout.py is a module; import it (see --help)\n")
    sys.exit(2)
