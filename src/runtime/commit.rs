//! `strata commit`: a container's writable layer becomes a new image on top of the
//! container's. The upper (overlay format) is written as an OCI layer: char 0/0 and
//! `.wh.` whiteouts become `.wh.NAME` entries, opaque directories get
//! `.wh..wh..opq`, owners and modes are the container's own (read inside a user
//! namespace that maps them, with `user.containers.override_stat` where the host
//! could not store them), strata's private xattrs stay out. The layer, a config
//! with its diff_id and a history entry, and a manifest go into an OCI layout in the
//! store's tmp/, which is then imported like any other: every digest is checked
//! again, and the new layer is unpacked and indexed as import does.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::Compression as Level;
use flate2::write::GzEncoder;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use serde_json::{Value, json};

use super::RunError;
use super::userns::{self, UsernsMode};
use crate::image::Digest;
use crate::image::digest::HashingReader;
use crate::image::layout::OciLayout;
use crate::image::reference::ImageName;
use crate::image::spec::media_type;
use crate::image::writer::{OCI_LAYOUT_MARKER, blob_path};
use crate::store::Store;
use crate::store::containers::{ContainerRecord, ContainerState};
use crate::store::export::load;
use crate::store::import::{ImportRequest, Quiet, import};
use crate::store::lock::FileLock;
use crate::store::staging::Staging;
use crate::unionfs::upper::{OVERRIDE_XATTR, UpperEntry, read_overlay_dir};

/// Files strata creates empty in a writable layer only to bind its own over them.
const MOUNT_POINT_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];

/// Commits the container `record` as the image `name`; returns its ID.
pub fn commit(
    store: &Store,
    record: &ContainerRecord,
    name: &ImageName,
    changes: &[String],
) -> Result<Digest, RunError> {
    let who = record.name.clone().unwrap_or_else(|| record.id.clone());
    if store.container_state(&record.id)? == ContainerState::Running {
        return Err(RunError::Running { name: who });
    }
    let lock_file = store.container_lock_path(&record.id);
    // Held while the upper is read: the container cannot start meanwhile.
    let _lock = FileLock::try_exclusive(&lock_file)
        .map_err(|source| RunError::ContainerDir {
            path: lock_file.clone(),
            source,
        })?
        .ok_or_else(|| RunError::Running { name: who.clone() })?;
    let parent = load(store, &record.image)?;
    let staging = Staging::new(&store.tmp_dir(), "commit")?;
    let layout = staging.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
    let upper = store.container_dir(&record.id).join("upper");
    let (diff_id, layer_digest, layer_size) = write_layer(&upper, &blobs)?;

    let mut config: Value = serde_json::from_slice(&parent.config_bytes).map_err(bad_json)?;
    let created = crate::image::tarball::now_rfc3339();
    config["created"] = json!(created);
    push(&mut config, "/rootfs/diff_ids", json!(diff_id.to_string()))?;
    if config.get("history").is_none() {
        config["history"] = json!([]);
    }
    push(
        &mut config,
        "/history",
        json!({
            "created": created,
            "created_by": format!("strata commit {who}"),
            "comment": format!("the writable layer of container {}", &record.id[..12]),
        }),
    )?;
    apply_changes(&mut config, changes)?;
    let config_bytes = serde_json::to_vec(&config).expect("JSON serialises");
    let config_digest = Digest::of(&config_bytes);

    let docker = parent.manifest_media_type == media_type::DOCKER_MANIFEST;
    let mut manifest: Value = serde_json::from_slice(&parent.manifest_bytes).map_err(bad_json)?;
    manifest["config"] = json!({
        "mediaType": if docker { media_type::DOCKER_CONFIG } else { media_type::OCI_CONFIG },
        "digest": config_digest.to_string(),
        "size": config_bytes.len(),
    });
    push(
        &mut manifest,
        "/layers",
        json!({
            "mediaType": if docker { media_type::DOCKER_LAYER_GZIP } else { media_type::OCI_LAYER_GZIP },
            "digest": layer_digest.to_string(),
            "size": layer_size,
        }),
    )?;
    let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON serialises");
    let manifest_digest = Digest::of(&manifest_bytes);

    for layer in &record.image.layers {
        let from = store.blob_path(&layer.digest);
        let to = layout.join(blob_path(&layer.digest));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| RunError::Commit {
                reason: format!(
                    "the layer blob {} of the container's image is not in the store ({e}): import the image again",
                    layer.digest
                ),
            })?;
        }
    }
    write_blob(&layout, &config_digest, &config_bytes)?;
    write_blob(&layout, &manifest_digest, &manifest_bytes)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": parent.manifest_media_type,
            "digest": manifest_digest.to_string(),
            "size": manifest_bytes.len(),
        }],
    });
    write_file(
        &layout.join("index.json"),
        &serde_json::to_vec(&index).expect("JSON"),
    )?;
    write_file(&layout.join("oci-layout"), OCI_LAYOUT_MARKER)?;

    let source = OciLayout::open(&layout)?;
    let request = ImportRequest {
        source_ref: None,
        name: Some(name.clone()),
        source_names: &[],
        platform: None,
        progress: &Quiet,
    };
    Ok(import(store, &source, &request)?.id)
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::ContainerDir { path, source }
}

