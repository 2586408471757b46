//! Every image source `strata import` takes besides OCI layouts: oci-archive and
//! docker-archive (written by skopeo, and by hand for the broken cases), layouts with
//! zstd layers, and plain root filesystem tarballs (.tar, .tar.gz, .tar.zst). Run as
//! the unprivileged test user.

mod support;

use std::fs;
use std::path::Path;

use strata::store::layer_index::{IndexEntry, LayerIndex};
use support::*;

const MT_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn sample() -> Image {
    Image::new(vec![
        LayerBlob::gz(vec![
            Entry::dir("etc"),
            Entry::file("etc/hello", "hello\n").mode(0o644),
            Entry::symlink("etc/link", "hello"),
            Entry::file("etc/secret", "x").mode(0o600).owner(0, 42),
        ]),
        LayerBlob::gz(vec![
            Entry::dir("bin"),
            Entry::file("bin/tool", random_bytes(7, 200_000)).mode(0o4755),
            Entry::whiteout("etc/link"),
        ]),
    ])
    .with_ref("latest")
}

/// Every layer index of an image, decoded, in chain order.
fn indexes(env: &TestEnv, diff_ids: &[String]) -> Vec<Vec<IndexEntry>> {
    diff_ids
        .iter()
        .map(|d| {
            let path = env.layer_dir(d.trim_start_matches("sha256:")).join("index");
            let index = LayerIndex::open(&path).unwrap_or_else(|e| panic!("{e}"));
            index.iter().map(|e| e.to_owned_entry()).collect()
        })
        .collect()
}

#[track_caller]
fn skopeo_copy(args: &[&str]) {
    let mut cmd = user_command("skopeo");
    cmd.args(["copy", "-q"]).args(args);
    assert_ok(&cmd.output().expect("run skopeo"));
}

#[test]
fn archives_and_zstd_layouts_written_by_skopeo_import_as_the_oci_layout_does() {
    let reference = TestEnv::new("src-ref");
    let written = sample().write(&reference.path("layout"));
    let id = reference.import(&written.source(), Some("app:v1"));
    let expected = indexes(&reference, &written.diff_ids);
    let out = reference.mkdir("out");
    let layout = format!("oci:{}:latest", written.path());
    let oci_archive = out.join("app-oci.tar");
    let docker_archive = out.join("app-docker.tar");
    let zstd_layout = out.join("zstd");
    skopeo_copy(&[
        &layout,
        &format!("oci-archive:{}:latest", oci_archive.display()),
    ]);
    skopeo_copy(&[
        &layout,
        &format!("docker-archive:{}:app:v1", docker_archive.display()),
    ]);
    skopeo_copy(&[
        "--dest-compress-format",
        "zstd",
        "--dest-compress",
        &layout,
        &format!("oci:{}:latest", zstd_layout.display()),
    ]);
    let zstd_index = fs::read_to_string(zstd_layout.join("index.json")).unwrap();
    let zstd_blobs: String = fs::read_dir(zstd_layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(
        zstd_blobs.contains(MT_TAR_ZSTD),
        "skopeo wrote no zstd layer: {zstd_index}"
    );

    let sources = [
        format!("oci-archive:{}", oci_archive.display()),
        format!("oci-archive:{}:latest", oci_archive.display()),
        oci_archive.display().to_string(),
        format!("docker-archive:{}", docker_archive.display()),
        docker_archive.display().to_string(),
        format!("oci:{}:latest", zstd_layout.display()),
    ];
    for source in sources {
        // A fresh store each time, so every layer is really decoded from this source.
        let env = TestEnv::new("src");
        let got = env.import(&source, None);
        assert_eq!(got, id, "{source}: another image ID");
        assert_eq!(
            indexes(&env, &written.diff_ids),
            expected,
            "{source}: layers differ"
        );
        let hello = env
            .layer_dir(written.diff_ids[0].trim_start_matches("sha256:"))
            .join("tree/etc/hello");
        assert_eq!(fs::read(&hello).unwrap(), b"hello\n", "{source}");
        support::assert_tmp_empty(&env.root);
    }
}

#[test]
fn docker_archive_names_the_image_by_its_repo_tags_and_picks_by_tag() {
    let env = TestEnv::new("src-names");
    let written = sample().write(&env.path("layout"));
    let out = env.mkdir("out");
    let archive = out.join("two.tar");
    let layout = format!("oci:{}:latest", written.path());
    skopeo_copy(&[
        &layout,
        &format!("docker-archive:{}:app:v1", archive.display()),
    ]);
    env.import(&format!("docker-archive:{}", archive.display()), None);
    let names = env.images_json()[0]["names"].clone();
    assert!(names.to_string().contains("app:v1"), "{names}");

    // Two images in one manifest.json: the tag picks, and without one it is an error.
    let other = Image::new(vec![LayerBlob::plain(vec![Entry::file("only", "x")])]);
    let archive = out.join("multi.tar");
    fs::write(
        &archive,
        docker_archive(&[(&sample(), "a:1"), (&other, "b:2")], None),
    )
    .unwrap();
    give_to_user(&archive);
    let out_multi = env.strata(&["import", &format!("docker-archive:{}", archive.display())]);
    assert_fails(&out_multi, 1, "holds 2 images");
    let id_b = env.import(&format!("docker-archive:{}:b:2", archive.display()), None);
    let b = env
        .images_json()
        .into_iter()
        .find(|i| i["id"] == id_b.as_str())
        .expect("b listed");
    assert_eq!(b["names"], serde_json::json!(["b:2"]));
}

/// A docker-archive by hand: manifest.json, a config and an uncompressed layer tar per
/// layer, `missing` naming a layer file left out.
fn docker_archive(images: &[(&Image, &str)], missing: Option<&str>) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut manifest = Vec::new();
    for (n, (image, tag)) in images.iter().enumerate() {
        let config = image.config_bytes();
        let config_name = format!("{}.json", sha256_hex(&config));
        let mut layer_names = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            let name = format!("img{n}-layer{i}/layer.tar");
            entries.push(Entry::file(&name, tar(&layer.entries)));
            layer_names.push(name);
        }
        if let Some(m) = missing {
            layer_names.push(m.to_string());
        }
        entries.push(Entry::file(&config_name, config));
        manifest.push(
            serde_json::json!({"Config": config_name, "RepoTags": [tag], "Layers": layer_names}),
        );
    }
    entries.push(Entry::file(
        "manifest.json",
        serde_json::to_vec(&manifest).unwrap(),
    ));
    tar(&entries)
}

