//! The harness really runs strata unprivileged when the tests run as root: the test
//! uid and gid, no capabilities at all, and a store that the test user owns.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use support::*;

#[test]
fn wrapper_drops_to_the_test_user_with_no_capabilities() {
    if !is_root() {
        eprintln!("skipped: the tests do not run as root, so there is nothing to drop");
        return;
    }
    let u = user();
    assert_ne!(u.uid, 0, "the test user is root");
    let out = user_command("cat")
        .arg("/proc/self/status")
        .output()
        .unwrap();
    assert_ok(&out);
    let status = stdout(&out);
    let ids = |key: &str| -> Vec<u32> {
        status_field(&status, key)
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert_eq!(ids("Uid"), vec![u.uid; 4], "real, effective, saved, fs uid");
    assert_eq!(ids("Gid"), vec![u.gid; 4], "real, effective, saved, fs gid");
    assert_eq!(
        status_field(&status, "Groups"),
        "",
        "supplementary groups kept"
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = u64::from_str_radix(&status_field(&status, cap), 16).unwrap();
        assert_eq!(v, 0, "{cap} is {v:x}");
    }
    // The environment is the clean one the harness sets.
    let out = user_command("env").output().unwrap();
    let env = stdout(&out);
    assert!(env.contains(&format!("HOME={}", u.home.display())), "{env}");
    assert!(env.contains("LANG=C"), "{env}");
    assert!(!env.contains("CARGO"), "cargo's environment leaked: {env}");
    let home = fs::metadata(&u.home).unwrap();
    assert_eq!(home.uid(), u.uid, "the test user's HOME is not its own");
}

#[test]
fn the_strata_binary_runs_as_the_test_user_and_owns_the_store() {
    let env = TestEnv::new("rootless-store");
    let image = Image::new(vec![LayerBlob::gz(vec![
        Entry::dir("etc/"),
        Entry::file("etc/owned-by-root", "x")
            .owner(0, 0)
            .mode(0o4755),
    ])])
    .with_ref("who:1")
    .write(&env.path("img"));
    env.import(&image.source(), None);
    if !is_root() {
        eprintln!("skipped the ownership part: the tests do not run as root");
        return;
    }
    let uid = user().uid;
    let mut checked = 0;
    fn visit(p: &Path, uid: u32, checked: &mut usize) {
        let m = fs::symlink_metadata(p).unwrap();
        assert_eq!(
            m.uid(),
            uid,
            "{} is owned by {}, not the test user",
            p.display(),
            m.uid()
        );
        *checked += 1;
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                visit(&e.unwrap().path(), uid, checked);
            }
        }
    }
    visit(&env.root, uid, &mut checked);
    assert!(checked > 5, "the store holds only {checked} paths");
    // What the tar said is root's and setuid is the user's and plain on disk.
    let hex = image.diff_ids[0].trim_start_matches("sha256:");
    let f = fs::metadata(env.layer_dir(hex).join("tree/etc/owned-by-root")).unwrap();
    assert_eq!(f.uid(), uid);
    assert_eq!(f.mode() & 0o7000, 0);
}

#[test]
fn the_test_user_cannot_write_where_root_owns() {
    if !is_root() {
        eprintln!("skipped: the tests do not run as root");
        return;
    }
    let env = TestEnv::new("rootless-sanity");
    let locked = env.path("root-owned");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(fs::metadata(&locked).unwrap().uid(), 0);
    let out = user_sh(&format!("touch '{}/x'", locked.display()));
    assert!(
        !out.status.success(),
        "the test user wrote into a root-owned 0755 dir"
    );
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    // Nor can strata put its store there.
    let out = user_command(strata_bin())
        .arg("--root")
        .arg(locked.join("store"))
        .args(["images"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "");
    assert!(!locked.join("store").exists());
}