fn bad_json(e: serde_json::Error) -> RunError {
    RunError::Commit {
        reason: format!("the image's stored JSON is damaged: {e}"),
    }
}

fn push(doc: &mut Value, pointer: &str, item: Value) -> Result<(), RunError> {
    doc.pointer_mut(pointer)
        .and_then(Value::as_array_mut)
        .map(|list| list.push(item))
        .ok_or_else(|| RunError::Commit {
            reason: format!("the image's JSON has no list at {pointer}"),
        })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    std::fs::write(path, bytes).map_err(io_at(path))
}

fn write_blob(layout: &Path, digest: &Digest, bytes: &[u8]) -> Result<(), RunError> {
    write_file(&layout.join(blob_path(digest)), bytes)
}

/// `--change` instructions, in Dockerfile syntax: CMD, ENTRYPOINT (JSON arrays, or
/// a shell form run by /bin/sh -c), ENV NAME=VALUE, WORKDIR, USER.
pub fn apply_changes(config: &mut Value, changes: &[String]) -> Result<(), RunError> {
    if config.get("config").is_none_or(Value::is_null) {
        config["config"] = json!({});
    }
    let run = &mut config["config"];
    for change in changes {
        let (word, rest) = change
            .trim()
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((change.trim(), ""));
        let bad = |reason: &str| RunError::BadOption {
            option: format!("--change {change}"),
            reason: reason.to_string(),
        };
        let argv = |text: &str| -> Result<Value, RunError> {
            if text.starts_with('[') {
                serde_json::from_str::<Vec<String>>(text)
                    .map(|v| json!(v))
                    .map_err(|_| bad("not a JSON array of strings"))
            } else {
                Ok(json!(["/bin/sh", "-c", text]))
            }
        };
        match word.to_ascii_uppercase().as_str() {
            "CMD" => run["Cmd"] = argv(rest)?,
            "ENTRYPOINT" => run["Entrypoint"] = argv(rest)?,
            "WORKDIR" if rest.starts_with('/') => run["WorkingDir"] = json!(rest),
            "WORKDIR" => return Err(bad("the directory must be absolute")),
            "USER" if !rest.is_empty() => run["User"] = json!(rest),
            "ENV" => {
                let (k, v) = rest
                    .split_once('=')
                    .or_else(|| rest.split_once(char::is_whitespace))
                    .ok_or_else(|| bad("expected ENV NAME=VALUE"))?;
                let entry = format!("{}={}", k.trim(), v.trim());
                if run.get("Env").is_none_or(|e| !e.is_array()) {
                    run["Env"] = json!([]);
                }
                let env = run["Env"].as_array_mut().expect("just made a list");
                env.retain(|e| {
                    e.as_str()
                        .and_then(|s| s.split_once('='))
                        .is_none_or(|(name, _)| name != k.trim())
                });
                env.push(json!(entry));
            }
            _ => {
                return Err(bad(
                    "only CMD, ENTRYPOINT, ENV, WORKDIR and USER can change",
                ));
            }
        }
    }
    Ok(())
}