#[test]
fn rootfs_tarballs_plain_gzip_and_zstd_import_as_one_layer_images() {
    let env = TestEnv::new("src-tarball");
    let rootfs = tar(&[
        Entry::dir("bin"),
        Entry::file("bin/sh", random_bytes(3, 50_000)).mode(0o755),
        Entry::dir("etc"),
        Entry::file("etc/os-release", "ID=test\n"),
    ]);
    let diff_id = sha256_hex(&rootfs);
    let files = [
        ("rootfs.tar", rootfs.clone()),
        ("rootfs.tar.gz", gzip(&rootfs)),
        ("rootfs.tar.zst", zstd::encode_all(&rootfs[..], 3).unwrap()),
    ];
    for (name, bytes) in files {
        let path = env.path(name);
        fs::write(&path, bytes).unwrap();
        give_to_user(&path);
        let id = env.import(
            &path.display().to_string(),
            Some(&format!("rootfs:{}", name.replace('.', "-"))),
        );
        let image = env
            .images_json()
            .into_iter()
            .find(|i| i["id"] == id.as_str())
            .expect("listed");
        assert_eq!(
            image["layers"],
            serde_json::json!([format!("sha256:{diff_id}")]),
            "{name}"
        );
        let tree = env.layer_dir(&diff_id).join("tree");
        assert_eq!(
            fs::read(tree.join("etc/os-release")).unwrap(),
            b"ID=test\n",
            "{name}"
        );
        let out = env.strata(&["images", "--json"]);
        assert_ok(&out);
    }
    // Config: the host's platform, the diff_id, and no command.
    let config_path = |id: &str| env.root.join("blobs/sha256").join(id);
    let id = env.images_json()[0]["id"].as_str().unwrap().to_string();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(config_path(&id)).unwrap()).unwrap();
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], host_arch());
    assert!(
        config.get("config").is_none_or(|c| c.get("Cmd").is_none()),
        "{config}"
    );
}

#[track_caller]
fn refused_and_unchanged(env: &TestEnv, source: &Path, prefix: &str, phrase: &str) {
    give_to_user(source);
    let before = snapshot(&env.root);
    let out = env.strata(&["import", &format!("{prefix}{}", source.display())]);
    assert_fails(&out, 1, phrase);
    assert_same(&before, &snapshot(&env.root), phrase);
    assert_tmp_empty(&env.root);
}

#[test]
fn bad_archives_and_tarballs_are_refused_and_change_nothing() {
    let env = TestEnv::new("src-bad");
    env.import(&sample().write(&env.path("good")).source(), Some("good:1"));

    let missing = env.path("missing.tar");
    fs::write(
        &missing,
        docker_archive(&[(&sample(), "m:1")], Some("gone/layer.tar")),
    )
    .unwrap();
    // The config lists two diff_ids and manifest.json three layers.
    refused_and_unchanged(&env, &missing, "docker-archive:", "diff_ids");

    let mut only_missing = sample();
    only_missing.layers.truncate(1);
    let mut entries = Vec::new();
    let config = only_missing.config_bytes();
    entries.push(Entry::file("c.json", config));
    entries.push(Entry::file(
        "manifest.json",
        serde_json::to_vec(&serde_json::json!([{"Config": "c.json", "RepoTags": ["m:1"], "Layers": ["gone/layer.tar"]}])).unwrap(),
    ));
    let path = env.path("missing-layer.tar");
    fs::write(&path, tar(&entries)).unwrap();
    refused_and_unchanged(&env, &path, "docker-archive:", "is missing from");

    // A zstd layer with a corrupt frame, its descriptor matching the broken bytes.
    let layer_tar = tar(&[Entry::file("f", random_bytes(9, 100_000))]);
    let mut frame = zstd::encode_all(&layer_tar[..], 3).unwrap();
    let middle = frame.len() / 2;
    frame[middle] ^= 0xff;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    let corrupt =
        Image::new(vec![LayerBlob::raw(frame, MT_TAR_ZSTD, diff_id)]).write(&env.path("zstd-bad"));
    let before = snapshot(&env.root);
    let out = env.strata(&["import", &corrupt.source()]);
    assert_fails(&out, 1, "");
    let message = stderr(&out);
    assert!(
        message.contains("corrupt or truncated") || message.contains("diff_id mismatch"),
        "{message}"
    );
    assert_same(&before, &snapshot(&env.root), "corrupt zstd");

    let hostile = env.path("hostile.tar.gz");
    fs::write(
        &hostile,
        gzip(&tar(&[
            Entry::file("ok", "1"),
            Entry::file("../escape", "2"),
        ])),
    )
    .unwrap();
    refused_and_unchanged(&env, &hostile, "", "refused");

    let not_tar = env.path("notes.txt");
    fs::write(&not_tar, "this is not an image\n").unwrap();
    give_to_user(&not_tar);
    let out = env.strata(&["import", &not_tar.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}
