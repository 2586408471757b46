//! `strata pull` and `strata import docker://` against a real registry on loopback:
//! Debian's docker-registry (the distribution registry), started by each test on a
//! free 127.0.0.1 port with its own storage, over plain HTTP, over TLS with a
//! self-signed certificate the test makes, and behind htpasswd basic auth. Images
//! are put there by skopeo. strata runs as the unprivileged test user.

mod support;

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::*;

const USER: &str = "puller";
const PASSWORD: &str = "right-horse-battery";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Tls,
    /// TLS and htpasswd basic auth.
    Auth,
}

/// One registry process, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    log: PathBuf,
}

impl Registry {
    fn start(env: &TestEnv, kind: Kind) -> Registry {
        let dir = env.mkdir("registry");
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if kind != Kind::Plain {
            make_certificate(&dir);
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            );
        }
        if kind == Kind::Auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert_ok(&out);
            fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config).unwrap();
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::from(fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                fs::File::create(dir.join("registry.err")).unwrap(),
            ))
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        let registry = Registry {
            child,
            port,
            storage,
            log,
        };
        assert!(
            wait_for(20.0, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "the registry did not listen on 127.0.0.1:{port}"
        );
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Copies an OCI layout's `latest` into the registry as `repo:tag`.
    #[track_caller]
    fn push(&self, layout: &str, repo: &str, tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if self.port_needs_auth() {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        let out = cmd
            .arg(format!("oci:{layout}:latest"))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .expect("run skopeo");
        assert_ok(&out);
    }

    fn port_needs_auth(&self) -> bool {
        self.storage.parent().unwrap().join("htpasswd").exists()
    }

    /// The blob's file in the registry's storage.
    fn blob_file(&self, hex: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// How many GETs of these blobs the registry has served so far.
    fn blob_gets(&self, digests: &[String]) -> usize {
        let text = fs::read_to_string(&self.log).unwrap_or_default()
            + &fs::read_to_string(self.log.with_file_name("registry.err")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("\"GET /v2/"))
            .filter(|l| digests.iter().any(|d| l.contains(&format!("/blobs/{d}"))))
            .count()
    }

    /// How many blob uploads carried data (PUTs under /blobs/uploads/).
    fn blob_puts(&self) -> usize {
        let text = fs::read_to_string(&self.log).unwrap_or_default()
            + &fs::read_to_string(self.log.with_file_name("registry.err")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/"))
            .count()
    }

    /// How many blob uploads (POSTs and PUTs under /blobs/uploads/) it has served.
    fn blob_uploads(&self) -> usize {
        let text = fs::read_to_string(&self.log).unwrap_or_default()
            + &fs::read_to_string(self.log.with_file_name("registry.err")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("\"POST /v2/") || l.contains("\"PUT /v2/"))
            .filter(|l| l.contains("/blobs/uploads/"))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

fn make_certificate(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("run openssl");
    assert_ok(&out);
}

fn sample(seed: u64) -> Image {
    Image::new(vec![
        LayerBlob::gz(vec![
            Entry::dir("etc"),
            Entry::file("etc/hello", format!("hello {seed}\n")).mode(0o644),
        ]),
        LayerBlob::gz(vec![
            Entry::dir("bin"),
            Entry::file("bin/tool", random_bytes(seed, 300_000)).mode(0o755),
        ]),
    ])
    .with_ref("latest")
}

fn names(env: &TestEnv) -> Vec<String> {
    env.images_json()
        .iter()
        .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(String::from))
        .collect()
}

/// The digest the registry gives `repo:tag`'s manifest.
fn manifest_digest(registry: &Registry, repo: &str, tag: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{}/{repo}:{tag}", registry.host()))
        .output()
        .expect("run skopeo inspect");
    assert_ok(&out);
    stdout(&out).trim().to_string()
}

#[test]
fn pull_by_tag_and_by_digest_over_plain_http_and_again_downloads_nothing() {
    let env = TestEnv::new("reg-plain");
    let registry = Registry::start(&env, Kind::Plain);
    let written = sample(1).write(&env.path("layout"));
    registry.push(&written.path(), "org/app", "v1");
    let reference = format!("{}/org/app:v1", registry.host());

    let out = env.strata(&["pull", "--tls-verify=false", &reference]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);
    assert!(
        stderr(&out).contains("layers downloaded 2"),
        "{}",
        describe(&out)
    );
    assert_eq!(names(&env), vec![reference.clone()]);
    let blobs = snapshot(&env.root.join("blobs"));
    let layers: Vec<String> = sample(1).layers.iter().map(|l| l.digest.clone()).collect();
    let gets = registry.blob_gets(&layers);
    assert_eq!(gets, 2, "the registry's log shows {gets} layer GETs");

    // Again: every layer is in the store, so no layer is downloaded (the manifest
    // and the config, a few hundred bytes, are read again to learn the layers).
    let out = env.strata(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("layers downloaded 0, already in the store 2"),
        "{}",
        describe(&out)
    );
    assert_same(&blobs, &snapshot(&env.root.join("blobs")), "second pull");
    assert_eq!(
        registry.blob_gets(&layers),
        gets,
        "the second pull fetched layers"
    );

    // By digest, into a fresh store: the same image, left unnamed.
    let digest = manifest_digest(&registry, "org/app", "v1");
    let other = TestEnv::new("reg-plain-digest");
    let out = other.strata(&[
        "pull",
        "--tls-verify=false",
        &format!("{}/org/app@{digest}", registry.host()),
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);
    // A digest that the registry lacks.
    let missing = format!("sha256:{}", "0".repeat(64));
    let out = other.strata(&[
        "pull",
        "--tls-verify=false",
        &format!("{}/org/app@{missing}", registry.host()),
    ]);
    assert_fails(&out, 1, "has no manifest");

    // A tag that the registry lacks: a plain message, nothing stored.
    let before = snapshot(&env.root);
    let out = env.strata(&[
        "pull",
        "--tls-verify=false",
        &format!("{}/org/app:nope", registry.host()),
    ]);
    assert_fails(&out, 1, "org/app has no manifest 'nope'");
    assert!(
        stderr(&out).contains("check the name and tag"),
        "{}",
        describe(&out)
    );
    assert_same(&before, &snapshot(&env.root), "missing tag");
}

#[test]
fn tls_with_a_self_signed_certificate_needs_tls_verify_false() {
    let env = TestEnv::new("reg-tls");
    let registry = Registry::start(&env, Kind::Tls);
    let written = sample(2).write(&env.path("layout"));
    registry.push(&written.path(), "org/app", "v1");
    let reference = format!("{}/org/app:v1", registry.host());

    assert_ok(&env.strata(&["images"]));
    let before = snapshot(&env.root);
    let out = env.strata(&["pull", &reference]);
    assert_fails(&out, 1, "pass --tls-verify=false");
    assert!(stderr(&out).contains("certificate"), "{}", describe(&out));
    let out = env.strata(&["import", &format!("docker://{reference}")]);
    assert_fails(&out, 1, "pass --tls-verify=false");
    assert_same(&before, &snapshot(&env.root), "refused certificate");

    let out = env.strata(&["pull", "--tls-verify=false", &reference]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);
    assert_eq!(names(&env), vec![reference]);
}

#[test]
fn a_corrupted_blob_on_the_registry_is_refused_and_the_store_is_unchanged() {
    let env = TestEnv::new("reg-corrupt");
    let registry = Registry::start(&env, Kind::Plain);
    let written = sample(3).write(&env.path("layout"));
    registry.push(&written.path(), "org/app", "v1");
    // The second layer, flipped in place: same size, other content.
    let image = sample(3);
    let file = registry.blob_file(image.layers[1].digest_hex());
    let mut bytes = fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&file, bytes).unwrap();

    let out = env.strata(&[
        "pull",
        "--tls-verify=false",
        &format!("{}/org/app:v1", registry.host()),
    ]);
    assert_fails(&out, 1, "digest mismatch");
    assert!(names(&env).is_empty());
    assert_tmp_empty(&env.root);
}

#[test]
fn basic_auth_takes_credentials_from_auth_json_and_refuses_a_wrong_password() {
    let env = TestEnv::new("reg-auth");
    let registry = Registry::start(&env, Kind::Auth);
    let written = sample(4).write(&env.path("layout"));
    registry.push(&written.path(), "org/app", "v1");
    let reference = format!("{}/org/app:v1", registry.host());
    let runtime = env.mkdir("run");
    let pull = || {
        env.strata_cmd(&["pull", "--tls-verify=false", &reference])
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .expect("run strata")
    };
    let write_auth = |password: &str| {
        let dir = runtime.join("containers");
        fs::create_dir_all(&dir).unwrap();
        let auth = base64_encode(format!("{USER}:{password}").as_bytes());
        let text = format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.host()
        );
        fs::write(dir.join("auth.json"), text).unwrap();
        give_to_user(&runtime);
    };

    assert_fails(&pull(), 1, "authentication required");
    write_auth("wrong");
    let out = pull();
    assert_fails(&out, 1, &format!("the credentials for {USER} were refused"));
    assert!(names(&env).is_empty());
    write_auth(PASSWORD);
    let out = pull();
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);
}

#[test]
fn login_checks_the_password_and_keeps_it_for_pull_until_logout() {
    let env = TestEnv::new("reg-login");
    let registry = Registry::start(&env, Kind::Auth);
    let written = sample(5).write(&env.path("layout"));
    registry.push(&written.path(), "org/app", "v1");
    let home = env.mkdir("home");
    let host = registry.host();
    let strata = |args: &[&str], input: &str| {
        let mut child = env
            .strata_cmd(args)
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run strata");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let login = [
        "login",
        "--tls-verify=false",
        "-u",
        USER,
        "--password-stdin",
        &host,
    ];
    let out = strata(&login, "wrong\n");
    assert_fails(&out, 1, &format!("the credentials for {USER} were refused"));
    assert!(!home.join(".config/containers/auth.json").exists());
    assert_ok(&strata(&login, &format!("{PASSWORD}\n")));
    let file = home.join(".config/containers/auth.json");
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let reference = format!("{host}/org/app:v1");
    let out = strata(&["pull", "--tls-verify=false", &reference], "");
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);

    assert_ok(&strata(&["logout", &host], ""));
    assert_fails(&strata(&["logout", &host], ""), 1, "not logged in");
    let out = strata(&["pull", "--tls-verify=false", &reference], "");
    assert_fails(&out, 1, "authentication required");
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Turns the single-image layout `written` into a two-platform one: the host's image
/// and an s390x (or amd64, on s390x) twin with its own config, under one index.
/// Returns the twin's config digest (hex) and its platform.
fn add_foreign_platform(written: &Written) -> (String, String) {
    let arch = if host_arch() == "s390x" {
        "amd64"
    } else {
        "s390x"
    };
    let blobs = written.dir.join("blobs/sha256");
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = sha256_hex(bytes);
        fs::write(blobs.join(&hex), bytes).unwrap();
        (hex, bytes.len())
    };
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&written.config_hex)).unwrap()).unwrap();
    config["architecture"] = arch.into();
    let (config_hex, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&written.manifest_hex)).unwrap()).unwrap();
    manifest["config"]["digest"] = format!("sha256:{config_hex}").into();
    manifest["config"]["size"] = config_size.into();
    let (twin_hex, twin_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let entry = |hex: &str, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": size,
            "platform": { "os": "linux", "architecture": arch },
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(&twin_hex, twin_size, arch),
            entry(&written.manifest_hex, written.manifest_size as usize, host_arch()),
        ],
    });
    let (index_hex, index_size) = put(&serde_json::to_vec(&index).unwrap());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{index_hex}"),
            "size": index_size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    fs::write(
        written.dir.join("index.json"),
        serde_json::to_vec(&top).unwrap(),
    )
    .unwrap();
    (config_hex, format!("linux/{arch}"))
}

