//! Writing an image in the forms other tools read: the index of an OCI image layout,
//! a tar of a layout (`oci-archive`), and `docker save`'s form (`docker-archive`).
//!
//! Blobs come from any `ImageSource` and are checked against their digests while they
//! are copied: a damaged source fails the write instead of yielding an archive that
//! looks whole. Where and how the output becomes visible (temporary names, renames) is
//! the caller's business; this module only produces bytes.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::digest::{HashingReader, verify};
use super::resolve::ResolvedImage;
use super::source::ImageSource;
use super::spec::{ANNOTATION_REF_NAME, Compression, Descriptor, Platform, media_type};
use super::{Digest, ImageError};

/// The `oci-layout` file of every layout strata writes.
pub const OCI_LAYOUT_MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

const BLOCK: u64 = 512;

/// Why copying into an archive failed: the source, or the output.
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// A tar stream written entry by entry to a seekable output. Entries are plain: owner
/// 0:0, mtime 0, mode 0644 or 0755, so the same image always gives the same bytes.
pub struct TarOut<W: Write + Seek> {
    out: W,
}

impl<W: Write + Seek> TarOut<W> {
    pub fn new(out: W) -> Self {
        TarOut { out }
    }

    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let header = header(path, tar::EntryType::Directory, 0o755, 0)?;
        self.out.write_all(header.as_bytes())
    }

    pub fn file(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let header = header(path, tar::EntryType::Regular, 0o644, bytes.len() as u64)?;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(bytes)?;
        self.pad(bytes.len() as u64)
    }

    /// Copies `data` to its end as the file `path`; returns its size. A decompressed
    /// layer's size is known only once it is through, so the header is written with
    /// size 0 first and rewritten after the data.
    pub fn stream(&mut self, path: &str, data: &mut dyn Read) -> Result<u64, CopyError> {
        let start = self.out.stream_position().map_err(CopyError::Write)?;
        let mut head = header(path, tar::EntryType::Regular, 0o644, 0).map_err(CopyError::Write)?;
        self.out
            .write_all(head.as_bytes())
            .map_err(CopyError::Write)?;
        let size = copy_data(data, &mut self.out)?;
        (|| {
            self.pad(size)?;
            let end = self.out.stream_position()?;
            head.set_size(size);
            head.set_cksum();
            self.out.seek(SeekFrom::Start(start))?;
            self.out.write_all(head.as_bytes())?;
            self.out.seek(SeekFrom::Start(end))?;
            Ok(size)
        })()
        .map_err(CopyError::Write)
    }

    /// Ends the archive (two zero blocks) and hands the output back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rest = (BLOCK - size % BLOCK) % BLOCK;
        self.out.write_all(&vec![0u8; rest as usize])
    }
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_cksum();
    Ok(h)
}

/// `blobs/sha256/<hex>`: where a layout keeps a blob.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", Digest::ALGORITHM, digest.hex())
}

/// The index descriptor of `image`'s manifest, named `ref_name` if given.
pub fn manifest_descriptor(image: &ResolvedImage, ref_name: Option<&str>) -> Descriptor {
    let annotations = ref_name
        .map(|r| [(ANNOTATION_REF_NAME.to_string(), r.to_string())].into())
        .unwrap_or_default();
    let platform =
        (!image.config.os.is_empty() && !image.config.architecture.is_empty()).then(|| Platform {
            architecture: image.config.architecture.clone(),
            os: image.config.os.clone(),
            variant: image.config.variant.clone(),
        });
    Descriptor {
        media_type: image.manifest_media_type.clone(),
        digest: image.manifest_digest.clone(),
        size: image.manifest_bytes.len() as u64,
        annotations,
        platform,
    }
}

/// `existing` (an index.json, if the layout had one) with `desc` added. A ref name
/// names one image: whatever had `desc`'s ref before loses it, as skopeo does. The
/// index is edited as JSON so that fields strata does not know survive.
pub fn index_with(existing: Option<&[u8]>, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let bad = |source| ImageError::BadJson {
        what: "the destination's index.json".into(),
        source,
    };
    let mut index: serde_json::Value = match existing {
        Some(bytes) => serde_json::from_slice(bytes).map_err(bad)?,
        None => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [],
        }),
    };
    let not_an_index = || {
        ImageError::NoManifest(
            "the destination's index.json has no manifests list; it is not an OCI index".into(),
        )
    };
    let manifests = index
        .as_object_mut()
        .ok_or_else(not_an_index)?
        .entry("manifests")
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
        .ok_or_else(not_an_index)?;
    let new_ref = desc.ref_name();
    manifests.retain(|m| {
        let old_ref = m
            .pointer(&format!(
                "/annotations/{}",
                ANNOTATION_REF_NAME.replace('/', "~1")
            ))
            .and_then(|r| r.as_str());
        let same_ref = new_ref.is_some() && old_ref == new_ref;
        let same_unnamed = new_ref.is_none()
            && old_ref.is_none()
            && m.get("digest").and_then(|d| d.as_str()) == Some(&desc.digest.to_string());
        !same_ref && !same_unnamed
    });
    manifests.push(serde_json::to_value(desc).expect("a descriptor serialises"));
    Ok(serde_json::to_vec(&index).expect("JSON serialises"))
}

