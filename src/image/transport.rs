//! Image source references as users type them, with skopeo's transport prefixes:
//! `oci:PATH[:REF]`, `oci-archive:PATH[:REF]`, `docker-archive:PATH[:NAME:TAG]`,
//! `docker://REF` (a registry), or a bare path whose content says what it is (an OCI
//! layout directory, a docker or OCI archive, or a plain root filesystem tarball,
//! compressed or not).

use std::path::{Path, PathBuf};

use super::ImageError;
use super::archive::{DockerArchive, OciArchive, TarIndex};
use super::layout::OciLayout;
use super::registry::{ClientOptions, Reference, RegistrySource};
use super::source::ImageSource;
use super::spec::Compression;
use super::tarball::RootfsTarball;

/// A parsed source reference: where, and which image there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    OciLayout {
        path: PathBuf,
        reference: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        reference: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
    Tarball {
        path: PathBuf,
    },
    Registry {
        reference: Reference,
    },
}

/// An opened source, with what it says about the image it holds.
pub struct OpenedSource {
    pub source: Box<dyn ImageSource>,
    /// Which image of the source to take (an OCI ref name), if the user said.
    pub reference: Option<String>,
    /// Names the source gives the image ("name:tag"), as docker-archive's RepoTags.
    pub names: Vec<String>,
}

/// Transports other tools know that strata does not read (yet).
const NOT_SUPPORTED: &[&str] = &["docker", "dir", "containers-storage", "docker-daemon"];

