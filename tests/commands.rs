//! The image commands, run as the unprivileged test user: `save` read back by the
//! peers (skopeo inspect and copy, umoci unpack) and by strata itself, `tag`, `rmi`
//! (untagging, refusing an image in use, --force) and `gc` (what goes, what stays,
//! what it frees).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use support::fsdiff::{Tree, TreeChecks, diff_trees, parse_walk};
use support::mountns::install_tools;
use support::*;

// ---------------------------------------------------------------------------------
// Helpers

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        )
    })
}

fn read_json(path: &Path) -> serde_json::Value {
    json(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The manifest digest that index.json names `reference`.
fn manifest_for(index: &serde_json::Value, reference: &str) -> String {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference)
        .unwrap_or_else(|| panic!("no ref {reference} in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn refs_of(index: &serde_json::Value) -> BTreeSet<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
        .collect()
}

/// Every regular file of a tar, by path.
fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let name = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
    }
    out
}

/// The files of a directory (one level), by name.
fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn skopeo(args: &[&str]) -> String {
    let out = user_command("skopeo").args(args).output().unwrap();
    assert_ok(&out);
    stdout(&out)
}

/// Unpacks `layout:reference` with `umoci unpack --rootless` and walks the rootfs.
fn umoci_tree(env: &TestEnv, layout: &Path, reference: &str, name: &str) -> Tree {
    let dest = env.path(name);
    let out = user_sh(&format!(
        "umoci unpack --rootless --image '{}:{reference}' '{}' >/dev/null && python3 '{}/walk.py' '{}/rootfs'; rc=$?; chmod -R u+rwX '{}'; exit $rc",
        layout.display(),
        dest.display(),
        install_tools(env).display(),
        dest.display(),
        dest.display()
    ));
    assert_ok(&out);
    parse_walk(&stdout(&out))
}

/// Disk usage of a tree as du counts it: blocks, each inode once.
fn du(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let m = fs::symlink_metadata(p).unwrap();
        let mut n = if seen.insert((m.dev(), m.ino())) {
            m.blocks() * 512
        } else {
            0
        };
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                n += walk(&e.unwrap().path(), seen);
            }
        }
        n
    }
    walk(path, &mut HashSet::new())
}

/// Holds a layer in use as a mount does: a shared flock on its use file.
fn hold_layer(env: &TestEnv, diff_id_hex: &str) -> Flock<fs::File> {
    let path = env.root.join(format!("locks/layer-{diff_id_hex}.use"));
    let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Flock::lock(file, FlockArg::LockSharedNonblock)
        .map_err(|(_, e)| e)
        .expect("take the layer's use lock")
}

/// Holds an image in use as a mount of it does: a shared flock on its use file.
fn hold_image(env: &TestEnv, config_hex: &str) -> Flock<fs::File> {
    let path = env.root.join(format!("locks/image-{config_hex}.use"));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    give_to_user(&path);
    Flock::lock(file, FlockArg::LockSharedNonblock)
        .map_err(|(_, e)| e)
        .expect("take the image's use lock")
}

fn image_by_id<'a>(images: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    images.iter().find(|i| i["id"] == id)
}

