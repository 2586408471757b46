//! `strata run`, as the unprivileged test user: exit codes, streams, terminals, the
//! image config and the flags that override it, identities, binds, isolation,
//! signals, and that nothing is left behind.
//!
//! The image is support::busybox's, made from the host's static busybox.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::busybox::*;
use support::mountns::subid_range;
use support::*;

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let out = run_cmd(env, args)
        .stdin(Stdio::null())
        .output()
        .expect("run strata");
    nothing_left(env);
    out
}

fn run_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = run(env, args);
    assert_ok(&out);
    stdout(&out)
}

/// No container directory, container lock or mount of the store survives a run.
#[track_caller]
fn nothing_left(env: &TestEnv) {
    let containers = env.root.join("containers");
    let left: Vec<_> = fs::read_dir(&containers)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "container directories left: {left:?}");
    let locks: Vec<_> = fs::read_dir(env.root.join("locks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("container-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(locks.is_empty(), "container locks left: {locks:?}");
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(env.root.to_str().unwrap()),
        "a mount of the store is left on the host:\n{mounts}"
    );
}

#[test]
fn exit_codes_are_the_commands_or_podmans() {
    let env = TestEnv::new("run-codes");
    let img = busybox(&env);
    assert_eq!(run(&env, &[&img, "true"]).status.code(), Some(0));
    assert_eq!(
        run(&env, &[&img, "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    let not_found = run(&env, &[&img, "no-such-command"]);
    assert_fails(
        &not_found,
        127,
        "no-such-command: command not found in the image",
    );
    let missing = run(&env, &[&img, "/bin/nope"]);
    assert_fails(&missing, 127, "/bin/nope");
    let not_exec = run(&env, &[&img, "/etc/not-executable"]);
    assert_fails(&not_exec, 126, "cannot execute /etc/not-executable");
    // Killed by a signal: 128 + N. The command is not pid 1 under --init, so it can
    // be killed from inside.
    let killed = run(&env, &["--init", &img, "sh", "-c", "kill -9 $$"]);
    assert_eq!(killed.status.code(), Some(137), "{}", describe(&killed));
    let termed = run(&env, &["--init", &img, "sh", "-c", "kill -TERM $$"]);
    assert_eq!(termed.status.code(), Some(143), "{}", describe(&termed));
}

#[test]
fn strata_errors_say_what_to_do() {
    let env = TestEnv::new("run-errors");
    let img = busybox(&env);
    let out = run(&env, &["bb:2", "true"]);
    assert_fails(&out, 125, "did you mean bb:1");
    let out = run(&env, &["-v", "/nonexistent-strata-source:/x", &img, "true"]);
    assert_fails(
        &out,
        125,
        "bind source /nonexistent-strata-source does not exist",
    );
    let out = run(&env, &["--cap-add", "FLYING", &img, "true"]);
    assert_fails(&out, 125, "no such capability");
    let no_cmd = image_with(&env, "nocmd:1", serde_json::json!({}));
    let out = run(&env, &[&no_cmd]);
    assert_fails(&out, 125, "neither Entrypoint nor Cmd");
    let out = run(&env, &["-u", "mallory", &img, "true"]);
    assert_fails(
        &out,
        125,
        "user \"mallory\" is not in the image's /etc/passwd",
    );
}

#[test]
fn fuse_device_not_accessible_is_said_clearly() {
    if !is_root() {
        eprintln!("skipped: needs root to hide /dev/fuse in a mount namespace");
        return;
    }
    let env = TestEnv::new("run-nofuse");
    let img = busybox(&env);
    let blocker = env.path("fuse-blocker");
    fs::write(&blocker, "").unwrap();
    fs::set_permissions(&blocker, fs::Permissions::from_mode(0o600)).unwrap();
    // Root hides /dev/fuse behind a root-only file in a mount namespace of its own;
    // strata, as the test user, then meets it as on a machine where it is 0600.
    let inner = run_cmd(&env, &[&img, "true"]);
    let mut argv = vec![inner.get_program().to_owned()];
    argv.extend(inner.get_args().map(|a| a.to_owned()));
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /dev/fuse && exec \"$@\"",
            blocker.display()
        ))
        .arg("sh")
        .args(&argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_fails(&out, 125, "/dev/fuse is not accessible");
    nothing_left(&env);
}

#[test]
fn streams_are_kept_apart_and_stdin_comes_with_i() {
    let env = TestEnv::new("run-streams");
    let img = busybox(&env);
    let out = run(&env, &[&img, "sh", "-c", "echo to-out; echo to-err >&2"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "to-out\n");
    assert_eq!(stderr(&out), "to-err\n");
    let piped = |args: &[&str]| {
        let mut child = run_cmd(&env, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"line one\nline two\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let with_i = piped(&["-i", &img, "wc", "-l"]);
    assert_ok(&with_i);
    assert_eq!(stdout(&with_i).trim(), "2");
    // Without -i the container's stdin is empty, as podman's.
    let without = piped(&[&img, "wc", "-l"]);
    assert_ok(&without);
    assert_eq!(stdout(&without).trim(), "0");
    nothing_left(&env);
}

#[test]
fn t_gives_a_terminal_of_the_containers_own() {
    let env = TestEnv::new("run-tty");
    let img = busybox(&env);
    let strata = format!(
        "{} --root {} run",
        strata_bin().display(),
        env.root.display()
    );
    // script(1) gives strata a terminal of 33 rows and 101 columns; the container
    // must see a terminal of its own devpts, of that size, as all three streams.
    let script = format!(
        "stty rows 33 cols 101; {strata} -t {img} sh -c 'tty; stty size; test -t 0 && test -t 1 && test -t 2 && echo all-ttys; exit 4'"
    );
    let out = user_command_with_setuid_helpers("script")
        .args(["-qec", &script, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out).replace('\r', "");
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(text.contains("/dev/pts/0\n"), "{text}");
    assert!(text.contains("33 101\n"), "{text}");
    assert!(text.contains("all-ttys\n"), "{text}");
    // -it: what is typed reaches the shell, and its exit code comes back.
    let out = user_command_with_setuid_helpers("sh")
        .args([
            "-c",
            &format!("printf 'echo typed-$((6*7))\\nexit 6\\n' | script -qec '{strata} -it {img} sh' /dev/null"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out).replace('\r', "");
    assert!(text.contains("typed-42\n"), "{}", describe(&out));
    nothing_left(&env);
}

#[test]
fn config_env_workdir_and_flags_that_override_them() {
    let env = TestEnv::new("run-config");
    let img = image_with(
        &env,
        "cfg:1",
        serde_json::json!({
            "Env": ["PATH=/bin", "FROM_IMAGE=yes", "OVERRIDDEN=image"],
            "WorkingDir": "/srv",
            "Entrypoint": ["/bin/echo", "ep"],
            "Cmd": ["default-arg"],
        }),
    );
    assert_eq!(run_ok(&env, &[&img]), "ep default-arg\n");
    assert_eq!(run_ok(&env, &[&img, "a", "b"]), "ep a b\n");
    // --entrypoint drops the image's Cmd; a JSON array is taken as the argv.
    assert_eq!(run_ok(&env, &["--entrypoint", "/bin/pwd", &img]), "/srv\n");
    assert_eq!(
        run_ok(&env, &["--entrypoint", r#"["/bin/echo","x"]"#, &img, "y"]),
        "x y\n"
    );
    let env_file = env.path("vars");
    fs::write(&env_file, "# a comment\nFROM_FILE=file\nOVERRIDDEN=file\n").unwrap();
    give_to_user(&env_file);
    let out = run_ok(
        &env,
        &[
            "--entrypoint",
            "",
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "OVERRIDDEN=flag",
            "-e",
            "LANG",
            "-w",
            "/made/by/workdir",
            &img,
            "sh",
            "-c",
            "pwd; env",
        ],
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("/made/by/workdir"));
    let vars: Vec<&str> = lines.collect();
    for want in [
        "FROM_IMAGE=yes",
        "FROM_FILE=file",
        "OVERRIDDEN=flag",
        "LANG=C",
        "PATH=/bin",
        "HOME=/root",
        "container=strata",
    ] {
        assert!(vars.contains(&want), "{want} missing from {vars:?}");
    }
    // The umask is 0022 (as runc's), not the caller's nor the daemon's.
    assert_eq!(
        run_ok(
            &env,
            &[
                "--entrypoint",
                "",
                &img,
                "sh",
                "-c",
                "umask; touch /tmp/f; stat -c %a /tmp/f"
            ]
        ),
        "0022\n644\n"
    );
    // No PATH in the image: a sane default.
    let bare = image_with(
        &env,
        "bare:1",
        serde_json::json!({ "Cmd": ["sh", "-c", "echo $PATH"] }),
    );
    assert_eq!(
        run_ok(&env, &[&bare]),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
}

#[test]
fn users_by_number_and_name_keep_id_and_single() {
    let env = TestEnv::new("run-users");
    let img = busybox(&env);
    assert_eq!(
        run_ok(&env, &["-u", "alice", &img, "sh", "-c", "id; echo $HOME"]),
        // The kernel keeps supplementary groups sorted.
        "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)\n/home/alice\n"
    );
    assert_eq!(
        run_ok(
            &env,
            &[
                "-u",
                "1234:50",
                &img,
                "sh",
                "-c",
                "id -u; id -g; echo $HOME"
            ]
        ),
        "1234\n50\n/\n"
    );
    let me = user();
    let keep = run_ok(
        &env,
        &[
            "--userns=keep-id",
            &img,
            "sh",
            "-c",
            "id -u; id -g; whoami; echo $HOME",
        ],
    );
    assert_eq!(
        keep,
        format!(
            "{}\n{}\n{}\n{}\n",
            me.uid,
            me.gid,
            me.name,
            me.home.display()
        )
    );
    let single = run(
        &env,
        &["--userns=single", &img, "cat", "/proc/self/uid_map"],
    );
    assert_ok(&single);
    let lines: Vec<String> = stdout(&single)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines, vec![format!("0 {} 1", me.uid)]);
    // With one id, another uid cannot exist inside: said clearly.
    let out = run(&env, &["--userns=single", "-u", "alice", &img, "true"]);
    assert_fails(&out, 125, "cannot become");
    if subid_range("/etc/subuid").is_some() {
        // The default maps the subordinate range: uid 1000 exists inside and owns
        // what it creates.
        let out = run_ok(
            &env,
            &[
                "-u",
                "1000",
                &img,
                "sh",
                "-c",
                "touch /tmp/f; ls -ln /tmp/f",
            ],
        );
        assert!(out.contains(" 1000 "), "{out}");
    }
}

#[test]
fn hostname_binds_read_only_and_network_none() {
    let env = TestEnv::new("run-binds");
    let img = busybox(&env);
    let out = run_ok(
        &env,
        &[
            "--hostname",
            "box",
            &img,
            "sh",
            "-c",
            "hostname; cat /etc/hostname; grep -c box /etc/hosts",
        ],
    );
    assert_eq!(out, "box\nbox\n1\n");
    let rw = env.mkdir("rw");
    let ro = env.mkdir("ro");
    fs::write(ro.join("given"), "host data\n").unwrap();
    give_to_user(&ro.join("given"));
    let out = run(
        &env,
        &[
            "-v",
            &format!("{}:/mnt/rw", rw.display()),
            "-v",
            &format!("{}:/mnt/ro:ro", ro.display()),
            &img,
            "sh",
            "-c",
            "echo written > /mnt/rw/new && cat /mnt/ro/given && ! touch /mnt/ro/denied",
        ],
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "host data\n");
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        describe(&out)
    );
    assert_eq!(fs::read_to_string(rw.join("new")).unwrap(), "written\n");
    assert!(!ro.join("denied").exists());
    // --read-only: no writable layer, but /tmp is a tmpfs.
    let out = run(
        &env,
        &[
            "--read-only",
            &img,
            "sh",
            "-c",
            "echo t > /tmp/t && cat /tmp/t && ! touch /srv/x",
        ],
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "t\n");
    // --network none: only loopback, and it is up.
    let out = run_ok(
        &env,
        &[
            "--network",
            "none",
            &img,
            "sh",
            "-c",
            "ls /sys/class/net; cat /sys/class/net/lo/operstate",
        ],
    );
    let names: Vec<&str> = out.lines().collect();
    assert_eq!(names[0], "lo", "{out}");
    assert_eq!(names.len(), 2, "more than lo: {out}");
    assert_ne!(names[1], "down", "lo is down");
}

#[test]
fn the_container_is_isolated() {
    let env = TestEnv::new("run-isolation");
    let img = busybox(&env);
    // A marker on the host, readable by the test user, outside every bind.
    let marker = env.path("host-marker");
    fs::write(&marker, "secret").unwrap();
    give_to_user(&marker);
    let script = format!(
        "echo pid=$$; ps -o pid | tail -n +2 | wc -l; test -e {m} && echo marker-visible; \
         echo x > /written-in-container; grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status",
        m = marker.display()
    );
    let out = run_ok(&env, &[&img, "sh", "-c", &script]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1", "{out}");
    // sh, ps, tail and wc: only the container's own processes.
    assert!(lines[1].trim().parse::<u32>().unwrap() <= 4, "{out}");
    assert!(!out.contains("marker-visible"), "{out}");
    assert_eq!(status_field(&out, "CapBnd"), "00000000800405fb");
    assert_eq!(status_field(&out, "CapEff"), "00000000800405fb");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert!(!Path::new("/written-in-container").exists());
    // Not root inside: no effective capability at all.
    let out = run_ok(
        &env,
        &["-u", "alice", &img, "grep", "CapEff", "/proc/self/status"],
    );
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
    // --cap-drop / --cap-add
    let out = run_ok(
        &env,
        &[
            "--cap-drop",
            "ALL",
            "--cap-add",
            "CHOWN",
            &img,
            "grep",
            "CapBnd",
            "/proc/self/status",
        ],
    );
    assert_eq!(status_field(&out, "CapBnd"), "0000000000000001");
}

#[test]
fn it_runs_with_no_privilege_at_all() {
    // An empty bounding set: not even the system's setuid helpers can help, so one
    // id is mapped, and the container still runs.
    let env = TestEnv::new("run-noprivs");
    let img = busybox(&env);
    let out = user_command(strata_bin())
        .arg("--root")
        .arg(&env.root)
        .args(["run", "--userns=single", &img, "sh", "-c", "echo ok; id -u"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(stdout(&out), "ok\n0\n");
    nothing_left(&env);
}

fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    run_cmd(env, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Processes on the host whose command line holds `marker`, zombies aside.
fn live_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let state = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit(") ")
            .next()
            .is_some_and(|s| s.starts_with('Z'));
        if cmdline.contains(marker) && !zombie {
            found.push(format!("{}: {cmdline}", pid.to_string_lossy()));
        }
    }
    found
}

fn wait_until_running(child: &mut Child, env: &TestEnv) {
    assert!(
        wait_for(20.0, || fs::read_dir(env.root.join("containers"))
            .map(|d| d.count() > 0)
            .unwrap_or(false)),
        "the container did not start"
    );
    let _ = child.try_wait();
    std::thread::sleep(Duration::from_millis(500));
}

/// SIGTERM to strata, as a batch system's scancel or a user's kill sends it.
fn terminate(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn signals_reach_the_container_and_the_timeout_kills() {
    let env = TestEnv::new("run-signals");
    let img = busybox(&env);
    // A shell that traps SIGTERM ends with its own code.
    let mut child = spawn(
        &env,
        &[
            &img,
            "sh",
            "-c",
            "trap 'echo trapped; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    wait_until_running(&mut child, &env);
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42), "{}", describe(&out));
    assert_eq!(stdout(&out), "ready\ntrapped\n");
    nothing_left(&env);
    // pid 1 without a handler ignores SIGTERM: SIGKILL after --stop-timeout.
    let mut child = spawn(&env, &["--stop-timeout", "1", &img, "sleep", "31313"]);
    wait_until_running(&mut child, &env);
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    nothing_left(&env);
}

#[test]
fn sigkill_of_strata_leaves_no_mount_and_no_process() {
    let env = TestEnv::new("run-sigkill");
    let img = busybox(&env);
    let mut child = spawn(&env, &[&img, "sleep", "32323"]);
    wait_until_running(&mut child, &env);
    assert!(
        !live_processes_with("sleep 32323").is_empty(),
        "the container is not running"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(10.0, || live_processes_with("sleep 32323").is_empty()),
        "processes left: {:?}",
        live_processes_with("sleep 32323")
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(env.root.to_str().unwrap()), "{mounts}");
    // Its directory stays until the next run sweeps it (from inside a user
    // namespace, where files of other ids can be removed).
    assert_eq!(run_ok(&env, &[&img, "echo", "next"]), "next\n");
}

#[test]
fn the_image_is_held_while_a_container_runs() {
    let env = TestEnv::new("run-hold");
    let img = busybox(&env);
    let mut child = spawn(&env, &[&img, "sleep", "30"]);
    wait_until_running(&mut child, &env);
    let out = env.strata(&["rmi", &img]);
    assert!(
        !out.status.success(),
        "rmi took a running image\n{}",
        describe(&out)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn run_returns_with_its_directory_gone_and_its_image_let_go() {
    let env = TestEnv::new("run-gone");
    let img = busybox(&env);
    // strata removes the container's directory from outside its namespaces while
    // its child ends; a directory of another id of the subordinate range, which
    // the caller alone cannot empty, is removed from a user namespace that maps it.
    let mut scripts = vec!["mkdir -p /d/e && touch /d/e/f && echo done"];
    if subid_range("/etc/subuid").is_some() {
        scripts.push("mkdir -p /d/e && touch /d/e/f && chown -R 1000:1000 /d && chmod 755 /d /d/e && echo done");
    }
    for script in scripts {
        for userns in ["--userns=auto", "--userns=single"] {
            if userns == "--userns=single" && script.contains("chown") {
                continue;
            }
            let out = run(&env, &[userns, &img, "sh", "-c", script]);
            assert_ok(&out);
            assert_eq!(stdout(&out), "done\n");
            assert_eq!(stderr(&out), "", "{}", describe(&out));
        }
    }
    // With a terminal the child removes it, as before.
    let out = run(&env, &["-t", &img, "sh", "-c", "mkdir -p /d && echo done"]);
    assert_ok(&out);
    // Nothing holds the image once run has returned: rmi takes it at once.
    let out = env.strata(&["rmi", &img]);
    assert_ok(&out);
}

#[test]
fn ten_containers_at_once_each_see_only_their_own_writes() {
    let env = TestEnv::new("run-ten");
    let img = busybox(&env);
    let children: Vec<(usize, Child)> = (0..10)
        .map(|i| {
            let script = format!(
                "echo {i} > /srv/mine-{i}; mkdir -p /work/{i}; echo {i} > /work/{i}/data; sleep 1; ls /srv; cat /work/*/data"
            );
            (i, spawn(&env, &[&img, "sh", "-c", &script]))
        })
        .collect();
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        assert_ok(&out);
        assert_eq!(
            stdout(&out),
            format!("from-image\nmine-{i}\n{i}\n"),
            "container {i} saw another's writes"
        );
    }
    nothing_left(&env);
}

#[test]
fn files_written_in_the_container_land_in_no_image() {
    let env = TestEnv::new("run-upper");
    let img = busybox(&env);
    assert_ok(&run(
        &env,
        &[
            &img,
            "sh",
            "-c",
            "echo changed > /srv/from-image; rm /etc/group",
        ],
    ));
    assert_eq!(
        run_ok(
            &env,
            &[
                &img,
                "sh",
                "-c",
                "cat /srv/from-image; test -e /etc/group && echo group"
            ]
        ),
        "image data\ngroup\n"
    );
}
