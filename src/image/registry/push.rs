//! Pushing an image to a registry (OCI distribution spec): each blob the registry
//! lacks, layers first and the config last, by a monolithic upload; then the
//! manifest, byte for byte as the source holds it, so that its digest (the one
//! `strata images --digests` and a pull by digest rely on) is kept. A blob that
//! another repository of the same registry may hold is first asked to be mounted
//! from there, which costs no upload.

use std::io::Read;

use ureq::SendBody;
use ureq::http::Response;

use super::client::{Body, Client, ClientOptions};
use super::{Reference, RegistryError};
use crate::image::resolve::ResolvedImage;
use crate::image::source::ImageSource;
use crate::image::{Digest, ImageError};

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    pub manifest_digest: Digest,
}

/// What became of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobAction {
    /// The registry had it already.
    Present,
    /// Mounted from another repository of the registry.
    Mounted,
    Uploaded,
}

/// Told of each blob as it is dealt with, for a progress line.
pub trait PushProgress {
    fn blob(&self, digest: &Digest, size: u64, action: BlobAction);
}

/// A `PushProgress` that says nothing.
pub struct Silent;

impl PushProgress for Silent {
    fn blob(&self, _: &Digest, _: u64, _: BlobAction) {}
}

/// Pushes `image`, whose blobs `source` serves, to `reference` (its tag, or its
/// digest, which must then be the manifest's). `mount_from` names repositories of
/// the same registry that may hold its blobs already.
pub fn push(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    reference: &Reference,
    mount_from: &[String],
    options: ClientOptions,
    progress: &dyn PushProgress,
) -> Result<PushOutcome, RegistryError> {
    let client = Client::connect_for_push(reference, options)?;
    let target = manifest_target(&client, reference, &image.manifest_digest)?;
    let mut outcome = PushOutcome {
        blobs_uploaded: 0,
        blobs_mounted: 0,
        blobs_present: 0,
        manifest_digest: image.manifest_digest.clone(),
    };
    let blobs = image
        .layers()
        .map(|(desc, _, _)| (&desc.digest, desc.size))
        .chain([(image.config_digest(), image.config_bytes.len() as u64)]);
    for (digest, size) in blobs {
        let action = if has_blob(&client, digest)? {
            BlobAction::Present
        } else {
            upload_blob(&client, source, digest, size, mount_from)?
        };
        match action {
            BlobAction::Present => outcome.blobs_present += 1,
            BlobAction::Mounted => outcome.blobs_mounted += 1,
            BlobAction::Uploaded => outcome.blobs_uploaded += 1,
        }
        progress.blob(digest, size, action);
    }
    put_manifest(&client, image, &target)?;
    Ok(outcome)
}

/// The tag or digest the manifest goes under. A digest that is not the manifest's
/// could never be stored: say so before uploading anything.
fn manifest_target(
    client: &Client,
    reference: &Reference,
    manifest_digest: &Digest,
) -> Result<String, RegistryError> {
    match (&reference.tag, &reference.digest) {
        (Some(tag), _) => Ok(tag.clone()),
        (None, Some(d)) if d == manifest_digest => Ok(d.to_string()),
        (None, Some(d)) => Err(RegistryError::BadReference {
            reference: reference.to_string(),
            reason: format!(
                "the image's manifest is {manifest_digest}, not {d}; push to a tag instead (on {})",
                client.host()
            ),
        }),
        (None, None) => Ok(reference.manifest_reference()),
    }
}

fn has_blob(client: &Client, digest: &Digest) -> Result<bool, RegistryError> {
    let url = client.url(&format!("blobs/{digest}"));
    let what = format!("blob {digest}");
    let response = client.with_auth(&what, |auth| {
        with_auth_header(client.agent().head(&url), auth).call()
    })?;
    match response.status().as_u16() {
        200..=299 => Ok(true),
        404 => Ok(false),
        _ => Err(client.status_error(response, &what)),
    }
}

/// Mounts the blob from one of `mount_from`, or else POSTs for an upload session
/// and PUTs the whole blob to it, streamed from the source (a layer is never held
/// in memory).
fn upload_blob(
    client: &Client,
    source: &dyn ImageSource,
    digest: &Digest,
    size: u64,
    mount_from: &[String],
) -> Result<BlobAction, RegistryError> {
    let what = format!("blob {digest}");
    let mut location = None;
    for from in mount_from {
        match try_mount(client, digest, from) {
            Some(Started::Mounted) => return Ok(BlobAction::Mounted),
            Some(Started::At(l)) => {
                location = Some(l);
                break;
            }
            None => {}
        }
    }
    let location = match location {
        Some(l) => l,
        None => start_upload(client, &client.url("blobs/uploads/"), &what)?.ok_or_else(|| {
            RegistryError::NoUploadLocation {
                host: client.host().to_string(),
                what: what.clone(),
            }
        })?,
    };
    let url = upload_url(client.base(), client.repository(), &location, digest);
    // A failure to open the blob is kept aside: `with_auth` speaks only of HTTP.
    let open_failure = std::cell::RefCell::new(None);
    let response = client.with_auth(&what, |auth| {
        let mut reader: Box<dyn Read + Send + '_> = match source.open_blob(digest) {
            Ok(r) => r,
            Err(e) => {
                *open_failure.borrow_mut() = Some(e);
                Box::new(std::io::empty())
            }
        };
        with_auth_header(client.agent().put(&url), auth)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size.to_string())
            .send(SendBody::from_reader(&mut reader))
    });
    if let Some(e) = open_failure.into_inner() {
        return Err(local(e));
    }
    let response = response?;
    match response.status().as_u16() {
        200..=299 => Ok(BlobAction::Uploaded),
        _ => Err(client.status_error(response, &what)),
    }
}