fn names_of(env: &TestEnv, id: &str) -> Vec<String> {
    let images = env.images_json();
    let image = image_by_id(&images, id).unwrap_or_else(|| panic!("no image {id}"));
    serde_json::from_value(image["names"].clone()).unwrap()
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

// ---------------------------------------------------------------------------------
// save, with the peers

const BUILD: &str = r#"
set -eu
cd "$1"
umoci init --layout lay
umoci new --image lay:base
umoci unpack --rootless --image lay:base b1
R=b1/rootfs
mkdir -p $R/etc $R/usr/bin $R/srv/deep/er
printf 'hello\n' > $R/etc/hello
chmod 640 $R/etc/hello
head -c 300000 /dev/urandom > $R/usr/bin/tool
chmod 4755 $R/usr/bin/tool
ln -s ../etc/hello $R/usr/bin/hello-link
ln $R/usr/bin/tool $R/srv/tool-link
mkfifo $R/srv/fifo
printf 'deep\n' > $R/srv/deep/er/file
umoci repack --image lay:v1 b1
umoci unpack --rootless --image lay:v1 b2
R=b2/rootfs
rm $R/etc/hello $R/usr/bin/hello-link
rm -r $R/srv/deep
printf 'new in layer 2\n' > $R/etc/new
mkdir -m 1777 $R/tmp
umoci repack --image lay:v2 b2
chmod -R u+rwX b1 b2
"#;

#[test]
fn saved_images_read_back_in_skopeo_umoci_and_strata() {
    let env = TestEnv::new("save");
    let work = env.mkdir("work");
    let out = user_command("sh")
        .args(["-c", BUILD, "sh"])
        .arg(&work)
        .output()
        .unwrap();
    assert_ok(&out);
    let lay = work.join("lay");
    let lay_blobs = files_in(&lay.join("blobs/sha256"));
    let manifest = manifest_for(&read_json(&lay.join("index.json")), "v2");
    let manifest_json = json(&lay_blobs[hex(&manifest)]);
    let config = manifest_json["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let diff_ids: Vec<String> =
        serde_json::from_value(json(&lay_blobs[hex(&config)])["rootfs"]["diff_ids"].clone())
            .unwrap();
    assert_eq!(diff_ids.len(), 2, "umoci made {} layers", diff_ids.len());

    let id = env.import(&format!("oci:{}:v2", lay.display()), Some("app:v2"));
    assert_eq!(id, hex(&config));

    // inspect: the record, and the documents exactly as imported.
    let out = env.strata(&["inspect", "app:v2"]);
    assert_ok(&out);
    let all = json(&out.stdout);
    assert_eq!(all["id"], id.as_str());
    assert_eq!(all["digest"], manifest.as_str());
    assert_eq!(all["names"], serde_json::json!(["app:v2"]));
    assert_eq!(all["manifest"], manifest_json);
    assert_eq!(
        all["config"]["rootfs"]["diff_ids"],
        serde_json::json!(diff_ids)
    );
    for (format, digest) in [("manifest", &manifest), ("config", &config)] {
        let out = env.strata(&["inspect", "--format", format, &id[..12]]);
        assert_ok(&out);
        assert_eq!(
            out.stdout,
            lay_blobs[hex(digest)],
            "inspect --format {format}"
        );
    }

    let oci_dir = work.join("out");
    let oci_tar = work.join("img.tar");
    let docker_tar = work.join("docker.tar");
    for dest in [
        format!("oci:{}", oci_dir.display()),
        format!("oci-archive:{}", oci_tar.display()),
        format!("docker-archive:{}", docker_tar.display()),
    ] {
        assert_ok(&env.strata(&["save", "app:v2", &dest]));
    }

    // The OCI forms: every blob byte for byte the original's, the ref the image's tag.
    let saved_blobs = files_in(&oci_dir.join("blobs/sha256"));
    assert_eq!(saved_blobs.len(), 4, "manifest, config and two layers");
    for (name, bytes) in &saved_blobs {
        assert!(lay_blobs.get(name) == Some(bytes), "blob {name} differs");
    }
    let saved_index = read_json(&oci_dir.join("index.json"));
    assert_eq!(manifest_for(&saved_index, "v2"), manifest);
    let archived = tar_files(&oci_tar);
    assert_eq!(
        archived.keys().filter(|k| k.starts_with("blobs/")).count(),
        4
    );
    for (name, bytes) in &saved_blobs {
        assert!(archived.get(&format!("blobs/sha256/{name}")) == Some(bytes));
    }
    assert_eq!(manifest_for(&json(&archived["index.json"]), "v2"), manifest);
    assert!(archived.contains_key("oci-layout"));

    // docker-archive: manifest.json, the config as it was, uncompressed layers.
    let docker = tar_files(&docker_tar);
    let dm = json(&docker["manifest.json"]);
    assert_eq!(dm[0]["Config"], format!("{id}.json"));
    assert_eq!(dm[0]["RepoTags"], serde_json::json!(["app:v2"]));
    assert_eq!(docker[&format!("{id}.json")], lay_blobs[&id]);
    let layer_digests: Vec<String> = dm[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(&docker[l.as_str().unwrap()])))
        .collect();
    assert_eq!(
        layer_digests, diff_ids,
        "docker-archive layers are the diff_ids"
    );

    // skopeo reads all three, and copies each to a layout of its own.
    for (n, source) in [
        format!("oci:{}:v2", oci_dir.display()),
        format!("oci-archive:{}:v2", oci_tar.display()),
        format!("docker-archive:{}", docker_tar.display()),
    ]
    .iter()
    .enumerate()
    {
        let info = json(skopeo(&["inspect", source]).as_bytes());
        assert_eq!(info["Layers"].as_array().unwrap().len(), 2, "{source}");
        if source.starts_with("oci") {
            assert_eq!(info["Digest"], manifest.as_str(), "{source}");
        } else {
            assert_eq!(info["Layers"], serde_json::json!(diff_ids), "{source}");
        }
        let raw_config = json(skopeo(&["inspect", "--config", "--raw", source]).as_bytes());
        assert_eq!(
            raw_config["rootfs"]["diff_ids"],
            serde_json::json!(diff_ids)
        );
        let copy = work.join(format!("copy{n}"));
        skopeo(&[
            "copy",
            "-q",
            source,
            &format!("oci:{}:copied", copy.display()),
        ]);
        let copied = manifest_for(&read_json(&copy.join("index.json")), "copied");
        let copied_manifest = read_json(&copy.join("blobs/sha256").join(hex(&copied)));
        let copied_config = copied_manifest["config"]["digest"].as_str().unwrap();
        if source.starts_with("oci") {
            assert_eq!(copied_config, config, "skopeo's copy of {source}");
        } else {
            // Converting docker's form to OCI, skopeo writes the config anew (it does
            // so from its own docker-archives too): the same JSON, other bytes.
            let copied = read_json(&copy.join("blobs/sha256").join(hex(copied_config)));
            assert_eq!(copied, json(&lay_blobs[&id]), "skopeo's copy of {source}");
        }
    }

    // umoci unpacks strata's layout to the tree it unpacks from its own.
    let want = umoci_tree(&env, &lay, "v2", "ref");
    let got = umoci_tree(&env, &oci_dir, "v2", "unpacked");
    assert!(want.len() >= 9, "umoci's unpack is nearly empty: {want:?}");
    let checks = TreeChecks {
        modes: true,
        xattrs: false,
        link_groups: true,
    };
    let diffs = diff_trees(&want, &got, checks, |_| false);
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));

    // Each saved form imports into a fresh store as the same image.
    for source in [
        format!("oci:{}:v2", oci_dir.display()),
        format!("oci-archive:{}:v2", oci_tar.display()),
        format!("docker-archive:{}", docker_tar.display()),
    ] {
        let fresh = TestEnv::new("save-reimport");
        assert_eq!(fresh.import(&source, None), id, "{source}");
        assert_tmp_empty(&fresh.root);
    }

    // Into an existing layout: the image joins it under a new ref; umoci sees it.
    assert_ok(&env.strata(&["save", &id, &format!("oci:{}:again", oci_dir.display())]));
    assert_eq!(
        refs_of(&read_json(&oci_dir.join("index.json"))),
        BTreeSet::from(["v2".to_string(), "again".to_string()])
    );
    assert_eq!(files_in(&oci_dir.join("blobs/sha256")), saved_blobs);
    assert_ok(&env.strata(&["save", "app:v2", &format!("oci:{}:copy", lay.display())]));
    let out = user_command("umoci")
        .args(["ls", "--layout"])
        .arg(&lay)
        .output()
        .unwrap();
    assert_ok(&out);
    let text = stdout(&out);
    let listed: BTreeSet<&str> = text.lines().collect();
    assert!(
        ["base", "v1", "v2", "copy"]
            .iter()
            .all(|r| listed.contains(r)),
        "umoci ls: {listed:?}"
    );

    // Refusals: an unknown image, a directory that is not a layout, a bad form.
    let not_layout = env.mkdir("work/not-a-layout");
    fs::write(not_layout.join("file"), b"x").unwrap();
    give_to_user(&not_layout);
    for (image, dest, phrase) in [
        (
            "nope",
            format!("oci:{}", work.join("x").display()),
            "not found",
        ),
        (
            "app:v2",
            format!("oci:{}", not_layout.display()),
            "not an OCI image layout",
        ),
        (
            "app:v2",
            format!("oci-archive:{}", not_layout.display()),
            "is a directory",
        ),
        ("app:v2", "dir:/tmp/x".to_string(), "cannot write 'dir:'"),
    ] {
        assert_fails(&env.strata(&["save", image, &dest]), 1, phrase);
    }
    assert!(!work.join("x").exists());
    let litter: Vec<String> = names_in(&work)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(litter.is_empty(), "temporary files left: {litter:?}");
    assert_tmp_empty(&env.root);
}