#[test]
fn a_multi_platform_index_gives_the_hosts_image_or_the_one_asked_for() {
    let env = TestEnv::new("reg-multi");
    let registry = Registry::start(&env, Kind::Plain);
    let written = sample(6).write(&env.path("layout"));
    let (twin_config, twin_platform) = add_foreign_platform(&written);
    let out = Command::new("skopeo")
        .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", written.path()))
        .arg(format!("docker://{}/org/multi:v1", registry.host()))
        .output()
        .expect("run skopeo");
    assert_ok(&out);
    let reference = format!("{}/org/multi:v1", registry.host());

    let out = env.strata(&["pull", "--tls-verify=false", &reference]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);

    let other = TestEnv::new("reg-multi-platform");
    let out = other.strata(&[
        "pull",
        "--tls-verify=false",
        "--platform",
        &twin_platform,
        &reference,
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), twin_config);

    let out = other.strata(&[
        "pull",
        "--tls-verify=false",
        "--platform",
        "linux/mips64le",
        &reference,
    ]);
    assert_fails(&out, 1, "for linux/mips64le");
}

#[test]
fn push_then_skopeo_inspect_and_pull_back_and_a_second_push_uploads_nothing() {
    let env = TestEnv::new("reg-push");
    let registry = Registry::start(&env, Kind::Plain);
    let written = sample(8).write(&env.path("layout"));
    let host = registry.host();
    let own = format!("{host}/org/own:v2");
    let id = env.import(&written.source(), Some(&own));
    assert_eq!(id, written.config_hex);
    let manifest = format!("sha256:{}", written.manifest_hex);

    let out = env.strata(&[
        "push",
        "--tls-verify=false",
        &own,
        &format!("docker://{host}/org/app:v1"),
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), manifest);
    assert!(
        stderr(&out).contains("blobs uploaded 3, mounted 0, already there 0"),
        "{}",
        describe(&out)
    );
    // Two layers and the config, each one POST and one PUT.
    let uploads = registry.blob_uploads();
    assert_eq!(
        uploads, 6,
        "the registry's log shows {uploads} upload requests"
    );
    assert_eq!(manifest_digest(&registry, "org/app", "v1"), manifest);

    // What strata pushed, pulled into a fresh store: the same image.
    let other = TestEnv::new("reg-push-pull");
    let out = other.strata(&["pull", "--tls-verify=false", &format!("{host}/org/app:v1")]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);

    // Again: HEAD finds every blob, none is sent.
    let out = env.strata(&[
        "push",
        "--tls-verify=false",
        "-q",
        &own,
        &format!("{host}/org/app:v1"),
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), manifest);
    assert!(stderr(&out).is_empty(), "{}", describe(&out));
    assert_eq!(
        registry.blob_uploads(),
        uploads,
        "a second push uploaded blobs"
    );

    // No REF: the image's own name, another repository. Named after org/app too,
    // the image's blobs are mounted from there, not sent again.
    assert_ok(&env.strata(&["tag", &own, &format!("{host}/org/app:v1")]));
    let puts = registry.blob_puts();
    let out = env.strata(&["push", "--tls-verify=false", &own]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), manifest);
    assert!(
        stderr(&out).contains(&format!(
            "pushed {own}: blobs uploaded 0, mounted 3, already there 0"
        )),
        "{}",
        describe(&out)
    );
    assert_eq!(registry.blob_puts(), puts, "a mounted blob was uploaded");
    assert_eq!(manifest_digest(&registry, "org/own", "v2"), manifest);
}