/// Tars the upper inside a user namespace (where its owners are the container's),
/// through a pipe; the layer is gzipped into `blobs` under its digest. Returns
/// (diff_id, digest, compressed size).
fn write_layer(upper: &Path, blobs: &Path) -> Result<(Digest, Digest, u64), RunError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RunError::start("pipe"))?;
    let plan = userns::plan_for_caller(UsernsMode::Auto);
    // SAFETY: `strata commit` has started no thread. The closure (and with it the
    // write end) is dropped in the parent, so its read ends with the child's tar.
    let child = unsafe {
        userns::spawn_in_user_namespace(&plan, nix::sched::CloneFlags::empty(), || match tar_upper(
            upper,
            BufWriter::new(File::from(write)),
        ) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("strata: error: cannot read the writable layer: {e}");
                1
            }
        })
    }?;
    let tmp = blobs.join("layer.tmp");
    let gz = (|| {
        let mut hashing = HashingReader::new(File::from(read));
        let mut out = GzEncoder::new(BufWriter::new(File::create(&tmp)?), Level::default());
        io::copy(&mut hashing, &mut out)?;
        out.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        hashing.finish()
    })();
    let status = nix::sys::wait::waitpid(child, None);
    let (diff_id, _) = gz.map_err(io_at(&tmp))?;
    if !matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) {
        return Err(RunError::Commit {
            reason: "the writable layer could not be read (see above)".into(),
        });
    }
    let mut hashing = HashingReader::new(File::open(&tmp).map_err(io_at(&tmp))?);
    io::copy(&mut hashing, &mut io::sink()).map_err(io_at(&tmp))?;
    let (digest, size) = hashing.finish().map_err(io_at(&tmp))?;
    let dest = blobs.join(digest.hex());
    std::fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
    Ok((diff_id, digest, size))
}

