#!/usr/bin/env bash
# The README's first command: set up this machine, build strata, make the default
# image (busybox, built here from Debian's busybox-static), and, as an unprivileged
# user, import it, list it, and run a container of it: strata's union filesystem as
# its root, in user, mount, pid, uts and ipc namespaces of the user's own.
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
# A real container: the command is pid 1, root inside is the user outside (with
# its subordinate ids from /etc/subuid), and its writes go to a layer of its own
# that is removed when it exits.
as_user env STRATA_ROOT="$work/store" "$bindir/strata" run --hostname demo busybox:latest sh -c '
    echo "hello from $(hostname): I am $(id -un), pid $$, in a container of strata"
    echo "my processes:"; ps
    echo "my root:"; mount | head -n 1
    echo changed > /etc/motd && echo "wrote /etc/motd into my own writable layer"'