#[test]
fn push_without_credentials_is_refused_and_an_unknown_image_exits_1() {
    let env = TestEnv::new("reg-push-auth");
    let registry = Registry::start(&env, Kind::Auth);
    let written = sample(9).write(&env.path("layout"));
    env.import(&written.source(), Some("app:v1"));
    let reference = format!("{}/org/app:v1", registry.host());
    let runtime = env.mkdir("run");
    let push = |image: &str| {
        env.strata_cmd(&["push", "--tls-verify=false", image, &reference])
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .expect("run strata")
    };

    assert_fails(
        &push("app:v1"),
        1,
        "authentication required to push to org/app",
    );
    assert_eq!(registry.blob_uploads(), 0);
    assert_fails(&push("nosuch:v1"), 1, "not found");
    let out = env.strata(&["push", "app:v1"]);
    assert_fails(&out, 1, "names no registry");

    // A store that lacks a layer's blob (as older ones did) says so.
    let blob = env
        .root
        .join("blobs/sha256")
        .join(sample(9).layers[0].digest_hex());
    let kept = fs::read(&blob).unwrap();
    fs::remove_file(&blob).unwrap();
    assert_fails(&push("app:v1"), 1, "is not in the store");
    fs::write(&blob, kept).unwrap();
    give_to_user(&blob);

    let dir = runtime.join("containers");
    fs::create_dir_all(&dir).unwrap();
    let auth = base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
    let text = format!(
        r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
        registry.host()
    );
    fs::write(dir.join("auth.json"), text).unwrap();
    give_to_user(&runtime);
    let out = push("app:v1");
    assert_ok(&out);
    assert_eq!(
        stdout(&out).trim(),
        format!("sha256:{}", written.manifest_hex)
    );
}

