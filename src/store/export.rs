//! Reading an image back out of the store: its verified manifest and config (for
//! `inspect`), and `save` to the forms other tools read: `oci:DIR[:REF]`,
//! `oci-archive:FILE[:REF]`, `docker-archive:FILE[:NAME:TAG]`.
//!
//! Nothing half-written is ever visible at the destination: an archive is written
//! under a temporary name beside it and renamed; a new layout directory is built
//! beside its place and renamed; into an existing layout the blobs go first (each by
//! rename) and index.json last, so until then the layout lists what it listed before.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::fsutil::{fsync_dir, rename_noreplace, unique_name, write_atomic_with};
use super::images::{ImageDb, ImageRecord};
use super::staging::Staging;
use super::{Store, StoreError};
use crate::image::layout::OciLayout;
use crate::image::reference::{DEFAULT_TAG, ImageName};
use crate::image::resolve::{ResolvedImage, resolve};
use crate::image::source::{ImageSource, open_blob_file};
use crate::image::spec::{Index, Platform, media_type};
use crate::image::writer;
use crate::image::{Digest, ImageError};

/// Where `save` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    OciDir {
        path: PathBuf,
        reference: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        reference: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
        name: Option<ImageName>,
    },
}

const FORMS: &str = "oci:DIR[:REF], oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG]";

impl Destination {
    /// Parses skopeo's forms. As in skopeo, the path ends at its first ':' (unless
    /// the whole names something that exists), so a path with ':' cannot take a ref.
    pub fn parse(spec: &str) -> Result<Destination, StoreError> {
        let bad = |reason: String| StoreError::BadDestination {
            dest: spec.to_string(),
            reason,
        };
        let Some((transport, rest)) = spec.split_once(':') else {
            return Err(bad(format!("say which form to write: {FORMS}")));
        };
        let (path, reference) = if Path::new(rest).exists() {
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((p, r)) => (p, Some(r.to_string()).filter(|r| !r.is_empty())),
                None => (rest, None),
            }
        };
        if path.is_empty() {
            return Err(bad(format!("no path given; the forms are {FORMS}")));
        }
        let path = PathBuf::from(path);
        if let Some(r) = &reference
            && transport != "docker-archive"
            && !valid_ref_name(r)
        {
            return Err(bad(format!(
                "'{r}' is not a valid ref name: use letters, digits and ._:@/+-"
            )));
        }
        match transport {
            "oci" => Ok(Destination::OciDir { path, reference }),
            "oci-archive" => Ok(Destination::OciArchive { path, reference }),
            "docker-archive" => Ok(Destination::DockerArchive {
                path,
                name: reference.as_deref().map(str::parse).transpose()?,
            }),
            other => Err(bad(format!(
                "strata cannot write '{other}:'; the forms are {FORMS}"
            ))),
        }
    }
}

/// The OCI image-layout ref grammar, loosely: no spaces, nothing exotic.
fn valid_ref_name(r: &str) -> bool {
    !r.is_empty()
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/+-".contains(&b))
}

/// An image of the store as an `ImageSource`: one manifest, its blobs in blobs/.
pub struct StoredImage<'a> {
    store: &'a Store,
    record: &'a ImageRecord,
}

impl<'a> StoredImage<'a> {
    pub fn new(store: &'a Store, record: &'a ImageRecord) -> Self {
        StoredImage { store, record }
    }
}

impl ImageSource for StoredImage<'_> {
    fn describe(&self) -> String {
        format!("image {} of the store", self.record.id.short())
    }

    fn index(&self) -> Result<Index, ImageError> {
        let path = self.store.blob_path(&self.record.manifest_digest);
        let size = fs::metadata(&path)
            .map_err(|e| ImageError::Read {
                what: path.display().to_string(),
                source: e,
            })?
            .len();
        let manifest = crate::image::spec::Descriptor {
            media_type: self.record.manifest_media_type.clone(),
            digest: self.record.manifest_digest.clone(),
            size,
            annotations: Default::default(),
            platform: None,
        };
        Ok(Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: vec![manifest],
            annotations: Default::default(),
        })
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        open_blob_file(&self.store.blob_path(digest), digest, self)
    }
}

