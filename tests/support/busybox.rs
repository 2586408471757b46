//! A busybox image made by the tests, from the host's static busybox (Debian's
//! busybox-static, which scripts/setup-host.sh installs): one layer with its
//! applets, a passwd and group with a non-root user, and the usual mount points;
//! and `strata run` as the test user.

use std::fs;
use std::process::Command;

use super::builder::{Entry, Image, LayerBlob};
use super::harness::{TestEnv, strata_bin, user_command_with_setuid_helpers};

pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "ls", "ps", "env", "pwd", "hostname", "sleep", "kill", "grep",
    "test", "tty", "stty", "touch", "stat", "tr", "readlink", "chown", "chmod", "ln", "rm", "uniq",
    "mkdir", "wc", "true", "false", "whoami", "head",
];

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
pub const GROUP: &str = "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\nnogroup:x:65534:\n";

pub fn busybox_entries() -> Vec<Entry> {
    let busybox = fs::read("/bin/busybox")
        .expect("/bin/busybox: install busybox-static (scripts/setup-host.sh does)");
    let mut entries = vec![
        Entry::dir("bin/"),
        Entry::file("bin/busybox", busybox).mode(0o755),
        Entry::dir("etc/"),
        Entry::file("etc/passwd", PASSWD),
        Entry::file("etc/group", GROUP),
        Entry::file("etc/not-executable", "#!/bin/sh\necho no\n").mode(0o644),
        Entry::dir("home/"),
        Entry::dir("home/alice/").owner(1000, 1000),
        Entry::dir("root/").mode(0o700),
        Entry::dir("tmp/").mode(0o1777),
        Entry::dir("proc/").mode(0o555),
        Entry::dir("sys/").mode(0o555),
        Entry::dir("dev/"),
        Entry::dir("srv/"),
        Entry::file("srv/from-image", "image data\n"),
    ];
    for applet in APPLETS {
        entries.push(Entry::symlink(format!("bin/{applet}"), "busybox"));
    }
    entries
}

/// The busybox image with `config` as its run config, imported as `name`.
pub fn image_with(env: &TestEnv, name: &str, config: serde_json::Value) -> String {
    let mut image = Image::new(vec![LayerBlob::gz(busybox_entries())]).with_ref(name);
    image.run_config = Some(config);
    let written = image.write(&env.path(&format!("img-{}", name.replace(':', "-"))));
    env.import(&written.source(), Some(name));
    name.to_string()
}

pub fn busybox(env: &TestEnv) -> String {
    image_with(
        env,
        "bb:1",
        serde_json::json!({ "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["/bin/sh"] }),
    )
}

/// `strata run` as the test user, with the system's setuid id-map helpers usable as
/// on any login (the process itself has no capability).
pub fn run_cmd(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = user_command_with_setuid_helpers(strata_bin());
    cmd.arg("--root").arg(&env.root).arg("run").args(args);
    cmd
}
