//! Rootless podman with strata-overlayfs as its overlay `mount_program`, the point of
//! issue 6: nothing changed but the program's path in storage.conf.
//!
//! As the test user, with podman's whole state (storage.conf, graph root, run root,
//! HOME, XDG_RUNTIME_DIR) in the test's own directory: a busybox image is imported
//! from a tarball (no registry, no network), then run with podman's default user
//! namespace (the user is root, the subordinate ids the rest) and with
//! `--userns=keep-id` (where podman passes uidmapping/gidmapping to the mount
//! program). A wrapper logs podman's command line and execs strata-overlayfs; the
//! container's root must be a strata mount and show the image's owners and modes.
//!
//! Outside strata, and so chosen here: `--network=none` (slirp4netns needs
//! /dev/net/tun, which ordinary users may not open on every machine), and runc where
//! it is installed (crun refuses hosts with cgroup v1 and v2 mounted together, "cgroups
//! in hybrid mode not supported"). Skips, saying why, where podman is not installed.

mod support;

use std::fs;
use std::path::Path;

use support::mountns::*;
use support::*;

/// The image: busybox-static's binary and the applets the scripts use, a sticky
/// /tmp, and files whose owners and modes the user could not give them on disk.
fn image_tar() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("read /bin/busybox (package busybox-static)");
    let mut entries = vec![
        Entry::dir("bin").mode(0o755),
        Entry::file("bin/busybox", busybox).mode(0o755),
        Entry::dir("etc").mode(0o755),
        Entry::file("etc/owned", "by 1000\n")
            .owner(1000, 1000)
            .mode(0o640),
        Entry::file("etc/suid", "setuid\n").mode(0o4755),
        Entry::dir("tmp").mode(0o1777),
    ];
    for applet in [
        "sh", "id", "stat", "cat", "echo", "rm", "grep", "sed", "cut",
    ] {
        entries.push(Entry::symlink(format!("bin/{applet}"), "busybox"));
    }
    tar(&entries)
}

/// What each container prints: its uid, the image's owners and modes, a write, a
/// delete, and the filesystem type of its root.
const INSIDE: &str = "id -u; stat -c '%u:%g %a %n' /bin/busybox /etc/owned /etc/suid /tmp; \
echo written > /tmp/new && stat -c '%u %n' /tmp/new && cat /tmp/new; \
rm /etc/suid && [ ! -e /etc/suid ] && echo removed; grep ' / / ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1";

const PODMAN_SH: &str = r#"
export HOME="$W/home" XDG_RUNTIME_DIR="$W/xdg" XDG_CONFIG_HOME="$W/home/.config"
export XDG_DATA_HOME="$W/home/.local/share" CONTAINERS_STORAGE_CONF="$W/storage.conf"
mkdir -p "$HOME" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
cat > "$W/mount-program" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >> "$W/mount-args.log"
exec "$OVL" "\$@"
EOF
chmod 755 "$W/mount-program"
cat > "$W/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$W/graph"
rootless_storage_path = "$W/graph"
runroot = "$W/run"
[storage.options.overlay]
mount_program = "$W/mount-program"
EOF
runtime=
if command -v runc > /dev/null; then runtime=--runtime=runc; fi
p() { timeout -s KILL 60 podman $runtime --cgroup-manager=cgroupfs --events-backend=file "$@"; }
# Whatever happens, the pause process that holds podman's user namespace goes.
trap 'pid=$(cat "$XDG_RUNTIME_DIR/libpod/tmp/pause.pid" 2>/dev/null) && kill -KILL "$pid" 2>/dev/null; true' EXIT
p import "$W/image.tar" localhost/strata-busybox:1 > "$W/import.out"
p run --rm --network=none localhost/strata-busybox:1 sh -c "$INSIDE" > "$W/default.out"
p run --rm --network=none --userns=keep-id localhost/strata-busybox:1 sh -c "$INSIDE" > "$W/keep-id.out"
p images --format '{{.Repository}}' > "$W/images.out"
# The graph's files belong to subordinate ids: only podman's namespace may remove them.
p system reset --force > /dev/null 2>&1
"#;

fn podman_installed() -> bool {
    ["/usr/bin/podman", "/usr/local/bin/podman"]
        .iter()
        .any(|p| Path::new(p).exists())
}

#[test]
fn rootless_podman_runs_containers_on_strata_overlayfs() {
    if !podman_installed() {
        eprintln!("skipped: podman is not installed (scripts/setup-host.sh installs it)");
        return;
    }
    if subid_range("/etc/subuid").is_none() || !Path::new("/usr/bin/newuidmap").exists() {
        eprintln!("skipped: rootless podman needs a subordinate id range and newuidmap");
        return;
    }
    let Some(ovl) = overlayfs_bin() else {
        panic!("no strata-overlayfs binary in this package");
    };
    let env = TestEnv::new("podman");
    let image = env.path("image.tar");
    fs::write(&image, image_tar()).unwrap();
    give_to_user(&image);
    let script = format!(
        "OVL='{}'\nINSIDE=\"{}\"\n{PODMAN_SH}",
        ovl.display(),
        INSIDE.replace('"', "\\\"")
    );
    let out = host_sh(&env, &script, &[]);
    let read = |n: &str| fs::read_to_string(env.path(n)).unwrap_or_default();
    assert!(
        out.status.success(),
        "podman failed: {}\n--- mount program's command lines ---\n{}",
        describe(&out),
        read("mount-args.log")
    );

    let args = read("mount-args.log");
    let lines: Vec<&str> = args.lines().collect();
    assert!(
        lines.len() >= 2 && lines.iter().all(|l| l.contains("lowerdir=")),
        "podman did not run the mount program for each container:\n{args}"
    );
    assert!(
        lines.iter().any(|l| l.contains("uidmapping=")),
        "no uidmapping= with --userns=keep-id (has podman changed?):\n{args}"
    );

    let user = user();
    // Only the container's root may delete in the root-owned /etc.
    let want = |uid: u32, removed: &str| {
        format!(
            "{uid}\n0:0 755 /bin/busybox\n1000:1000 640 /etc/owned\n0:0 4755 /etc/suid\n\
             0:0 1777 /tmp\n{uid} /tmp/new\nwritten\n{removed}fuse.strata\n"
        )
    };
    assert_eq!(
        read("default.out"),
        want(0, "removed\n"),
        "podman run, the default user namespace (podman's mount lines:\n{args})"
    );
    assert_eq!(
        read("keep-id.out"),
        want(user.uid, ""),
        "podman run --userns=keep-id (podman's mount lines:\n{args})"
    );
    assert!(
        read("images.out").contains("localhost/strata-busybox"),
        "{}",
        read("images.out")
    );
}
