#!/usr/bin/env python3
"""Build strata's default demo image: a one-layer busybox as an OCI image layout.

The image is small (about 1 MB compressed), needs no network and no registry, and
is enough to show `strata run` working: a shell, ps, mount, id and the other
common tools, all applets of one static busybox.

Source: /bin/busybox from Debian's busybox-static package (apt-get install
busybox-static). It must be statically linked, since the image has no libc.

Runs as any user. Every tar header names root:root explicitly, so the image
looks the same whoever builds it; nothing here needs privileges.

The output is deterministic: the same busybox gives the same digests (timestamps
are SOURCE_DATE_EPOCH, 0 when unset). An existing OUTDIR is replaced as a whole,
so a re-run never mixes old and new blobs.

Check the result with, e.g.:
    skopeo inspect oci:OUTDIR:latest
    umoci unpack --rootless --image OUTDIR:latest /tmp/bundle
"""

import argparse
import io
import os
import struct
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ocilayout  # noqa: E402

# Applets that get a /bin symlink. Not all of busybox's ~400: a short, stable list
# keeps the layer's entry count predictable for tests; `busybox --install` inside
# the container can add the rest.
APPLETS = [
    "sh", "ls", "cat", "echo", "id", "env", "ps", "mkdir", "rm", "true", "false",
    "sleep", "uname", "hostname", "mount", "grep", "sed", "wc", "head", "tail",
    "touch", "stat", "find", "cp", "mv", "ln", "chmod", "readlink", "date",
    "printf", "test", "kill", "whoami",
]

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = (
    "root:x:0:\n"
    "nogroup:x:65534:\n"
)

# (path, mode). /tmp is sticky and world-writable like on any Linux; /root is
# private. proc, sys and dev are the mount points the runtime needs to exist.
DIRS = [
    ("bin", 0o755), ("etc", 0o755), ("home", 0o755), ("root", 0o700),
    ("tmp", 0o1777), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755),
]


def is_static_elf(path):
    """True if path is an ELF file without a PT_INTERP program header.

    Debian's plain `busybox` package is dynamically linked; put into an image
    without libc it fails with a confusing "not found". Catch that here instead.
    """
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        end = "<" if ident[5] == 1 else ">"
        if is64:
            hdr = f.read(48)
            phoff, = struct.unpack(end + "Q", hdr[16:24])
            phentsize, phnum = struct.unpack(end + "HH", hdr[38:42])
        else:
            hdr = f.read(36)
            phoff, = struct.unpack(end + "I", hdr[12:16])
            phentsize, phnum = struct.unpack(end + "HH", hdr[26:30])
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: needs a dynamic loader
                return False
    return True


def _info(name, kind, mode, mtime, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = mtime
    ti.size = size
    ti.linkname = linkname
    # Explicit owners: tarfile would otherwise leave uid/gid 0 but empty names,
    # and some unpackers map by name first.
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def write_layer(tar_path, busybox, mtime):
    """The single layer, with entries in a fixed order so its digest is stable."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in DIRS:
            tar.addfile(_info(name, tarfile.DIRTYPE, mode, mtime))
        size = os.path.getsize(busybox)
        with open(busybox, "rb") as f:
            tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, mtime, size), f)
        for applet in APPLETS:
            # Relative targets keep working wherever the rootfs is mounted.
            tar.addfile(_info("bin/" + applet, tarfile.SYMTYPE, 0o777, mtime,
                              linkname="busybox"))
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            data = text.encode()
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, mtime, len(data)),
                        io.BytesIO(data))


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", metavar="OUTDIR",
                    help="OCI image layout directory to create or replace")
    ap.add_argument("--ref", default="latest",
                    help="tag stored in index.json (default: %(default)s)")
    ap.add_argument("--busybox", default="/bin/busybox",
                    help="static busybox binary to use (default: %(default)s)")
    args = ap.parse_args()

    if not os.path.exists(args.busybox):
        sys.exit(f"error: {args.busybox} not found; install it with "
                 "`apt-get install busybox-static`")
    if not is_static_elf(args.busybox):
        sys.exit(f"error: {args.busybox} is not a static ELF binary; the image "
                 "has no libc. Install busybox-static (not busybox).")

    outdir = os.path.abspath(args.outdir)
    parent = os.path.dirname(outdir)
    os.makedirs(parent, exist_ok=True)
    # Build next to OUTDIR so the final rename stays on one filesystem.
    work = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(outdir) + "-")
    try:
        mtime = ocilayout.source_date_epoch()
        tar_path = os.path.join(work, "layer.tar")
        write_layer(tar_path, args.busybox, mtime)
        layout = os.path.join(work, "oci")
        digest, layers = ocilayout.write_oci_layout(
            layout, [tar_path], ref=args.ref,
            comments=["strata default image: busybox-static with /bin applets"],
            cmd=["/bin/sh"], env=[PATH_ENV], workdir="/")
        ocilayout.publish(layout, outdir)
    finally:
        ocilayout.rmtree_force(work)
    print(f"{outdir}: ref {args.ref}, manifest {digest}, "
          f"layer {layers[0].digest} ({layers[0].size} bytes)")


if __name__ == "__main__":
    main()