// ---------------------------------------------------------------------------------
// tag, rmi, gc

/// Two images sharing their bottom layer: [base, a1] and [base, b1].
fn two_images(env: &TestEnv) -> (Written, Written, LayerBlob, LayerBlob, LayerBlob) {
    let base = LayerBlob::gz(vec![
        Entry::dir("etc"),
        Entry::file("etc/base", random_bytes(1, 200_000)),
    ]);
    let a1 = LayerBlob::gz(vec![Entry::file("a1", random_bytes(2, 1_500_000))]);
    let b1 = LayerBlob::gz(vec![Entry::file("b1", random_bytes(3, 100_000))]);
    let a = Image::new(vec![base.clone(), a1.clone()]).write(&env.path("a"));
    let b = Image::new(vec![base.clone(), b1.clone()]).write(&env.path("b"));
    (a, b, base, a1, b1)
}

#[test]
fn tag_adds_and_moves_names() {
    let env = TestEnv::new("tag");
    let (a, b, ..) = two_images(&env);
    env.import(&a.source(), Some("a:1"));
    env.import(&b.source(), Some("b:1"));

    assert_ok(&env.strata(&["tag", "a:1", "a:2"]));
    assert_eq!(names_of(&env, &a.config_hex), ["a:1", "a:2"]);
    let out = env.strata(&["images"]);
    assert_ok(&out);
    let short = &a.config_hex[..12];
    for name in ["a:1", "a:2"] {
        assert!(
            stdout(&out)
                .lines()
                .any(|l| l.starts_with(name) && l.contains(short)),
            "images lacks {name}\n{}",
            stdout(&out)
        );
    }

    let out = env.strata(&["tag", &b.config_hex[..10], "a:2"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("moved a:2 from image"),
        "{}",
        describe(&out)
    );
    assert_eq!(names_of(&env, &a.config_hex), ["a:1"]);
    assert_eq!(names_of(&env, &b.config_hex), ["a:2", "b:1"]);
    // "a" is a:latest, which nothing has.
    assert_fails(&env.strata(&["tag", "a", "c:1"]), 1, "not found");
    assert_fails(
        &env.strata(&["tag", "a:1", "Bad Name"]),
        1,
        "not a valid image name",
    );
}

#[test]
fn rmi_untags_refuses_an_image_in_use_and_forces() {
    let env = TestEnv::new("rmi");
    let (a, b, base, a1, b1) = two_images(&env);
    env.import(&a.source(), Some("a:1"));
    env.import(&b.source(), Some("b:1"));
    assert_ok(&env.strata(&["tag", "b:1", "b:2"]));

    assert_fails(&env.strata(&["rmi", "nope:1"]), 1, "not found");

    // One name of two: only that name goes.
    let before = snapshot(&env.root);
    let out = env.strata(&["rmi", "b:2"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "untagged: b:2\n");
    assert_eq!(names_of(&env, &b.config_hex), ["b:1"]);
    let files = |s: &Snapshot| -> Vec<SnapEntry> {
        s.0.iter()
            .filter(|e| !e.path.starts_with("images"))
            .cloned()
            .collect()
    };
    assert_eq!(files(&before), files(&snapshot(&env.root)));

    // a:1 run by a (simulated) mount, which holds the image and its layers: refused,
    // nothing changes.
    let held = hold_layer(&env, a1.diff_id_hex());
    let running = hold_image(&env, &a.config_hex);
    let before = snapshot(&env.root);
    assert_fails(&env.strata(&["rmi", "a:1"]), 1, "in use");
    assert_same(&before, &snapshot(&env.root), "refused rmi");

    // --force: the record and blobs go, the held layer stays for gc.
    let out = env.strata(&["rmi", "--force", "a:1"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains(&format!("kept layer {}", &a1.diff_id_hex()[..12])),
        "{}",
        describe(&out)
    );
    assert!(image_by_id(&env.images_json(), &a.config_hex).is_none());
    assert!(env.layer_dir(a1.diff_id_hex()).join("index").is_file());
    let blobs = names_in(&env.root.join("blobs/sha256"));
    let b_blobs: BTreeSet<String> = [
        &b.config_hex,
        &b.manifest_hex,
        &base.digest_hex().to_string(),
        &b1.digest_hex().to_string(),
    ]
    .into_iter()
    .cloned()
    .collect();
    assert_eq!(blobs, b_blobs, "a's own blobs go, b's stay");
    assert!(env.layer_dir(base.diff_id_hex()).is_dir());
    drop(running);
    drop(held);

    // Another image's mount holds a shared layer, not this image: rmi goes ahead and
    // leaves that layer to the image that uses it.
    env.import(&a.source(), Some("a:1"));
    let b_running = hold_image(&env, &b.config_hex);
    let base_held = hold_layer(&env, base.diff_id_hex());
    assert_ok(&env.strata(&["rmi", "a:1"]));
    assert!(image_by_id(&env.images_json(), &a.config_hex).is_none());
    assert!(env.layer_dir(base.diff_id_hex()).join("index").is_file());
    drop((b_running, base_held));

    // Several at once: one unknown does not stop the others; the exit says it failed.
    env.import(&a.source(), Some("a:1"));
    let out = env.strata(&["rmi", "a:1", "nope", "b:1"]);
    assert_fails(&out, 1, "'nope' not found");
    assert!(env.images_json().is_empty(), "{}", describe(&out));
    assert!(names_in(&env.root.join("layers")).is_empty());
    assert!(names_in(&env.root.join("blobs/sha256")).is_empty());
    assert_tmp_empty(&env.root);
}

#[test]
fn gc_frees_what_no_image_uses_and_keeps_held_layers() {
    let env = TestEnv::new("gc");
    let (a, b, base, a1, b1) = two_images(&env);
    env.import(&a.source(), Some("a:1"));
    env.import(&b.source(), Some("b:1"));
    let chain = |ids: &[&str]| {
        ids.iter()
            .skip(1)
            .fold(format!("sha256:{}", ids[0]), |c, d| {
                format!(
                    "sha256:{}",
                    sha256_hex(format!("{c} sha256:{d}").as_bytes())
                )
            })
            .trim_start_matches("sha256:")
            .to_string()
    };
    let (base_hex, a1_hex, b1_hex) = (base.diff_id_hex(), a1.diff_id_hex(), b1.diff_id_hex());
    let a_view = chain(&[base_hex, a1_hex]);
    let b_view = chain(&[base_hex, b1_hex]);
    let base_view = chain(&[base_hex]);
    let stray_view = "0".repeat(64);
    // Views are a cache that mounts fill; these stand in for them.
    let views = env.root.join("views");
    for v in [&a_view, &b_view, &base_view, &stray_view] {
        fs::create_dir_all(views.join(v)).unwrap();
        fs::write(views.join(v).join("index"), vec![0u8; 10_000]).unwrap();
    }
    give_to_user(&views);

    // Nothing to collect yet but the stray view.
    let out = env.strata(&["gc"]);
    assert_ok(&out);
    assert!(
        stdout(&out).starts_with("removed 0 layers, 0 blobs, 1 views"),
        "{}",
        describe(&out)
    );

    // a:1 removed by force while its own layer is held: that layer is left to gc.
    let held = hold_layer(&env, a1_hex);
    assert_ok(&env.strata(&["rmi", "--force", "a:1"]));
    assert_eq!(
        names_in(&views),
        BTreeSet::from([b_view.clone(), base_view.clone()])
    );
    let out = env.strata(&["gc"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains(&format!("kept layer {}", &a1_hex[..12])),
        "{}",
        describe(&out)
    );
    assert!(env.layer_dir(a1_hex).join("index").is_file());
    drop(held);

    let before = du(&env.root);
    let out = env.strata(&["gc"]);
    assert_ok(&out);
    let after = du(&env.root);
    let text = stdout(&out);
    assert!(
        text.starts_with("removed 1 layers, 0 blobs, 0 views"),
        "{}",
        describe(&out)
    );
    let freed: u64 = text
        .rsplit_once('(')
        .and_then(|(_, n)| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in '{text}'"));
    assert!(freed >= 1_500_000, "freed {freed} bytes");
    assert!(
        before - after >= freed - 16_384 && before - after <= freed + 16_384,
        "du went from {before} to {after}, gc says it freed {freed}"
    );

    // What is left is exactly b's: its layers, blobs and views; no stale locks.
    assert_eq!(
        names_in(&env.root.join("layers")),
        BTreeSet::from([base_hex.to_string(), b1_hex.to_string()])
    );
    assert_eq!(
        names_in(&env.root.join("blobs/sha256")),
        BTreeSet::from([
            b.config_hex.clone(),
            b.manifest_hex.clone(),
            base.digest_hex().to_string(),
            b1.digest_hex().to_string()
        ])
    );
    assert_eq!(names_in(&views), BTreeSet::from([b_view, base_view]));
    assert!(
        !names_in(&env.root.join("locks"))
            .iter()
            .any(|n| n.contains(a1_hex)),
        "a1's lock files stay"
    );
    // b still reads whole.
    let out = env.strata(&["inspect", "b:1"]);
    assert_ok(&out);
    let layers = &json(&out.stdout)["layers"];
    assert_eq!(layers.as_array().unwrap().len(), 2);
    let path: PathBuf = env.layer_dir(b1_hex).join("tree/b1");
    assert_eq!(fs::read(path).unwrap(), random_bytes(3, 100_000));
    assert_tmp_empty(&env.root);
}

#[test]
fn zstd_layers_save_as_they_came_and_uncompressed_for_docker() {
    let env = TestEnv::new("save-zstd");
    let work = env.mkdir("work");
    let (a, ..) = two_images(&env);
    let zstd = work.join("z");
    skopeo(&[
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}", a.path()),
        &format!("oci:{}:z", zstd.display()),
    ]);
    let id = env.import(&format!("oci:{}:z", zstd.display()), Some("z:1"));
    let out = env.strata(&["inspect", "z:1"]);
    assert_ok(&out);
    let layers = json(&out.stdout)["layers"].clone();
    assert!(
        layers
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["media_type"] == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "skopeo wrote no zstd layers: {layers}"
    );

    let oci_dir = work.join("out");
    let docker_tar = work.join("d.tar");
    assert_ok(&env.strata(&["save", "z:1", &format!("oci:{}", oci_dir.display())]));
    assert_ok(&env.strata(&[
        "save",
        "z:1",
        &format!("docker-archive:{}:other/name:v9", docker_tar.display()),
    ]));
    let original = files_in(&zstd.join("blobs/sha256"));
    for (name, bytes) in files_in(&oci_dir.join("blobs/sha256")) {
        assert!(original.get(&name) == Some(&bytes), "blob {name} differs");
    }
    let docker = tar_files(&docker_tar);
    let dm = json(&docker["manifest.json"]);
    assert_eq!(dm[0]["RepoTags"], serde_json::json!(["other/name:v9"]));
    let layer_digests: Vec<String> = dm[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(&docker[l.as_str().unwrap()])))
        .collect();
    assert_eq!(layer_digests, a.diff_ids);
    let info = json(
        skopeo(&[
            "inspect",
            &format!("docker-archive:{}", docker_tar.display()),
        ])
        .as_bytes(),
    );
    assert_eq!(info["Layers"], serde_json::json!(a.diff_ids));
    let fresh = TestEnv::new("save-zstd-reimport");
    assert_eq!(
        fresh.import(&format!("docker-archive:{}", docker_tar.display()), None),
        id
    );
    assert_eq!(
        fresh.images_json()[0]["names"],
        serde_json::json!(["other/name:v9"])
    );
}
