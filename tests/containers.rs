//! Named containers, as the unprivileged test user: kept writable layers that
//! survive `start`, `ps` that tells running from exited (also after strata was
//! killed), `rm`, `commit` into an image that runs with the changes (deletions
//! included) and that umoci and skopeo read, `exec` into a running container, and
//! the store rules (rmi refuses an image a container uses; gc keeps its layers).

mod support;

use std::fs;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::busybox::*;
use support::*;

fn strata_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = run_cmd_any(env, args).output().expect("run strata");
    assert_ok(&out);
    stdout(&out)
}

/// `strata ARGS` (any subcommand) as the test user, with the setuid id-map helpers
/// usable as on any login.
fn run_cmd_any(env: &TestEnv, args: &[&str]) -> std::process::Command {
    let mut cmd = user_command_with_setuid_helpers(strata_bin());
    cmd.arg("--root")
        .arg(&env.root)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn ps(env: &TestEnv) -> Vec<serde_json::Value> {
    let out = strata_ok(env, &["ps", "-a", "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn status_of(env: &TestEnv, name: &str) -> (String, serde_json::Value) {
    let all = ps(env);
    let c = all
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in ps: {all:?}"));
    (
        c["status"].as_str().unwrap().to_string(),
        c["exit_code"].clone(),
    )
}

fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    run_cmd_any(env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_running(env: &TestEnv, name: &str) {
    assert!(
        wait_for(20.0, || ps(env)
            .iter()
            .any(|c| c["name"] == name && c["status"] == "running")),
        "{name} never ran"
    );
    // Its pid 1 has started its command.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_named_containers_writes_survive_start() {
    let env = TestEnv::new("ctr-start");
    let img = busybox(&env);
    let script = "cat /srv/count 2>/dev/null; echo x >> /srv/count; exit 5";
    let out = run_cmd(&env, &["--name", "keep", &img, "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(status_of(&env, "keep"), ("exited".into(), 5.into()));
    let again = run_cmd_any(&env, &["start", "keep"]).output().unwrap();
    assert_eq!(again.status.code(), Some(5), "{}", describe(&again));
    assert_eq!(stdout(&again), "x\n");
    let third = run_cmd_any(&env, &["start", "keep"]).output().unwrap();
    assert_eq!(stdout(&third), "x\nx\n");
    // Another run of the image does not see them; the name is taken.
    assert_eq!(
        strata_ok(&env, &["run", &img, "sh", "-c", "cat /srv/count || true"]),
        ""
    );
    let taken = run_cmd_any(&env, &["run", "--name", "keep", &img, "true"])
        .output()
        .unwrap();
    assert_fails(&taken, 125, "the name 'keep' is taken");
    // rmi refuses the image a kept container was made from.
    let out = env.strata(&["rmi", &img]);
    assert_fails(&out, 1, "used by the container keep");
    strata_ok(&env, &["rm", "keep"]);
    assert!(ps(&env).is_empty());
    assert_ok(&env.strata(&["rmi", &img]));
}

#[test]
fn ps_after_strata_is_killed_shows_exited_and_rm_frees_everything() {
    let env = TestEnv::new("ctr-kill");
    let img = busybox(&env);
    let mut child = spawn(
        &env,
        &[
            "run",
            "--name",
            "victim",
            &img,
            "sh",
            "-c",
            "echo kept > /srv/k; sleep 60",
        ],
    );
    wait_running(&env, "victim");
    // rm without -f refuses a running container.
    let out = run_cmd_any(&env, &["rm", "victim"]).output().unwrap();
    assert_fails(&out, 1, "is running");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(10.0, || status_of(&env, "victim").0 == "exited"),
        "still running after SIGKILL of strata: {:?}",
        ps(&env)
    );
    assert_eq!(status_of(&env, "victim").1, serde_json::Value::Null);
    // Its writable layer survived the crash.
    strata_ok(&env, &["commit", "victim", "after-crash:1"]);
    assert_eq!(
        strata_ok(&env, &["run", "after-crash:1", "cat", "/srv/k"]),
        "kept\n"
    );
    strata_ok(&env, &["rm", "victim"]);
    assert!(ps(&env).is_empty());
    let left: Vec<_> = fs::read_dir(env.root.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let locks: Vec<String> = fs::read_dir(env.root.join("locks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("container-"))
        .collect();
    assert!(locks.is_empty(), "{locks:?}");
    // With the committed image gone too, gc reclaims its layer.
    strata_ok(&env, &["rmi", "after-crash:1"]);
    strata_ok(&env, &["gc"]);
    let layers = fs::read_dir(env.root.join("layers")).unwrap().count();
    assert_eq!(layers, 1, "only the busybox layer should remain");
}

#[test]
fn rm_f_stops_a_running_container() {
    let env = TestEnv::new("ctr-rmf");
    let img = busybox(&env);
    let child = spawn(&env, &["run", "--name", "busy", &img, "sleep", "60"]);
    wait_running(&env, "busy");
    strata_ok(&env, &["rm", "-f", "busy"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    assert!(ps(&env).is_empty());
}

#[test]
fn commit_makes_an_image_with_the_changes_that_umoci_and_skopeo_read() {
    let env = TestEnv::new("ctr-commit");
    let img = busybox(&env);
    let script = "echo new > /srv/new; rm /srv/from-image; rm -r /home; mkdir -p /home/alice; \
                  echo mine > /home/alice/f; chown -R 1000:1000 /home/alice; chmod 600 /home/alice/f; \
                  ln /srv/new /srv/new-link; ln -s new /srv/new-sym; rm /bin/wc";
    strata_ok(&env, &["run", "--name", "c", &img, "sh", "-c", script]);
    let id = strata_ok(
        &env,
        &[
            "commit",
            "--change",
            "CMD [\"cat\", \"/srv/new\"]",
            "--change",
            "ENV COMMITTED=yes",
            "c",
            "committed:1",
        ],
    );
    assert_eq!(id.trim().len(), 64);
    assert_eq!(strata_ok(&env, &["run", "committed:1"]), "new\n");
    let check = "test -e /srv/from-image && echo from-image-back; test -e /bin/wc && echo wc-back; \
                 ls /home; stat -c '%u:%g %a' /home/alice/f; cat /home/alice/f; \
                 stat -c %i /srv/new /srv/new-link | uniq | wc -l; readlink /srv/new-sym; echo $COMMITTED";
    assert_eq!(
        strata_ok(&env, &["run", "committed:1", "sh", "-c", check]),
        "alice\n1000:1000 600\nmine\n1\nnew\nyes\n"
    );
    let images = env.images_json();
    let image = images
        .iter()
        .find(|i| i["names"] == serde_json::json!(["committed:1"]))
        .expect("the committed image is listed");
    assert_eq!(image["layers"].as_array().unwrap().len(), 2);

    // Saved as an OCI layout, skopeo and umoci read it, and umoci's unpack shows
    // the same tree the container saw.
    let layout = env.path("saved");
    strata_ok(
        &env,
        &[
            "save",
            "committed:1",
            &format!("oci:{}:v1", layout.display()),
        ],
    );
    let inspect = user_command("skopeo")
        .args(["inspect", &format!("oci:{}:v1", layout.display())])
        .output()
        .unwrap();
    assert_ok(&inspect);
    let inspected: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
    let bundle = env.path("bundle");
    let out = user_command("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert_ok(&out);
    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read_to_string(rootfs.join("srv/new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(rootfs.join("home/alice/f")).unwrap(),
        "mine\n"
    );
    assert!(
        !rootfs.join("srv/from-image").exists(),
        "the whiteout was not applied"
    );
    assert!(!rootfs.join("bin/wc").exists());
    // The image has none of them: the empty mount points strata made for its own
    // files stay out of the layer.
    for made in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        assert!(!rootfs.join(made).exists(), "{made} was committed");
    }
    assert!(rootfs.join("etc/passwd").exists());
    assert_eq!(
        fs::read_link(rootfs.join("srv/new-sym")).unwrap().to_str(),
        Some("new")
    );
    assert!(rootfs.join("bin/busybox").exists());
}

#[test]
fn exec_sees_the_running_containers_files_and_processes() {
    let env = TestEnv::new("ctr-exec");
    let img = busybox(&env);
    let mut child = spawn(
        &env,
        &[
            "run",
            "--name",
            "svc",
            "--hostname",
            "svc-host",
            &img,
            "sh",
            "-c",
            "echo up > /srv/state; sleep 60",
        ],
    );
    wait_running(&env, "svc");
    let out = run_cmd_any(
        &env,
        &[
            "exec",
            "svc",
            "sh",
            "-c",
            "cat /srv/state; echo pid=$$; tr '\\0' ' ' </proc/1/cmdline; echo; hostname; exit 9",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", describe(&out));
    // Its pid 1 is the container's (busybox sh execs its last command).
    assert_eq!(stdout(&out), "up\npid=2\nsleep 60 \nsvc-host\n");
    let as_alice = strata_ok(&env, &["exec", "-u", "alice", "svc", "id", "-u"]);
    assert_eq!(as_alice, "1000\n");
    strata_ok(&env, &["rm", "-f", "svc"]);
    child.wait().unwrap();
    let out = run_cmd_any(&env, &["exec", "svc", "true"])
        .output()
        .unwrap();
    assert_fails(&out, 125, "no container 'svc'");
}

#[test]
fn a_container_keeps_its_layers_through_rmi_force_and_gc() {
    let env = TestEnv::new("ctr-gc");
    let img = busybox(&env);
    strata_ok(
        &env,
        &[
            "run",
            "--name",
            "holder",
            &img,
            "sh",
            "-c",
            "echo held > /srv/h",
        ],
    );
    strata_ok(&env, &["rmi", "--force", &img]);
    strata_ok(&env, &["gc"]);
    // The image is gone by name; the container still runs on its layers.
    let out = run_cmd_any(&env, &["start", "holder"]).output().unwrap();
    assert_ok(&out);
    strata_ok(&env, &["rm", "holder"]);
    strata_ok(&env, &["gc"]);
    assert_eq!(fs::read_dir(env.root.join("layers")).unwrap().count(), 0);
}