/// The upper as an OCI layer tar, entries in name order.
fn tar_upper(upper: &Path, out: impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let root = nix::fcntl::open(
        upper,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut links = HashMap::new();
    tar_dir(&mut tar, &root, Path::new(""), &mut links)?;
    tar.into_inner()?.flush()
}

fn tar_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &OwnedFd,
    path: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let rel = path.as_os_str().as_bytes();
    let (mut entries, opaque) = read_overlay_dir(dir, rel, true, OVERRIDE_XATTR)
        .map_err(|e| io::Error::other(e.to_string()))?;
    if opaque && !rel.is_empty() {
        marker(tar, &path.join(".wh..wh..opq"))?;
    }
    entries.sort_by(|a, b| entry_name(a).cmp(entry_name(b)));
    for entry in entries {
        match entry {
            UpperEntry::Whiteout { name } => {
                let mut hidden = b".wh.".to_vec();
                hidden.extend_from_slice(&name);
                marker(tar, &path.join(OsStr::from_bytes(&hidden)))?;
            }
            UpperEntry::Node {
                name,
                stat,
                over,
                xattrs,
                ..
            } => {
                let child = path.join(OsStr::from_bytes(&name));
                let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                if kind == SFlag::S_IFREG
                    && stat.st_size == 0
                    && MOUNT_POINT_FILES.iter().any(|f| Path::new(f) == child)
                {
                    continue;
                }
                let mut header = tar::Header::new_gnu();
                let (uid, gid, mode) = match over {
                    Some(o) => (o.uid, o.gid, o.mode),
                    None => (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777),
                };
                header.set_uid(u64::from(uid));
                header.set_gid(u64::from(gid));
                header.set_mode(mode);
                header.set_mtime(stat.st_mtime.max(0) as u64);
                header.set_size(0);
                if !xattrs.is_empty() {
                    let records: Vec<(String, Vec<u8>)> = xattrs
                        .iter()
                        .map(|(k, v)| {
                            (
                                format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                                v.clone(),
                            )
                        })
                        .collect();
                    tar.append_pax_extensions(
                        records.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                    )?;
                }
                if kind != SFlag::S_IFDIR && stat.st_nlink > 1 {
                    let key = (stat.st_dev, stat.st_ino);
                    if let Some(first) = links.get(&key) {
                        header.set_entry_type(tar::EntryType::Link);
                        tar.append_link(&mut header, &child, first)?;
                        continue;
                    }
                    links.insert(key, child.clone());
                }
                match kind {
                    SFlag::S_IFDIR => {
                        header.set_entry_type(tar::EntryType::Directory);
                        tar.append_data(&mut header, &child, io::empty())?;
                        let sub = nix::fcntl::openat(
                            dir,
                            name.as_slice(),
                            OFlag::O_RDONLY
                                | OFlag::O_DIRECTORY
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        )?;
                        tar_dir(tar, &sub, &child, links)?;
                    }
                    SFlag::S_IFREG => {
                        let file = File::from(nix::fcntl::openat(
                            dir,
                            name.as_slice(),
                            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        )?);
                        header.set_entry_type(tar::EntryType::Regular);
                        header.set_size(stat.st_size as u64);
                        tar.append_data(&mut header, &child, file.take(stat.st_size as u64))?;
                    }
                    SFlag::S_IFLNK => {
                        let target = nix::fcntl::readlinkat(dir, name.as_slice())?;
                        header.set_entry_type(tar::EntryType::Symlink);
                        tar.append_link(&mut header, &child, Path::new(&target))?;
                    }
                    SFlag::S_IFIFO => {
                        header.set_entry_type(tar::EntryType::Fifo);
                        tar.append_data(&mut header, &child, io::empty())?;
                    }
                    SFlag::S_IFCHR | SFlag::S_IFBLK => {
                        header.set_entry_type(if kind == SFlag::S_IFCHR {
                            tar::EntryType::Char
                        } else {
                            tar::EntryType::Block
                        });
                        let rdev = stat.st_rdev;
                        header.set_device_major(libc::major(rdev))?;
                        header.set_device_minor(libc::minor(rdev))?;
                        tar.append_data(&mut header, &child, io::empty())?;
                    }
                    // Sockets belong to a running process, not to an image.
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn entry_name(entry: &UpperEntry) -> &[u8] {
    match entry {
        UpperEntry::Whiteout { name } | UpperEntry::Node { name, .. } => name,
    }
}

/// An empty whiteout or opaque marker file, as the OCI layer format has them.
fn marker<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header.set_mtime(0);
    tar.append_data(&mut header, path, io::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_edit_the_run_config() {
        let mut config = json!({"config": {"Env": ["A=1", "B=2"], "Cmd": ["sh"]}});
        let changes: Vec<String> = [
            r#"CMD ["echo", "hi"]"#,
            "ENTRYPOINT /bin/run it",
            "ENV B=3",
            "ENV C 4",
            "WORKDIR /srv",
            "USER alice",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        apply_changes(&mut config, &changes).unwrap();
        let run = &config["config"];
        assert_eq!(run["Cmd"], json!(["echo", "hi"]));
        assert_eq!(run["Entrypoint"], json!(["/bin/sh", "-c", "/bin/run it"]));
        assert_eq!(run["Env"], json!(["A=1", "B=3", "C=4"]));
        assert_eq!(run["WorkingDir"], json!("/srv"));
        assert_eq!(run["User"], json!("alice"));
        for bad in ["RUN make", "WORKDIR srv", "CMD [1,2]", "ENV"] {
            assert!(
                apply_changes(&mut config, &[bad.to_string()]).is_err(),
                "{bad}"
            );
        }
    }
}
