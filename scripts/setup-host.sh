#!/usr/bin/env bash
# Prepares a Debian machine for strata, as root: the packages strata's tests and
# comparisons use, /dev/fuse usable by ordinary users (mode 0666, as on a normal
# desktop), and an unprivileged user to run strata as.
#
#   sudo scripts/setup-host.sh [USER]      (USER defaults to strata-demo)
set -euo pipefail

user="${1:-strata-demo}"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host.sh: run me as root (sudo $0): I install packages and create a user" >&2
    exit 1
fi

packages=(
    busybox-static   # the default demo image is made of it
    python3          # image build scripts
    umoci skopeo     # peers that write and read OCI images; the tests compare with them
    mmdebstrap       # builds the realistic multi-layer test image
    uidmap           # newuidmap/newgidmap for subuid ranges
    fuse3            # fusermount3, /etc/fuse.conf
    fuse-overlayfs   # the FUSE union fs rootless podman uses: compared against
    podman runc      # tests/podman.rs: rootless podman with strata-overlayfs as mount_program (runc: crun refuses hybrid cgroup hosts)
    bubblewrap charliecloud-runtime  # bwrap and ch-run: container start compared against
    util-linux       # setpriv, unshare
    bsdutils         # script(1): tests/run.rs gives strata run -t a terminal
    zstd
    python3-matplotlib  # scripts/bench-compare.sh draws its chart
    docker-registry apache2-utils openssl  # a loopback registry (htpasswd, certs) for tests/registry.rs
)
missing=()
for p in "${packages[@]%% *}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-host.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "setup-host.sh: no Rust toolchain: install one with rustup (https://rustup.rs), Rust 1.85 or newer" >&2
    exit 1
fi

# Where /dev/fuse is root-only, ordinary users cannot mount FUSE even in their own
# user namespace. 0666 is what Debian and Fedora ship.
if [ -e /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
    chmod 0666 /dev/fuse
fi

if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
# A subordinate id range lets strata map many ids (and mmdebstrap --mode=unshare work).
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    grep -q "^$user:" "$f" || echo "$user:$((200000 + $(id -u "$user") * 65536 % 1000000000)):65536" >> "$f"
done
echo "setup-host.sh: ready (user $user)"
