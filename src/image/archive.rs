//! Images inside a tar file: `oci-archive` (a tar of an OCI layout) and
//! `docker-archive` (what `docker save` and `podman save` write: manifest.json, a
//! config and layer tars, and since Docker 25 an OCI layout beside them).
//!
//! The archive is indexed once (member name -> offset and size, seeking past the
//! data) and blobs are then read in place: nothing is extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::HashingReader;
use super::layer::normalise;
use super::source::ImageSource;
use super::spec::{Descriptor, Index, Manifest, RootFs, media_type};
use super::{Digest, ImageError, parse_json};

/// Symlinks between members (docker save links repeated layers) are followed this deep.
const MAX_LINK_HOPS: usize = 8;
/// manifest.json, index.json and configs are small.
const DOCUMENT_LIMIT: u64 = 16 << 20;

#[derive(Debug, Clone)]
enum Member {
    Data { offset: u64, size: u64 },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
}

/// The members of a tar file, by normalised name.
#[derive(Debug)]
pub struct TarIndex {
    path: PathBuf,
    members: HashMap<Vec<u8>, Member>,
}

impl TarIndex {
    pub fn open(path: &Path) -> Result<TarIndex, ImageError> {
        let what = || path.display().to_string();
        let read_err = |e: io::Error| ImageError::Read {
            what: what(),
            source: e,
        };
        let file = File::open(path).map_err(read_err)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek().map_err(read_err)? {
            let entry = entry.map_err(|e| ImageError::BadArchive {
                path: path.to_path_buf(),
                reason: format!("it is not a readable tar archive: {e}"),
            })?;
            let Ok(name) = normalise(&entry.path_bytes()) else {
                continue;
            };
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::Data {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => Member::Symlink(link),
                tar::EntryType::Link => Member::Hardlink(link),
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name.as_bytes())
    }

    /// Where a member's data lies, links followed within the archive.
    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut current = normalise(name.as_bytes()).ok()?;
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&current)? {
                Member::Data { offset, size } => return Some((*offset, *size)),
                Member::Hardlink(target) => current = normalise(target).ok()?,
                Member::Symlink(target) => {
                    let (dir, _) = super::layer::split_last(&current);
                    let mut joined = if target.starts_with(b"/") {
                        Vec::new()
                    } else {
                        dir.to_vec()
                    };
                    joined.push(b'/');
                    joined.extend_from_slice(target);
                    current = resolve_dots(&joined)?;
                }
            }
        }
        None
    }

    /// A reader over one member's data.
    pub fn open_member(&self, name: &str) -> Result<impl Read + Send + use<>, ImageError> {
        let (offset, size) = self.locate(name).ok_or_else(|| ImageError::MissingBlob {
            what: format!("'{name}'"),
            source_name: self.path.display().to_string(),
        })?;
        let read_err = |e: io::Error| ImageError::Read {
            what: format!("{}: {name}", self.path.display()),
            source: e,
        };
        let mut file = File::open(&self.path).map_err(read_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
        Ok(file.take(size))
    }

    /// A small member, whole.
    pub fn read_document(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut bytes = Vec::new();
        self.open_member(name)?
            .take(DOCUMENT_LIMIT)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::Read {
                what: format!("{}: {name}", self.path.display()),
                source: e,
            })?;
        Ok(bytes)
    }
}

/// Resolves "." and ".." in an archive-relative path; None if it climbs out.
fn resolve_dots(path: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join(&b'/'))
}

/// `oci-archive:FILE`: an OCI layout in a tar.
pub struct OciArchive {
    tar: TarIndex,
}

impl OciArchive {
    pub fn open(path: &Path) -> Result<OciArchive, ImageError> {
        let tar = TarIndex::open(path)?;
        if !tar.contains("oci-layout") || !tar.contains("index.json") {
            return Err(ImageError::BadArchive {
                path: path.to_path_buf(),
                reason: "it holds no OCI layout (no oci-layout and index.json members)".into(),
            });
        }
        Ok(OciArchive { tar })
    }
}

impl ImageSource for OciArchive {
    fn describe(&self) -> String {
        format!("OCI archive {}", self.tar.path.display())
    }

    fn index(&self) -> Result<Index, ImageError> {
        parse_json(
            &self.tar.read_document("index.json")?,
            &format!("{}: index.json", self.tar.path.display()),
        )
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        Ok(Box::new(
            self.tar
                .open_member(&format!("blobs/sha256/{}", digest.hex()))?,
        ))
    }
}

/// One image of a docker-archive's manifest.json.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// `docker-archive:FILE`: the image is described by manifest.json, whose members
/// carry no digests; the descriptors are made here, by hashing each member once.
pub struct DockerArchive {
    tar: TarIndex,
    index: Index,
    /// Blob digest -> the member that holds it (or the bytes made here).
    blobs: HashMap<Digest, BlobSource>,
    repo_tags: Vec<String>,
}

enum BlobSource {
    Member(String),
    Bytes(Vec<u8>),
}

