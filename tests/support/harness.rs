//! Running strata rootless.
//!
//! When the tests run as root, strata must not: every strata command (and every tool
//! that acts for the user, such as umoci) runs as the unprivileged `strata-test` user
//! through `setpriv`, with no capabilities, no supplementary groups and a clean
//! environment. The binary is copied to a world-readable directory under /tmp first,
//! since cargo's target directory may sit below a 0700 home. When the tests run as an
//! ordinary user, everything runs directly as that user.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const TEST_USER: &str = "strata-test";
const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who strata runs as.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The identity every strata command of the tests runs under.
pub fn user() -> &'static User {
    static USER: OnceLock<User> = OnceLock::new();
    USER.get_or_init(|| {
        if is_root() {
            ensure_test_user()
        } else {
            User {
                name: std::env::var("USER").unwrap_or_else(|_| "me".into()),
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                home: std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/tmp")),
            }
        }
    })
}

fn lookup_user(name: &str) -> Option<User> {
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(User {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    })
}

/// Creates the test user when it is missing. Two test binaries may race to create it:
/// a failed useradd is fine as long as the user exists afterwards.
fn ensure_test_user() -> User {
    let user = match lookup_user(TEST_USER) {
        Some(u) => u,
        None => {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_USER,
                ])
                .output()
                .expect("run useradd");
            lookup_user(TEST_USER).unwrap_or_else(|| {
                panic!(
                    "cannot create the test user {TEST_USER}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        }
    };
    // The user may exist without its home (created by hand): make one it owns.
    if fs::metadata(&user.home)
        .map(|m| m.uid() != user.uid)
        .unwrap_or(true)
    {
        let _ = fs::create_dir_all(&user.home);
        chown(&user.home, user.uid, user.gid);
        let _ = fs::set_permissions(&user.home, fs::Permissions::from_mode(0o755));
    }
    user
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Gives `path` and everything below it to the test user (no-op when not root).
pub fn give_to_user(path: &Path) {
    if !is_root() {
        return;
    }
    let u = user();
    chown(path, u.uid, u.gid);
    if fs::symlink_metadata(path)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        for entry in fs::read_dir(path).unwrap() {
            give_to_user(&entry.unwrap().path());
        }
    }
}

fn mkdir_world_readable(dir: &Path) {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("mkdir {}: {e}", dir.display()),
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
}

/// The strata binary, at a path the test user can execute.
pub fn strata_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| user_copy(Path::new(env!("CARGO_BIN_EXE_strata")), "strata"))
}

/// The strata-overlayfs binary, at a path the test user can execute; None while the
/// package has no such binary.
pub fn overlayfs_bin() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        option_env!("CARGO_BIN_EXE_strata-overlayfs")
            .map(|built| user_copy(Path::new(built), "strata-overlayfs"))
    })
    .as_deref()
}

/// `built` itself, or when the tests run as root, a copy of it named `name` in a
/// world-readable directory under /tmp/NAME-test-bin, one per build.
fn user_copy(built: &Path, name: &str) -> PathBuf {
    if !is_root() {
        return built.to_path_buf();
    }
    let meta = fs::metadata(built).unwrap_or_else(|e| panic!("stat {}: {e}", built.display()));
    let key = format!("{}-{}-{}", meta.size(), meta.mtime(), meta.mtime_nsec());
    let base = PathBuf::from(format!("/tmp/{name}-test-bin"));
    mkdir_world_readable(&base);
    let dir = base.join(key);
    mkdir_world_readable(&dir);
    let dest = dir.join(name);
    if !dest.exists() {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        fs::copy(built, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("install {}: {e}", dest.display()));
        remove_stale_copies(&base, &dir);
    }
    dest
}