/// Copies the blob `digest` of `size` bytes from `source` to the archive as `path`,
/// checking size and digest on the way.
pub fn copy_blob<W: Write + Seek>(
    tar: &mut TarOut<W>,
    path: &str,
    source: &dyn ImageSource,
    digest: &Digest,
    size: u64,
) -> Result<(), ImageError> {
    copy_verified(source, digest, size, path, |blob| {
        tar.stream(path, blob).map(drop)
    })
}

/// Streams the blob `digest` of `size` bytes from `source` to `out` (a file, named
/// `dest` in messages), checking size and digest on the way.
pub fn copy_blob_to(
    out: &mut dyn Write,
    dest: &str,
    source: &dyn ImageSource,
    digest: &Digest,
    size: u64,
) -> Result<(), ImageError> {
    copy_verified(source, digest, size, dest, |blob| {
        copy_data(blob, out).map(drop)
    })
}

/// Opens the blob, lets `copy` consume it, then checks what went through against
/// the descriptor's size and digest.
fn copy_verified(
    source: &dyn ImageSource,
    digest: &Digest,
    size: u64,
    dest: &str,
    copy: impl FnOnce(&mut dyn Read) -> Result<(), CopyError>,
) -> Result<(), ImageError> {
    let what = format!("blob {digest}");
    let mut reader = HashingReader::new(source.open_blob(digest)?);
    copy(&mut reader).map_err(|e| copy_error(e, &what, dest))?;
    let (actual, actual_size) = reader.finish().map_err(|e| ImageError::Read {
        what: what.clone(),
        source: e,
    })?;
    verify(&what, digest, size, &actual, actual_size)
}

/// Copies `from` to its end into `to`; returns the bytes copied. Read and write
/// failures stay apart: one is the source's fault, the other the destination's.
fn copy_data(from: &mut dyn Read, to: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        copied += n as u64;
    }
}

fn copy_error(e: CopyError, what: &str, dest: &str) -> ImageError {
    match e {
        CopyError::Read(source) => ImageError::Read {
            what: what.to_string(),
            source,
        },
        CopyError::Write(source) => ImageError::Write {
            what: dest.to_string(),
            source,
        },
    }
}

/// Writes `image` as a tar of an OCI image layout, every blob byte for byte as the
/// source has it, with one manifest in index.json (named `ref_name` if given).
pub fn write_oci_archive<W: Write + Seek>(
    out: W,
    image: &ResolvedImage,
    source: &dyn ImageSource,
    ref_name: Option<&str>,
) -> Result<W, ImageError> {
    let mut tar = TarOut::new(out);
    let write_err = |what: &str| {
        let what = what.to_string();
        move |source| ImageError::Write { what, source }
    };
    tar.file("oci-layout", OCI_LAYOUT_MARKER)
        .map_err(write_err("oci-layout"))?;
    tar.dir("blobs/").map_err(write_err("blobs/"))?;
    tar.dir(&format!("blobs/{}/", Digest::ALGORITHM))
        .map_err(write_err("blobs/"))?;
    let mut written: Vec<&Digest> = Vec::new();
    for (desc, _, _) in image.layers() {
        if !written.contains(&&desc.digest) {
            copy_blob(
                &mut tar,
                &blob_path(&desc.digest),
                source,
                &desc.digest,
                desc.size,
            )?;
            written.push(&desc.digest);
        }
    }
    let config = image.config_digest();
    tar.file(&blob_path(config), &image.config_bytes)
        .map_err(write_err("the config blob"))?;
    tar.file(&blob_path(&image.manifest_digest), &image.manifest_bytes)
        .map_err(write_err("the manifest blob"))?;
    let index = index_with(None, &manifest_descriptor(image, ref_name))?;
    tar.file("index.json", &index)
        .map_err(write_err("index.json"))?;
    tar.finish().map_err(write_err("the archive's end"))
}