impl DockerArchive {
    /// Opens the archive and picks the image tagged `reference` (a RepoTag), or the
    /// only one.
    pub fn open(path: &Path, reference: Option<&str>) -> Result<DockerArchive, ImageError> {
        let tar = TarIndex::open(path)?;
        let bad = |reason: String| ImageError::BadArchive {
            path: path.to_path_buf(),
            reason,
        };
        if !tar.contains("manifest.json") {
            return Err(bad(
                "the archive has no manifest.json: it is not a docker-archive".into(),
            ));
        }
        let what = format!("{}: manifest.json", path.display());
        let images: Vec<DockerImage> = parse_json(&tar.read_document("manifest.json")?, &what)?;
        let image = pick_image(&images, reference).map_err(bad)?;
        let mut blobs = HashMap::new();
        let config_bytes = tar.read_document(&image.config)?;
        let config_digest = Digest::of(&config_bytes);
        let rootfs: ConfigRootFs = parse_json(
            &config_bytes,
            &format!("{}: {}", path.display(), image.config),
        )?;
        if rootfs.rootfs.diff_ids.len() != image.layers.len() {
            return Err(ImageError::LayerCountMismatch {
                config: config_digest,
                diff_ids: rootfs.rootfs.diff_ids.len(),
                layers: image.layers.len(),
            });
        }
        let config = Descriptor {
            media_type: media_type::DOCKER_CONFIG.into(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        blobs.insert(config_digest, BlobSource::Bytes(config_bytes));
        let mut layers = Vec::with_capacity(image.layers.len());
        for member in &image.layers {
            let (digest, size, media_type) = describe_layer(&tar, member)?;
            layers.push(Descriptor {
                media_type,
                digest: digest.clone(),
                size,
                annotations: Default::default(),
                platform: None,
            });
            blobs.insert(digest, BlobSource::Member(member.clone()));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media_type::DOCKER_MANIFEST.into()),
            config,
            layers,
            annotations: Default::default(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let manifest_digest = Digest::of(&manifest_bytes);
        let descriptor = Descriptor {
            media_type: media_type::DOCKER_MANIFEST.into(),
            digest: manifest_digest.clone(),
            size: manifest_bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        blobs.insert(manifest_digest, BlobSource::Bytes(manifest_bytes));
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![descriptor],
            annotations: Default::default(),
        };
        Ok(DockerArchive {
            tar,
            index,
            blobs,
            repo_tags: image.repo_tags.clone().unwrap_or_default(),
        })
    }

    /// The names `docker save` recorded for the image ("name:tag").
    pub fn repo_tags(&self) -> &[String] {
        &self.repo_tags
    }
}

#[derive(Deserialize)]
struct ConfigRootFs {
    rootfs: RootFs,
}

fn pick_image<'a>(
    images: &'a [DockerImage],
    reference: Option<&str>,
) -> Result<&'a DockerImage, String> {
    let tags = || {
        let all: Vec<&str> = images
            .iter()
            .flat_map(|i| i.repo_tags.iter().flatten())
            .map(String::as_str)
            .collect();
        if all.is_empty() {
            "none".to_string()
        } else {
            all.join(", ")
        }
    };
    match reference {
        Some(r) => images
            .iter()
            .find(|i| i.repo_tags.iter().flatten().any(|t| same_reference(t, r)))
            .ok_or_else(|| format!("no image tagged '{r}' in it (its tags: {})", tags())),
        None => match images {
            [one] => Ok(one),
            [] => Err("its manifest.json lists no image".into()),
            _ => Err(format!(
                "it holds {} images: name one as docker-archive:PATH:NAME:TAG (its tags: {})",
                images.len(),
                tags()
            )),
        },
    }
}

/// Whether two references name the same image, as docker reads them: Docker Hub's
/// "docker.io/library/" may be left out, and so may the tag "latest".
fn same_reference(a: &str, b: &str) -> bool {
    let canonical = |r: &str| {
        let short = r.strip_prefix("docker.io/").unwrap_or(r);
        let short = short.strip_prefix("library/").unwrap_or(short);
        let last = short.rsplit('/').next().unwrap_or(short);
        if last.contains(':') {
            short.to_string()
        } else {
            format!("{short}:latest")
        }
    };
    canonical(a) == canonical(b)
}

/// Digest, size and media type of a layer member, read once.
fn describe_layer(tar: &TarIndex, member: &str) -> Result<(Digest, u64, String), ImageError> {
    let mut reader = HashingReader::new(tar.open_member(member)?);
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                return Err(ImageError::Read {
                    what: member.to_string(),
                    source: e,
                });
            }
        }
    }
    let (digest, size) = reader.finish().map_err(|e| ImageError::Read {
        what: member.to_string(),
        source: e,
    })?;
    let media_type = match super::spec::Compression::sniff(&magic[..got]) {
        super::spec::Compression::Gzip => media_type::DOCKER_LAYER_GZIP,
        super::spec::Compression::Zstd => media_type::OCI_LAYER_ZSTD,
        super::spec::Compression::None => media_type::DOCKER_LAYER_TAR,
    };
    Ok((digest, size, media_type.to_string()))
}

impl ImageSource for DockerArchive {
    fn describe(&self) -> String {
        format!("docker archive {}", self.tar.path.display())
    }

    fn index(&self) -> Result<Index, ImageError> {
        Ok(self.index.clone())
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        match self.blobs.get(digest) {
            Some(BlobSource::Bytes(b)) => Ok(Box::new(&b[..])),
            Some(BlobSource::Member(m)) => Ok(Box::new(self.tar.open_member(m)?)),
            None => Err(ImageError::MissingBlob {
                what: format!("blob {digest}"),
                source_name: self.describe(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_compare_as_docker_reads_them() {
        assert!(same_reference(
            "docker.io/library/busybox:1.35",
            "busybox:1.35"
        ));
        assert!(same_reference("busybox:latest", "busybox"));
        assert!(same_reference(
            "localhost:5000/app",
            "localhost:5000/app:latest"
        ));
        assert!(!same_reference("busybox:1", "busybox:2"));
    }

    #[test]
    fn dots_resolve_inside_the_archive() {
        assert_eq!(resolve_dots(b"a/../b/./c"), Some(b"b/c".to_vec()));
        assert_eq!(resolve_dots(b"../x"), None);
    }
}