/// How an upload began.
enum Started {
    Mounted,
    /// An upload session, at this `Location`.
    At(String),
}

/// Asks to mount `digest` from the repository `from`. The registry may answer with
/// an ordinary upload session instead; any failure (the repository is gone, a token
/// that does not cover it) means only that the blob is uploaded after all.
fn try_mount(client: &Client, digest: &Digest, from: &str) -> Option<Started> {
    let encoded = digest.to_string().replace(':', "%3A");
    let url = client.url(&format!("blobs/uploads/?mount={encoded}&from={from}"));
    let what = format!("mount of blob {digest} from {from}");
    let response = client
        .with_auth(&what, |auth| {
            with_auth_header(client.agent().post(&url), auth)
                .header("Content-Length", "0")
                .send_empty()
        })
        .ok()?;
    match response.status().as_u16() {
        201 => Some(Started::Mounted),
        202 => header(&response, "location").map(Started::At),
        _ => None,
    }
}

/// POSTs to `url` for an upload session; its `Location`, if the registry gave one.
fn start_upload(client: &Client, url: &str, what: &str) -> Result<Option<String>, RegistryError> {
    let response = client.with_auth(what, |auth| {
        with_auth_header(client.agent().post(url), auth)
            .header("Content-Length", "0")
            .send_empty()
    })?;
    if response.status() != 202 {
        return Err(client.status_error(response, what));
    }
    Ok(header(&response, "location"))
}

/// PUTs the manifest and checks that the registry kept it unchanged.
fn put_manifest(client: &Client, image: &ResolvedImage, target: &str) -> Result<(), RegistryError> {
    let what = format!("manifest {target}");
    let url = client.url(&format!("manifests/{target}"));
    let response = client.with_auth(&what, |auth| {
        with_auth_header(client.agent().put(&url), auth)
            .header("Content-Type", &image.manifest_media_type)
            .send(&image.manifest_bytes[..])
    })?;
    if !response.status().is_success() {
        return Err(client.status_error(response, &what));
    }
    // The header is optional in the spec; when given, it must be ours.
    match header(&response, "docker-content-digest") {
        Some(returned) if returned != image.manifest_digest.to_string() => {
            Err(RegistryError::ManifestChanged {
                host: client.host().to_string(),
                repository: client.repository().to_string(),
                expected: image.manifest_digest.to_string(),
                returned,
            })
        }
        _ => Ok(()),
    }
}

fn with_auth_header<B>(
    request: ureq::RequestBuilder<B>,
    auth: Option<&str>,
) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => request.header("Authorization", a),
        None => request,
    }
}

fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn local(e: ImageError) -> RegistryError {
    RegistryError::Local(Box::new(e))
}

/// Where to PUT a blob: the upload's `Location` (absolute, absolute-path, or relative
/// to the uploads collection), with `digest=` added to whatever query it has.
fn upload_url(base: &str, repository: &str, location: &str, digest: &Digest) -> String {
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        format!("{base}/v2/{repository}/blobs/uploads/{location}")
    };
    let separator = if absolute.contains('?') { '&' } else { '?' };
    // ':' is reserved in a query: encoded, as registries' own clients send it.
    let encoded = digest.to_string().replace(':', "%3A");
    format!("{absolute}{separator}digest={encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_upload_urls_from_any_location() {
        let d = Digest::of(b"x");
        let q = format!("digest=sha256%3A{}", d.hex());
        let base = "http://127.0.0.1:5000";
        assert_eq!(
            upload_url(
                base,
                "org/app",
                "https://other:1/v2/org/app/blobs/uploads/u1",
                &d
            ),
            format!("https://other:1/v2/org/app/blobs/uploads/u1?{q}")
        );
        assert_eq!(
            upload_url(
                base,
                "org/app",
                "/v2/org/app/blobs/uploads/u2?_state=abc",
                &d
            ),
            format!("{base}/v2/org/app/blobs/uploads/u2?_state=abc&{q}")
        );
        assert_eq!(
            upload_url(base, "org/app", "u3", &d),
            format!("{base}/v2/org/app/blobs/uploads/u3?{q}")
        );
    }
}
