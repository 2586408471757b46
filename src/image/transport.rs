//! Image source references as users type them, with skopeo's transport prefixes:
//! `oci:PATH[:REF]`, or a bare path whose content says what it is.

use std::path::{Path, PathBuf};

use super::ImageError;
use super::layout::OciLayout;
use super::source::ImageSource;

/// A parsed source reference: where, and which image there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    OciLayout {
        path: PathBuf,
        reference: Option<String>,
    },
}

impl SourceRef {
    pub fn parse(spec: &str) -> Result<SourceRef, ImageError> {
        if let Some(rest) = spec.strip_prefix("oci:") {
            let (path, reference) = split_path_and_ref(rest);
            return Ok(SourceRef::OciLayout { path, reference });
        }
        if let Some((transport, _)) = spec.split_once(':')
            && KNOWN_LATER.contains(&transport)
            && !Path::new(spec).exists()
        {
            return Err(ImageError::BadLayout {
                path: spec.into(),
                reason: format!(
                    "the '{transport}:' transport is not supported yet; export the image as an OCI layout (skopeo copy ... oci:DIR:TAG) and import that"
                ),
            });
        }
        let path = Path::new(spec);
        if path.join("oci-layout").exists() {
            return Ok(SourceRef::OciLayout {
                path: path.to_path_buf(),
                reference: None,
            });
        }
        if path.is_dir() {
            return Err(ImageError::BadLayout {
                path: path.to_path_buf(),
                reason: "it has no 'oci-layout' file".into(),
            });
        }
        if !path.exists() {
            let (dir, reference) = split_path_and_ref(spec);
            if dir.join("oci-layout").exists() {
                return Ok(SourceRef::OciLayout {
                    path: dir,
                    reference,
                });
            }
            return Err(ImageError::Read {
                what: format!("image source '{spec}'"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Err(ImageError::BadLayout {
            path: path.to_path_buf(),
            reason: "only OCI image layout directories can be imported so far (oci:PATH[:REF])"
                .into(),
        })
    }

    /// Opens the source; returns it with the ref to pick inside it.
    pub fn open(&self) -> Result<(Box<dyn ImageSource>, Option<String>), ImageError> {
        match self {
            SourceRef::OciLayout { path, reference } => {
                Ok((Box::new(OciLayout::open(path)?), reference.clone()))
            }
        }
    }
}

/// Transports other tools know that strata does not read yet.
const KNOWN_LATER: &[&str] = &[
    "docker",
    "docker-archive",
    "oci-archive",
    "dir",
    "containers-storage",
    "docker-daemon",
];

/// "PATH:REF" -> (PATH, Some(REF)), as skopeo reads it: the path ends at the first
/// ':' (so "DIR:app:v1" names the ref "app:v1"), unless a longer prefix of the whole
/// is the path that exists.
fn split_path_and_ref(s: &str) -> (PathBuf, Option<String>) {
    if Path::new(s).exists() {
        return (PathBuf::from(s), None);
    }
    let colons: Vec<usize> = s.match_indices(':').map(|(i, _)| i).collect();
    let split_at = colons
        .iter()
        .copied()
        .find(|&i| Path::new(&s[..i]).is_dir())
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
    fn parses_oci_references() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("oci-layout"), "{}").unwrap();
        let d = dir.display();
        assert_eq!(
            SourceRef::parse(&format!("oci:{d}:v1")).unwrap(),
            SourceRef::OciLayout {
                path: dir.clone(),
                reference: Some("v1".into())
            }
        );
        assert_eq!(
            SourceRef::parse(&format!("oci:{d}")).unwrap(),
            SourceRef::OciLayout {
                path: dir.clone(),
                reference: None
            }
        );
        assert_eq!(
            SourceRef::parse(&format!("{d}:v2")).unwrap(),
            SourceRef::OciLayout {
                path: dir.clone(),
                reference: Some("v2".into())
            }
        );
        assert_eq!(
            SourceRef::parse(&format!("oci:{d}:app:v1")).unwrap(),
            SourceRef::OciLayout {
                path: dir.clone(),
                reference: Some("app:v1".into())
            }
        );
        assert!(SourceRef::parse(tmp.path().to_str().unwrap()).is_err());
        assert!(
            SourceRef::parse("docker://busybox")
                .unwrap_err()
                .to_string()
                .contains("not supported yet")
        );
    }
}