/// Writes `image` as `docker save` does: manifest.json naming the config
/// (`<id>.json`) and each layer as an uncompressed tar (`<diff_id>/layer.tar`), so
/// the layer files' digests are the config's diff_ids. The config is byte for byte
/// the stored one, so the image ID stays the same.
pub fn write_docker_archive<W: Write + Seek>(
    out: W,
    image: &ResolvedImage,
    source: &dyn ImageSource,
    repo_tags: &[String],
) -> Result<W, ImageError> {
    let mut tar = TarOut::new(out);
    let mut layer_paths = Vec::new();
    let mut written: Vec<&Digest> = Vec::new();
    for (desc, diff_id, compression) in image.layers() {
        let dir = diff_id.hex().to_string();
        let path = format!("{dir}/layer.tar");
        if !written.contains(&diff_id) {
            tar.dir(&format!("{dir}/"))
                .map_err(|source| ImageError::Write {
                    what: format!("{dir}/"),
                    source,
                })?;
            copy_uncompressed(&mut tar, &path, source, desc, diff_id, compression)?;
            written.push(diff_id);
        }
        layer_paths.push(path);
    }
    let config_path = format!("{}.json", image.config_digest().hex());
    let manifest = serde_json::json!([{
        "Config": config_path,
        "RepoTags": repo_tags,
        "Layers": layer_paths,
    }]);
    let manifest = serde_json::to_vec(&manifest).expect("JSON serialises");
    let write_err = |what: &str| {
        let what = what.to_string();
        move |source| ImageError::Write { what, source }
    };
    tar.file(&config_path, &image.config_bytes)
        .map_err(write_err(&config_path))?;
    tar.file("manifest.json", &manifest)
        .map_err(write_err("manifest.json"))?;
    tar.finish().map_err(write_err("the archive's end"))
}

/// Copies one layer into the archive uncompressed, checking the blob's digest and
/// size and the uncompressed stream's diff_id.
fn copy_uncompressed<W: Write + Seek>(
    tar: &mut TarOut<W>,
    path: &str,
    source: &dyn ImageSource,
    desc: &Descriptor,
    diff_id: &Digest,
    compression: Compression,
) -> Result<(), ImageError> {
    let what = format!("layer {}", desc.digest);
    let corrupt = |source| ImageError::CorruptLayer {
        layer: desc.digest.clone(),
        source,
    };
    let mut blob = HashingReader::new(source.open_blob(&desc.digest)?);
    let uncompressed = {
        let decoder = compression.decoder(&mut blob).map_err(corrupt)?;
        let mut plain = HashingReader::new(decoder);
        tar.stream(path, &mut plain).map_err(|e| match e {
            CopyError::Read(source) => corrupt(source),
            CopyError::Write(source) => ImageError::Write {
                what: path.to_string(),
                source,
            },
        })?;
        plain.finish().map_err(corrupt)?.0
    };
    let (actual, actual_size) = blob.finish().map_err(|e| ImageError::Read {
        what: what.clone(),
        source: e,
    })?;
    verify(&what, &desc.digest, desc.size, &actual, actual_size)?;
    if &uncompressed != diff_id {
        return Err(ImageError::DiffIdMismatch {
            layer: desc.digest.clone(),
            expected: diff_id.clone(),
            actual: uncompressed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn streamed_entries_get_their_size_in_the_header() {
        let mut tar = TarOut::new(Cursor::new(Vec::new()));
        tar.dir("d/").unwrap();
        tar.file("d/small", b"abc").unwrap();
        let n = tar.stream("d/big", &mut &vec![7u8; 1000][..]).unwrap();
        assert_eq!(n, 1000);
        let bytes = tar.finish().unwrap().into_inner();
        assert_eq!(bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(&bytes[..]);
        let got: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("d/".to_string(), 0),
                ("d/small".to_string(), 3),
                ("d/big".to_string(), 1000)
            ]
        );
    }

    fn desc(digest: &Digest, r: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type::OCI_MANIFEST.into(),
            digest: digest.clone(),
            size: 1,
            annotations: r
                .map(|r| [(ANNOTATION_REF_NAME.to_string(), r.to_string())].into())
                .unwrap_or_default(),
            platform: None,
        }
    }

    #[test]
    fn index_keeps_others_and_moves_refs() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let one = index_with(None, &desc(&a, Some("v1"))).unwrap();
        let mut existing: serde_json::Value = serde_json::from_slice(&one).unwrap();
        existing["annotations"] = serde_json::json!({"kept": "yes"});
        let existing = serde_json::to_vec(&existing).unwrap();
        let two = index_with(Some(&existing), &desc(&b, Some("v2"))).unwrap();
        let moved = index_with(Some(&two), &desc(&b, Some("v1"))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&moved).unwrap();
        assert_eq!(v["annotations"]["kept"], "yes");
        let refs: Vec<(String, String)> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["digest"].as_str().unwrap().to_string(),
                    m["annotations"][ANNOTATION_REF_NAME]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        assert_eq!(
            refs,
            [
                (b.to_string(), "v2".to_string()),
                (b.to_string(), "v1".to_string())
            ]
        );
        assert!(index_with(Some(b"[]"), &desc(&a, None)).is_err());
    }
}
