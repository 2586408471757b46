#!/usr/bin/env bash
# The README's first command: set up this machine, build strata, make the default
# image (busybox, built here from Debian's busybox-static), and, as an unprivileged
# user, import it, list it, and mount it with strata's union filesystem.
#
#   sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

user=strata-demo
if [ "$(id -u)" -eq 0 ]; then
    bash scripts/setup-host.sh "$user"
fi

cargo build --release --quiet

# The binary must be reachable by the unprivileged user: a checkout under /root is not.
bindir=/usr/local/lib/strata
if [ "$(id -u)" -eq 0 ]; then
    install -d -m 0755 "$bindir"
    install -m 0755 target/release/strata "$bindir/strata"
    install -m 0644 scripts/ocilayout.py scripts/make-default-image.py "$bindir/"
    as_user() { setpriv --reuid="$user" --regid="$user" --init-groups --reset-env -- "$@"; }
else
    bindir="$PWD/target/release"
    cp scripts/ocilayout.py scripts/make-default-image.py "$bindir/"
    as_user() { "$@"; }
fi

work=/var/tmp/strata-demo-$(id -u "${SUDO_USER:-$user}" 2>/dev/null || id -u)
install -d -m 0755 "$work"
[ "$(id -u)" -eq 0 ] && chown "$user:" "$work"

as_user python3 "$bindir/make-default-image.py" "$work/busybox-oci"
as_user env STRATA_ROOT="$work/store" "$bindir/strata" import "oci:$work/busybox-oci:latest" busybox:latest
as_user env STRATA_ROOT="$work/store" "$bindir/strata" images
# The image through strata's FUSE union filesystem, in a user and mount namespace of
# the user's own (the mount goes with it): its busybox runs from the mount.
as_user env STRATA_ROOT="$work/store" unshare -Urm sh -c "
    mkdir -p '$work/mnt' && '$bindir/strata' mount busybox '$work/mnt' &&
    ls -l '$work/mnt/bin/busybox' && '$work/mnt/bin/busybox' echo 'busybox ran from the strata mount' &&
    '$bindir/strata' umount '$work/mnt'"