impl SourceRef {
    pub fn parse(spec: &str) -> Result<SourceRef, ImageError> {
        if let Some(rest) = spec.strip_prefix("docker://") {
            let reference = Reference::parse(rest)?;
            return Ok(SourceRef::Registry { reference });
        }
        if let Some(rest) = spec.strip_prefix("oci:") {
            let (path, reference) = split_path_and_ref(rest, Path::is_dir);
            return Ok(SourceRef::OciLayout { path, reference });
        }
        if let Some(rest) = spec.strip_prefix("oci-archive:") {
            let (path, reference) = split_path_and_ref(rest, Path::is_file);
            return Ok(SourceRef::OciArchive { path, reference });
        }
        if let Some(rest) = spec.strip_prefix("docker-archive:") {
            let (path, reference) = split_path_and_ref(rest, Path::is_file);
            return Ok(SourceRef::DockerArchive { path, reference });
        }
        if let Some((transport, _)) = spec.split_once(':')
            && NOT_SUPPORTED.contains(&transport)
            && !Path::new(spec).exists()
        {
            return Err(ImageError::UnsupportedTransport(transport.to_string()));
        }
        let path = Path::new(spec);
        if path.exists() {
            return detect(path, None);
        }
        // "PATH:REF" with a bare path.
        let (found, reference) = split_path_and_ref(spec, Path::exists);
        if found.exists() {
            return detect(&found, reference);
        }
        Err(ImageError::Read {
            what: format!("image source '{spec}'"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    /// Opens the source. `tls_verify` matters to registries: off, a registry on this
    /// machine may also be reached over plain HTTP.
    pub fn open(&self, tls_verify: bool) -> Result<OpenedSource, ImageError> {
        let opened = |source: Box<dyn ImageSource>,
                      reference: &Option<String>,
                      names: Vec<String>| OpenedSource {
            source,
            reference: reference.clone(),
            names,
        };
        match self {
            SourceRef::OciLayout { path, reference } => {
                Ok(opened(Box::new(OciLayout::open(path)?), reference, vec![]))
            }
            SourceRef::OciArchive { path, reference } => {
                Ok(opened(Box::new(OciArchive::open(path)?), reference, vec![]))
            }
            SourceRef::DockerArchive { path, reference } => {
                let archive = DockerArchive::open(path, reference.as_deref())?;
                let names = match reference {
                    Some(r) => vec![r.clone()],
                    None => archive.repo_tags().to_vec(),
                };
                // The archive picked the image already: its index has just that one.
                Ok(opened(Box::new(archive), &None, names))
            }
            SourceRef::Tarball { path } => {
                Ok(opened(Box::new(RootfsTarball::open(path)?), &None, vec![]))
            }
            SourceRef::Registry { reference } => {
                let options = ClientOptions {
                    tls_verify,
                    ..ClientOptions::default()
                };
                let source = RegistrySource::open(reference, options)?;
                let names = reference.image_name().map(|n| n.to_string());
                Ok(opened(Box::new(source), &None, names.into_iter().collect()))
            }
        }
    }
}

/// What an existing path holds, by its content.
fn detect(path: &Path, reference: Option<String>) -> Result<SourceRef, ImageError> {
    if path.is_dir() {
        if path.join("oci-layout").exists() {
            return Ok(SourceRef::OciLayout {
                path: path.to_path_buf(),
                reference,
            });
        }
        return Err(ImageError::BadLayout {
            path: path.to_path_buf(),
            reason: "it has no 'oci-layout' file".into(),
        });
    }
    let mut magic = [0u8; 4];
    let got = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
        .map_err(|e| ImageError::Read {
            what: path.display().to_string(),
            source: e,
        })?;
    if Compression::sniff(&magic[..got]) != Compression::None {
        // docker save and skopeo write archives uncompressed: a compressed tar is a
        // root filesystem.
        return Ok(SourceRef::Tarball {
            path: path.to_path_buf(),
        });
    }
    let members = TarIndex::open(path)?;
    if members.contains("manifest.json") {
        Ok(SourceRef::DockerArchive {
            path: path.to_path_buf(),
            reference,
        })
    } else if members.contains("oci-layout") && members.contains("index.json") {
        Ok(SourceRef::OciArchive {
            path: path.to_path_buf(),
            reference,
        })
    } else {
        Ok(SourceRef::Tarball {
            path: path.to_path_buf(),
        })
    }
}

/// "PATH:REF" -> (PATH, Some(REF)), as skopeo reads it: the path ends at the first
/// ':' (so "DIR:app:v1" names the ref "app:v1"), unless a longer prefix is the one
/// that exists as the kind of path wanted.
fn split_path_and_ref(s: &str, wanted: fn(&Path) -> bool) -> (PathBuf, Option<String>) {
    if wanted(Path::new(s)) {
        return (PathBuf::from(s), None);
    }
    let colons: Vec<usize> = s.match_indices(':').map(|(i, _)| i).collect();
    let split_at = colons
        .iter()
        .copied()
        .find(|&i| wanted(Path::new(&s[..i])))
        .or(colons.first().copied());
    match split_at {
        Some(i) if i + 1 < s.len() => (PathBuf::from(&s[..i]), Some(s[i + 1..].to_string())),
        _ => (PathBuf::from(s), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("oci-layout"), "{}").unwrap();
        let d = dir.display();
        let layout = |reference: Option<&str>| SourceRef::OciLayout {
            path: dir.clone(),
            reference: reference.map(String::from),
        };
        assert_eq!(
            SourceRef::parse(&format!("oci:{d}:v1")).unwrap(),
            layout(Some("v1"))
        );
        assert_eq!(SourceRef::parse(&format!("oci:{d}")).unwrap(), layout(None));
        assert_eq!(
            SourceRef::parse(&format!("{d}:v2")).unwrap(),
            layout(Some("v2"))
        );
        assert_eq!(
            SourceRef::parse(&format!("oci:{d}:app:v1")).unwrap(),
            layout(Some("app:v1"))
        );
        let file = tmp.path().join("a.tar");
        std::fs::write(&file, [0u8; 1024]).unwrap();
        assert_eq!(
            SourceRef::parse(&format!("docker-archive:{}:busybox:1", file.display())).unwrap(),
            SourceRef::DockerArchive {
                path: file.clone(),
                reference: Some("busybox:1".into())
            }
        );
        // An empty tar is no archive: a (trivial) root filesystem.
        assert_eq!(
            SourceRef::parse(file.to_str().unwrap()).unwrap(),
            SourceRef::Tarball { path: file.clone() }
        );
        assert!(SourceRef::parse(tmp.path().to_str().unwrap()).is_err());
        assert!(matches!(
            SourceRef::parse("docker://busybox").unwrap(),
            SourceRef::Registry { reference } if reference.repository == "library/busybox"
        ));
        assert!(
            SourceRef::parse("containers-storage:x")
                .unwrap_err()
                .to_string()
                .contains("not supported yet")
        );
        assert!(SourceRef::parse("/nonexistent/x").is_err());
    }
}