/// Relays 127.0.0.1:PORT to the registry, and cuts the first response stream that
/// has carried more than `cut_after` bytes: a dropped connection mid-download.
/// Returns the port and a flag that says the cut happened.
fn flaky_proxy(target: u16, cut_after: u64) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_flag = cut.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut s_write);
                let _ = s_write.shutdown(Shutdown::Write);
            });
            let cut = cut_flag.clone();
            std::thread::spawn(move || relay_and_maybe_cut(server, client, cut_after, &cut));
        }
    });
    (port, cut)
}

fn relay_and_maybe_cut(mut from: TcpStream, mut to: TcpStream, cut_after: u64, cut: &AtomicBool) {
    let mut buf = [0u8; 16 << 10];
    let mut relayed = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        relayed += n as u64;
        if relayed > cut_after && !cut.swap(true, Ordering::SeqCst) {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn a_download_whose_connection_drops_resumes_where_it_broke_off() {
    let env = TestEnv::new("reg-resume");
    let registry = Registry::start(&env, Kind::Plain);
    let written = sample(11).write(&env.path("layout"));
    registry.push(&written.path(), "org/app", "v1");
    // The big layer (~300 kB of random data) is cut a third of the way through.
    let (port, cut) = flaky_proxy(registry.port, 100_000);
    let reference = format!("127.0.0.1:{port}/org/app:v1");
    let out = env.strata(&["pull", "--tls-verify=false", &reference]);
    assert!(cut.load(Ordering::SeqCst), "the proxy never cut a download");
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), written.config_hex);
    assert_tmp_empty(&env.root);
}
