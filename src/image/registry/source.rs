//! A registry as an `ImageSource`: its index is the one document the reference names
//! (an image manifest, or an index of them), and blobs stream from `/blobs/`.
//! Manifests are kept in memory once fetched, so that resolve's reads of them (to
//! verify and descend) cost no second request.

use std::collections::{HashMap, HashSet};
use std::io::{self, Cursor, Read};
use std::sync::Mutex;

use super::client::{Client, ClientOptions, MANIFEST_ACCEPT, error_detail, manifest_media_type};
use super::{Reference, RegistryError};
use crate::image::source::ImageSource;
use crate::image::spec::{Descriptor, Index, media_type};
use crate::image::{Digest, ImageError};

/// Manifests and indexes are read into memory; a real one is a few KiB.
const MANIFEST_LIMIT: u64 = 4 << 20;

pub struct RegistrySource {
    client: Client,
    reference: Reference,
    top: Descriptor,
    /// Manifests fetched so far, by digest.
    manifests: Mutex<HashMap<Digest, Vec<u8>>>,
    /// Digests that indexes named: fetched from `/manifests/`, not `/blobs/`.
    manifest_digests: Mutex<HashSet<Digest>>,
}

impl RegistrySource {
    /// Connects and fetches the manifest (or index) the reference names; import's
    /// resolve picks from an index by platform, as for every other source.
    pub fn open(
        reference: &Reference,
        options: ClientOptions,
    ) -> Result<RegistrySource, RegistryError> {
        let client = Client::connect(reference, options)?;
        let mut source = RegistrySource {
            client,
            reference: reference.clone(),
            top: placeholder(),
            manifests: Mutex::new(HashMap::new()),
            manifest_digests: Mutex::new(HashSet::new()),
        };
        let wanted = reference.manifest_reference();
        let (top, _) = source.fetch_manifest(&wanted, reference.digest.as_ref())?;
        source.top = top;
        Ok(source)
    }

    /// GETs one manifest by tag or digest, checks it against `expected`, and keeps it.
    fn fetch_manifest(
        &self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<(Descriptor, Vec<u8>), RegistryError> {
        let what = format!("manifest {reference}");
        let response = self
            .client
            .get(&format!("manifests/{reference}"), Some(MANIFEST_ACCEPT))?;
        match response.status().as_u16() {
            200 => {}
            404 => {
                return Err(RegistryError::ManifestUnknown {
                    host: self.client.host().to_string(),
                    repository: self.client.repository().to_string(),
                    reference: reference.to_string(),
                    detail: error_detail(response),
                });
            }
            _ => return Err(self.client.status_error(response, &what)),
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MANIFEST_LIMIT + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.transfer_error(&what, e))?;
        if body.len() as u64 > MANIFEST_LIMIT {
            return Err(self.transfer_error(
                &what,
                format!("larger than {MANIFEST_LIMIT} bytes: not a manifest"),
            ));
        }
        let digest = Digest::of(&body);
        // A tag may move; a digest may not. What the user pinned must be what came.
        if let Some(e) = expected
            && *e != digest
        {
            return Err(self.transfer_error(
                &what,
                format!("digest mismatch: asked for {e}, the content is {digest}"),
            ));
        }
        let media_type = manifest_media_type(content_type.as_deref(), &body)
            .ok_or_else(|| self.transfer_error(&what, "the answer says not what it is"))?;
        if is_index(&media_type)
            && let Ok(index) = serde_json::from_slice::<Index>(&body)
        {
            let mut known = self.manifest_digests.lock().unwrap();
            known.extend(index.manifests.iter().map(|d| d.digest.clone()));
        }
        let desc = Descriptor {
            media_type,
            digest: digest.clone(),
            size: body.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        self.manifests.lock().unwrap().insert(digest, body.clone());
        Ok((desc, body))
    }

    fn transfer_error(&self, what: &str, reason: impl ToString) -> RegistryError {
        RegistryError::Transfer {
            host: self.client.host().to_string(),
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }
}

impl ImageSource for RegistrySource {
    fn describe(&self) -> String {
        format!("registry image {}", self.reference)
    }

    fn index(&self) -> Result<Index, ImageError> {
        Ok(Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: vec![self.top.clone()],
            annotations: Default::default(),
        })
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        if let Some(body) = self.manifests.lock().unwrap().get(digest) {
            return Ok(Box::new(Cursor::new(body.clone())));
        }
        if self.manifest_digests.lock().unwrap().contains(digest) {
            let (_, body) = self.fetch_manifest(&digest.to_string(), Some(digest))?;
            return Ok(Box::new(Cursor::new(body)));
        }
        let what = format!("blob {digest}");
        let response = self.client.get(&format!("blobs/{digest}"), None)?;
        match response.status().as_u16() {
            200 => Ok(Box::new(ResumingReader {
                client: &self.client,
                path: format!("blobs/{digest}"),
                expected: content_length(&response),
                body: Box::new(response.into_body().into_reader()),
                offset: 0,
                resumes: 0,
            })),
            404 => Err(ImageError::MissingBlob {
                what,
                source_name: self.describe(),
            }),
            _ => Err(self.client.status_error(response, &what).into()),
        }
    }
}

/// How often one blob's download may be resumed after its connection dropped.
const MAX_RESUMES: u32 = 5;

/// A blob download that, when the connection drops, asks again from where it broke
/// off (a Range request) instead of starting over. What it yields is verified by
/// import against the digest all the same.
struct ResumingReader<'a> {
    client: &'a Client,
    path: String,
    /// The whole blob's length, when the registry said: a stream that ends before
    /// it was cut, not finished.
    expected: Option<u64>,
    body: Box<dyn Read + Send + 'a>,
    offset: u64,
    resumes: u32,
}

impl ResumingReader<'_> {
    fn resume(&mut self, cause: io::Error) -> io::Result<()> {
        if self.resumes >= MAX_RESUMES {
            return Err(cause);
        }
        self.resumes += 1;
        std::thread::sleep(std::time::Duration::from_millis(
            200 * u64::from(self.resumes),
        ));
        let response = self
            .client
            .get_from(&self.path, self.offset)
            .map_err(|e| io::Error::other(e.to_string()))?;
        match response.status().as_u16() {
            206 => self.body = Box::new(response.into_body().into_reader()),
            // The registry ignored the range: skip what we have already.
            200 => {
                let mut body = response.into_body().into_reader();
                io::copy(&mut (&mut body).take(self.offset), &mut io::sink())?;
                self.body = Box::new(body);
            }
            status => {
                return Err(io::Error::other(format!(
                    "{cause}; resuming got HTTP {status}"
                )));
            }
        }
        Ok(())
    }
}

impl Read for ResumingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.body.read(buf) {
                Ok(0) if self.expected.is_some_and(|len| self.offset < len) => {
                    self.resume(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed mid-blob",
                    ))?
                }
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => self.resume(e)?,
            }
        }
    }
}

fn content_length<B>(response: &ureq::http::Response<B>) -> Option<u64> {
    response
        .headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_index(mt: &str) -> bool {
    mt == media_type::OCI_INDEX || mt == media_type::DOCKER_MANIFEST_LIST
}

/// Stands in for the top descriptor until the first fetch fills it.
fn placeholder() -> Descriptor {
    Descriptor {
        media_type: String::new(),
        digest: Digest::of(b""),
        size: 0,
        annotations: Default::default(),
        platform: None,
    }
}