/// Copies of older builds, untouched for an hour, are no one's any more.
fn remove_stale_copies(base: &Path, keep: &Path) {
    let Ok(listing) = fs::read_dir(base) else {
        return;
    };
    for entry in listing.flatten() {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if path != keep && stale {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// A command that runs `program` as the test user, with a clean environment.
pub fn user_command(program: impl AsRef<OsStr>) -> Command {
    user_command_bounded(program, true)
}

/// Like `user_command`, but with the capability bounding set left as an ordinary
/// login has it, so that the system's setuid helpers (fusermount3) work. The process
/// itself still has no capability.
pub fn user_command_with_setuid_helpers(program: impl AsRef<OsStr>) -> Command {
    user_command_bounded(program, false)
}

fn user_command_bounded(program: impl AsRef<OsStr>, empty_bounding_set: bool) -> Command {
    let u = user();
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .args(["--clear-groups", "--inh-caps=-all"]);
        if empty_bounding_set {
            c.arg("--bounding-set=-all");
        }
        c.arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.env_clear()
        .env("PATH", CLEAN_PATH)
        .env("HOME", &u.home)
        .env("USER", &u.name)
        .env("LANG", "C")
        .current_dir("/tmp");
    cmd
}

/// Runs a shell script as the test user.
pub fn user_sh(script: &str) -> Output {
    user_command("sh")
        .args(["-c", script])
        .output()
        .expect("run sh as the test user")
}

/// A printable account of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "command failed\n{}", describe(out));
}

/// The command failed with `code`, and its stderr is a strata error naming `phrase`.
#[track_caller]
pub fn assert_fails(out: &Output, code: i32, phrase: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "wrong exit code (want {code})\n{}",
        describe(out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("strata: error: "),
        "stderr lacks 'strata: error: '\n{}",
        describe(out)
    );
    assert!(
        err.contains(phrase),
        "stderr lacks '{phrase}'\n{}",
        describe(out)
    );
}

/// The value of `KEY:` in /proc/PID/status text (Uid, CapBnd, NoNewPrivs, ...).
pub fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
        .trim()
        .to_string()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One test's private directory (owned by the test user) and the store in it.
pub struct TestEnv {
    pub dir: PathBuf,
    /// The store: `dir/store` (strata creates it).
    pub root: PathBuf,
}

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let u = user();
        let base = PathBuf::from(format!("/tmp/strata-tests-{}", nix::unistd::getuid()));
        mkdir_world_readable(&base);
        let dir = base.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create the test's work dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            chown(&dir, u.uid, u.gid);
        }
        let root = dir.join("store");
        TestEnv { dir, root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// A fresh directory under the work dir, owned by the test user.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.dir.join(rel);
        fs::create_dir_all(&p).unwrap();
        give_to_user(&p);
        p
    }

    /// `strata --root STORE ARGS...` as the test user, not yet started.
    pub fn strata_cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = user_command(strata_bin());
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }

    pub fn strata<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.strata_cmd(args).output().expect("run strata")
    }

    /// Imports `source` (a path or `oci:` reference), asserting success; returns the ID.
    #[track_caller]
    pub fn import(&self, source: &str, name: Option<&str>) -> String {
        let mut args = vec!["import", source];
        args.extend(name);
        let out = self.strata(&args);
        assert_ok(&out);
        let text = stdout(&out);
        let id = text.lines().last().unwrap_or("").trim().to_string();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "import printed no image ID as its last line\n{}",
            describe(&out)
        );
        id
    }

    /// `strata images --json`, parsed.
    #[track_caller]
    pub fn images_json(&self) -> Vec<serde_json::Value> {
        let out = self.strata(&["images", "--json"]);
        assert_ok(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("images --json is not JSON: {e}\n{}", describe(&out)));
        v.as_array()
            .unwrap_or_else(|| panic!("images --json is not an array\n{}", describe(&out)))
            .clone()
    }

    pub fn layer_dir(&self, diff_id_hex: &str) -> PathBuf {
        self.root.join("layers").join(diff_id_hex)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("STRATA_TEST_KEEP").is_some() {
            eprintln!("test work dir kept: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits up to `secs` seconds for `cond`, polling.
pub fn wait_for(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