/// The image's manifest and config, read from the store and verified.
pub fn load(store: &Store, record: &ImageRecord) -> Result<ResolvedImage, StoreError> {
    let wanted = [&record.manifest_digest, &record.id]
        .into_iter()
        .chain(record.layers.iter().map(|l| &l.digest));
    for digest in wanted {
        if !store.has_blob(digest) {
            return Err(StoreError::MissingBlob(digest.clone()));
        }
    }
    Ok(resolve(
        &StoredImage::new(store, record),
        None,
        &Platform::host(),
    )?)
}

/// Runs `read` on the image `wanted`: its record, its verified manifest and config,
/// and the source of its blobs (for `push`). Meanwhile gc and rmi leave its blobs be,
/// as for `save`.
pub fn with_image<T, E: From<StoreError>>(
    store: &Store,
    wanted: &str,
    read: impl FnOnce(&ImageRecord, &ResolvedImage, &StoredImage<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let _reading = Staging::new(&store.tmp_dir(), "read")?;
    let record = store.images().load()?.find(wanted)?.clone();
    let image = load(store, &record)?;
    read(&record, &image, &StoredImage::new(store, &record))
}

/// Writes the image `wanted` to `dest`. The ref (or docker's RepoTags) defaults to
/// what the user named the image by, else its names, else "latest".
pub fn save(store: &Store, wanted: &str, dest: &Destination) -> Result<(), StoreError> {
    // A live work area keeps gc and rmi from taking the blobs while we read them. It
    // must exist before the record is read, so that an rmi that has not seen it has
    // already removed the record we would look for.
    let _reading = Staging::new(&store.tmp_dir(), "save")?;
    let record = store.images().load()?.find(wanted)?.clone();
    let asked = ImageDb::name_asked(wanted, &record);
    let image = load(store, &record)?;
    let source = StoredImage::new(store, &record);
    let default_ref = || {
        asked
            .as_deref()
            .or(record.names.first().map(String::as_str))
            .and_then(|n| n.parse::<ImageName>().ok())
            .map_or(DEFAULT_TAG.to_string(), |n| n.tag)
    };
    match dest {
        Destination::OciDir { path, reference } => {
            let r = reference.clone().unwrap_or_else(default_ref);
            save_oci_dir(&image, &source, path, &r)
        }
        Destination::OciArchive { path, reference } => {
            let r = reference.clone().unwrap_or_else(default_ref);
            write_archive(path, |out| {
                writer::write_oci_archive(out, &image, &source, Some(&r)).map(drop)
            })
        }
        Destination::DockerArchive { path, name } => {
            let tags = match (name, asked) {
                (Some(n), _) => vec![n.to_string()],
                (None, Some(n)) => vec![n],
                (None, None) => record.names.clone(),
            };
            write_archive(path, |out| {
                writer::write_docker_archive(out, &image, &source, &tags).map(drop)
            })
        }
    }
}

/// Writes an archive file through `fill`, under a temporary name, then renames it
/// over `path`: the destination is the old file or the whole new one.
fn write_archive(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), ImageError>,
) -> Result<(), StoreError> {
    if path.is_dir() {
        return Err(StoreError::BadDestination {
            dest: path.display().to_string(),
            reason: "it is a directory; an archive is a file (oci:DIR writes a layout)".into(),
        });
    }
    write_atomic_with(path, 0o666, |out| Ok(fill(out)?))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `oci:DIR`: a new layout (DIR missing or empty), or one more image in a layout.
fn save_oci_dir(
    image: &ResolvedImage,
    source: &StoredImage<'_>,
    dir: &Path,
    ref_name: &str,
) -> Result<(), StoreError> {
    let not_layout = |reason: &str| StoreError::BadDestination {
        dest: dir.display().to_string(),
        reason: reason.to_string(),
    };
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Built whole beside its place, then renamed in.
            let name = dir
                .file_name()
                .ok_or_else(|| not_layout("it names no directory"))?
                .to_string_lossy()
                .into_owned();
            let tmp = parent_of(dir).join(format!(".{name}.{}", unique_name("tmp")));
            fs::create_dir(&tmp).map_err(|e| StoreError::io("create directory", &tmp, e))?;
            let result = fill_layout(&tmp, image, source, ref_name).and_then(|()| {
                if rename_noreplace(&tmp, dir)? {
                    fsync_dir(parent_of(dir))
                } else {
                    Err(not_layout(
                        "it was created by someone else while strata wrote the layout",
                    ))
                }
            });
            if result.is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
            result
        }
        Err(e) => Err(StoreError::io("inspect", dir, e)),
        Ok(m) if !m.is_dir() => Err(not_layout(
            "it is not a directory; oci: writes a layout directory (oci-archive: a file)",
        )),
        Ok(_) => {
            let is_layout = dir.join("oci-layout").exists();
            if is_layout {
                OciLayout::open(dir)?;
            } else if !is_empty_dir(dir)? {
                return Err(not_layout(
                    "it exists and is not an OCI image layout (no oci-layout file); name a new or empty directory, or a layout",
                ));
            }
            fill_layout(dir, image, source, ref_name)
        }
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool, StoreError> {
    let mut listing = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    Ok(listing.next().is_none())
}

/// Puts the image's blobs into the layout at `dir` (keeping blobs it already has:
/// they are named by their digest), then adds it to index.json.
fn fill_layout(
    dir: &Path,
    image: &ResolvedImage,
    source: &StoredImage<'_>,
    ref_name: &str,
) -> Result<(), StoreError> {
    let marker = dir.join("oci-layout");
    if !marker.exists() {
        write_atomic_with(&marker, 0o666, |out| {
            out.write_all(writer::OCI_LAYOUT_MARKER)
                .map_err(|e| StoreError::io("write", &marker, e))
        })?;
    }
    let blobs = dir.join("blobs").join(Digest::ALGORITHM);
    fs::create_dir_all(&blobs).map_err(|e| StoreError::io("create directory", &blobs, e))?;
    for (desc, _, _) in image.layers() {
        let path = blobs.join(desc.digest.hex());
        if !has_file_of_size(&path, desc.size) {
            write_atomic_with(&path, 0o666, |out| {
                let dest = path.display().to_string();
                Ok(writer::copy_blob_to(
                    out,
                    &dest,
                    source,
                    &desc.digest,
                    desc.size,
                )?)
            })?;
        }
    }
    for (digest, bytes) in [
        (image.config_digest(), &image.config_bytes),
        (&image.manifest_digest, &image.manifest_bytes),
    ] {
        let path = blobs.join(digest.hex());
        if !has_file_of_size(&path, bytes.len() as u64) {
            write_atomic_with(&path, 0o666, |out| {
                out.write_all(bytes)
                    .map_err(|e| StoreError::io("write", &path, e))
            })?;
        }
    }
    // Read as late as possible, so that what another writer added meanwhile stays.
    let index_path = dir.join("index.json");
    let existing = match fs::read(&index_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(StoreError::io("read", &index_path, e)),
    };
    let desc = writer::manifest_descriptor(image, Some(ref_name));
    let index = writer::index_with(existing.as_deref(), &desc)?;
    write_atomic_with(&index_path, 0o666, |out| {
        out.write_all(&index)
            .map_err(|e| StoreError::io("write", &index_path, e))
    })
}

fn has_file_of_size(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destinations() {
        let p = |s: &str| Destination::parse(s);
        assert_eq!(
            p("oci:/x/lay:v1").unwrap(),
            Destination::OciDir {
                path: "/x/lay".into(),
                reference: Some("v1".into())
            }
        );
        assert_eq!(
            p("oci-archive:a.tar").unwrap(),
            Destination::OciArchive {
                path: "a.tar".into(),
                reference: None
            }
        );
        assert_eq!(
            p("docker-archive:d.tar:app:v2").unwrap(),
            Destination::DockerArchive {
                path: "d.tar".into(),
                name: Some("app:v2".parse().unwrap())
            }
        );
        for bad in ["/plain/path", "docker://x", "oci:", "oci:d:bad ref"] {
            let err = p(bad).unwrap_err();
            assert!(
                matches!(err, StoreError::BadDestination { .. }),
                "{bad}: {err}"
            );
            assert!(err.is_user_error());
        }
    }
}
