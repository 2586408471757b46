//! Importing an image from any `ImageSource` into the store.
//!
//! 1. Resolve and verify the manifest and config (nothing is written yet).
//! 2. In a private staging area under `tmp/`: copy in the blobs the store lacks and
//!    unpack the layers it lacks, each verified (blob digest, size, diff_id) as it
//!    streams. Layers unpack in parallel, one per core.
//! 3. `syncfs`, then under the store lock: rename the staged blobs and layers into
//!    place and add the image record. Until that record is written nothing of the
//!    import is listed; any failure before it leaves the store as it was.
//!
//! Two imports sharing a layer: each takes that layer's lock (in diff_id order, so two
//! imports cannot deadlock) before deciding to unpack it, so it is unpacked once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::fsutil::{fsync_dir, rename_noreplace};
use super::images::{ImageRecord, LayerRecord};
use super::layer_index;
use super::lock::FileLock;
use super::staging::Staging;
use super::unpack::Unpacker;
use super::{Store, StoreError};
use crate::image::layer::{ReadLayerError, read_layer};
use crate::image::reference::ImageName;
use crate::image::resolve::{ResolvedImage, resolve};
use crate::image::source::ImageSource;
use crate::image::spec::{Compression, Descriptor, Platform};
use crate::image::writer::copy_blob_to;
use crate::image::{Digest, ImageError};

/// What the caller sees of a long import. All methods have empty defaults.
pub trait Progress: Sync {
    fn layer_started(&self, _digest: &Digest, _size: u64) {}
    fn layer_advanced(&self, _digest: &Digest, _bytes: u64) {}
    fn layer_finished(&self, _digest: &Digest) {}
}

/// No progress reporting.
pub struct Quiet;
impl Progress for Quiet {}

pub struct ImportRequest<'a> {
    /// Which image of the source (an OCI layout's ref name).
    pub source_ref: Option<&'a str>,
    /// The name to give it; else the names the source gives (docker-archive's
    /// RepoTags); else the source's ref name when it is a full reference.
    pub name: Option<ImageName>,
    pub source_names: &'a [String],
    /// Whose image to take from a multi-platform index; the host's by default.
    pub platform: Option<Platform>,
    pub progress: &'a dyn Progress,
}

#[derive(Debug, Clone)]
pub struct ImportOutcome {
    pub id: Digest,
    pub names: Vec<String>,
    pub layers_unpacked: usize,
    pub layers_reused: usize,
}

pub fn import(
    store: &Store,
    source: &dyn ImageSource,
    request: &ImportRequest<'_>,
) -> Result<ImportOutcome, StoreError> {
    let platform = request.platform.clone().unwrap_or_else(Platform::host);
    let image = resolve(source, request.source_ref, &platform)?;
    let names = choose_names(&image, request);
    let staging = Staging::new(&store.tmp_dir(), "import")?;
    let staged_blobs = staging.path().join("blobs");
    let staged_layers = staging.path().join("layers");
    super::fsutil::create_dir_private(&staged_blobs)?;
    super::fsutil::create_dir_private(&staged_layers)?;

    stage_document(
        store,
        &staged_blobs,
        &image.manifest_digest,
        &image.manifest_bytes,
    )?;
    stage_document(
        store,
        &staged_blobs,
        image.config_digest(),
        &image.config_bytes,
    )?;

    // Layers the store already has must not be collected before the record that
    // references them is written.
    let _in_use = store.hold_layers(&image.config.rootfs.diff_ids)?;
    let _layer_locks = lock_missing_layers(store, &image)?;
    let work: Vec<LayerJob<'_>> = image
        .layers()
        .filter(|(_, diff_id, _)| !store.has_layer(diff_id))
        .map(|(desc, diff_id, compression)| LayerJob {
            desc,
            diff_id,
            compression,
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Vec::new(), |mut unique, job| {
            if !unique
                .iter()
                .any(|j: &LayerJob<'_>| j.diff_id == job.diff_id)
            {
                unique.push(job);
            }
            unique
        });
    let sizes = unpack_all(
        store,
        source,
        &work,
        &staged_blobs,
        &staged_layers,
        request.progress,
    )?;

    // A layer the store has (from another image, maybe compressed otherwise) still
    // gets this image's blob, so that `save` gives the image back byte for byte.
    for (desc, _, _) in image.layers() {
        if !store.has_blob(&desc.digest) && !staged_blobs.join(desc.digest.hex()).exists() {
            stage_blob(source, desc, &staged_blobs)?;
        }
    }

    // One flush for everything staged: cheaper than an fsync per file, and the
    // renames below must not reach the disk before the data they publish.
    sync_filesystem(staging.path())?;

    let record = image_record(store, &image, &names, &sizes)?;
    let _store_lock = store.lock_for_change()?;
    publish(&staged_blobs, &store.blob_dir())?;
    publish(&staged_layers, &store.layers_dir())?;
    // What was in the store when we looked may have been collected since (a gc
    // between our checks and this lock): never list an image with a hole in it.
    ensure_complete(store, &record)?;
    store.images().update(|db| db.add(record.clone()))?;
    Ok(ImportOutcome {
        id: record.id,
        names: record.names,
        layers_unpacked: work.len(),
        layers_reused: image.manifest.layers.len() - work.len(),
    })
}

struct LayerJob<'a> {
    desc: &'a Descriptor,
    diff_id: &'a Digest,
    compression: Compression,
}

fn choose_names(image: &ResolvedImage, request: &ImportRequest<'_>) -> Vec<String> {
    if let Some(name) = &request.name {
        return vec![name.to_string()];
    }
    let given: Vec<String> = request
        .source_names
        .iter()
        .filter_map(|n| n.parse::<ImageName>().ok())
        .map(|n| n.to_string())
        .collect();
    if !given.is_empty() {
        return given;
    }
    // A ref name like "latest" or "v1" is a tag, not a name: only a full reference
    // ("app:v1", "example.com/app") names the image.
    image
        .ref_name
        .as_deref()
        .filter(|r| r.contains(':') || r.contains('/'))
        .and_then(|r| r.parse::<ImageName>().ok())
        .map(|n| vec![n.to_string()])
        .unwrap_or_default()
}

fn stage_document(
    store: &Store,
    staged_blobs: &Path,
    digest: &Digest,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let path = staged_blobs.join(digest.hex());
    std::fs::write(&path, bytes).map_err(|e| StoreError::io("write", &path, e))
}

/// Checks that every blob and layer `record` names is in the store.
fn ensure_complete(store: &Store, record: &ImageRecord) -> Result<(), StoreError> {
    let blobs = [&record.manifest_digest, &record.id]
        .into_iter()
        .chain(record.layers.iter().map(|l| &l.digest));
    if let Some(missing) = blobs.into_iter().find(|d| !store.has_blob(d)) {
        return Err(StoreError::MissingBlob(missing.clone()));
    }
    match record.layers.iter().find(|l| !store.has_layer(&l.diff_id)) {
        Some(l) => Err(StoreError::MissingLayer(l.diff_id.clone())),
        None => Ok(()),
    }
}

/// Copies one blob from the source into staging, checking its size and digest.
fn stage_blob(
    source: &dyn ImageSource,
    desc: &Descriptor,
    staged_blobs: &Path,
) -> Result<(), StoreError> {
    let path = staged_blobs.join(desc.digest.hex());
    let mut file = File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
    let dest = path.display().to_string();
    copy_blob_to(&mut file, &dest, source, &desc.digest, desc.size).map_err(|e| match e {
        // A failed write is the store's problem (a full disk, say), not the image's.
        ImageError::Write { source, .. } => StoreError::io("write", &path, source),
        e => e.into(),
    })
}

/// Locks every layer this image needs that the store lacks, in diff_id order.
fn lock_missing_layers(store: &Store, image: &ResolvedImage) -> Result<Vec<FileLock>, StoreError> {
    let mut missing: Vec<&Digest> = image
        .config
        .rootfs
        .diff_ids
        .iter()
        .filter(|d| !store.has_layer(d))
        .collect();
    missing.sort();
    missing.dedup();
    missing
        .into_iter()
        .map(|d| {
            let path = store.layer_unpack_lock_path(d);
            FileLock::exclusive(&path).map_err(|e| StoreError::io("lock", &path, e))
        })
        .collect()
}

/// Why a layer job ended early: its own failure, or another job's.
enum JobError {
    Failed(StoreError),
    Cancelled,
}

impl<E: Into<StoreError>> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError::Failed(e.into())
    }
}

/// Unpacks the layers, one worker per core. Returns each diff_id's uncompressed size.
fn unpack_all(
    store: &Store,
    source: &dyn ImageSource,
    work: &[LayerJob<'_>],
    staged_blobs: &Path,
    staged_layers: &Path,
    progress: &dyn Progress,
) -> Result<BTreeMap<Digest, u64>, StoreError> {
    let next = AtomicUsize::new(0);
    let cancelled = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(work.len())
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !cancelled.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = work.get(i) else { break };
                    let result = unpack_one(
                        store,
                        source,
                        job,
                        staged_blobs,
                        staged_layers,
                        progress,
                        &cancelled,
                    );
                    if result.is_err() {
                        cancelled.store(true, Ordering::Relaxed);
                    }
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    // Report the lowest failed layer's own error; the layers it cancelled say nothing.
    results.sort_by_key(|(i, _)| *i);
    let mut sizes = BTreeMap::new();
    for (i, result) in results {
        match result {
            Ok(size) => {
                sizes.insert(work[i].diff_id.clone(), size);
            }
            Err(JobError::Failed(e)) => return Err(e),
            Err(JobError::Cancelled) => {}
        }
    }
    if sizes.len() < work.len() {
        unreachable!("a layer was cancelled but no layer failed");
    }
    Ok(sizes)
}

fn unpack_one(
    store: &Store,
    source: &dyn ImageSource,
    job: &LayerJob<'_>,
    staged_blobs: &Path,
    staged_layers: &Path,
    progress: &dyn Progress,
    cancelled: &AtomicBool,
) -> Result<u64, JobError> {
    let digest = &job.desc.digest;
    let layer_dir = staged_layers.join(job.diff_id.hex());
    let tree = layer_dir.join("tree");
    super::fsutil::create_dir_private(&tree)?;
    // The blob is read from the store when it has it, else from the source and
    // copied into staging on the way through.
    let (blob, blob_copy): (Box<dyn Read + Send + '_>, Option<PathBuf>) = if store.has_blob(digest)
    {
        let path = store.blob_path(digest);
        (
            Box::new(File::open(&path).map_err(|e| StoreError::io("open", &path, e))?),
            None,
        )
    } else {
        (
            source.open_blob(digest)?,
            Some(staged_blobs.join(digest.hex())),
        )
    };
    let copy_file = match &blob_copy {
        Some(path) => Some(File::create(path).map_err(|e| StoreError::io("create", path, e))?),
        None => None,
    };
    let mut reader = BlobReader {
        inner: blob,
        copy: copy_file,
        write_error: None,
        digest,
        progress,
    };
    progress.layer_started(digest, job.desc.size);
    let mut unpacker = Unpacker::new(job.diff_id, &tree)?;
    let summary = read_layer(
        &mut reader,
        job.desc,
        job.diff_id,
        job.compression,
        |entry, data| {
            if cancelled.load(Ordering::Relaxed) {
                return Err(JobError::Cancelled);
            }
            unpacker.apply(entry, data).map_err(JobError::from)
        },
    );
    // A failed write to the staged copy surfaces as a read error of the layer;
    // report it as what it is.
    if let (Some(e), Some(path)) = (reader.write_error.take(), &blob_copy) {
        return Err(JobError::Failed(StoreError::io("write", path, e)));
    }
    let summary = summary.map_err(|e| match e {
        ReadLayerError::Image(e) => JobError::Failed(StoreError::Image(e)),
        ReadLayerError::Visit(e) => e,
    })?;
    let index = layer_index::encode(&unpacker.into_entries())?;
    let index_path = layer_dir.join("index");
    std::fs::write(&index_path, index)
        .map_err(|e| JobError::Failed(StoreError::io("write", &index_path, e)))?;
    progress.layer_finished(digest);
    Ok(summary.uncompressed_size)
}

/// Reads a blob, copying it to the staging area and counting progress on the way.
struct BlobReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    copy: Option<File>,
    write_error: Option<io::Error>,
    digest: &'a Digest,
    progress: &'a dyn Progress,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = &mut self.copy
            && let Err(e) = copy.write_all(&buf[..n])
        {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(
                kind,
                "writing the staged copy of the blob failed",
            ));
        }
        self.progress.layer_advanced(self.digest, n as u64);
        Ok(n)
    }
}

fn sync_filesystem(path: &Path) -> Result<(), StoreError> {
    let dir = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    nix::unistd::syncfs(&dir).map_err(|e| StoreError::io("sync", path, e.into()))
}

/// Moves every staged entry of `from` into `to`, keeping what `to` already has.
fn publish(from: &Path, to: &Path) -> Result<(), StoreError> {
    let listing = std::fs::read_dir(from).map_err(|e| StoreError::io("list", from, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| StoreError::io("list", from, e))?;
        rename_noreplace(&entry.path(), &to.join(entry.file_name()))?;
    }
    fsync_dir(to)
}

fn image_record(
    store: &Store,
    image: &ResolvedImage,
    names: &[String],
    fresh_sizes: &BTreeMap<Digest, u64>,
) -> Result<ImageRecord, StoreError> {
    let known = store.images().load()?;
    let known_size = |diff_id: &Digest| {
        known
            .images
            .iter()
            .flat_map(|i| &i.layers)
            .find(|l| &l.diff_id == diff_id)
            .map(|l| l.uncompressed_size)
    };
    let layers = image
        .layers()
        .map(|(desc, diff_id, _)| LayerRecord {
            diff_id: diff_id.clone(),
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            uncompressed_size: fresh_sizes
                .get(diff_id)
                .copied()
                .or_else(|| known_size(diff_id))
                .unwrap_or(0),
        })
        .collect();
    let imported = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(ImageRecord {
        id: image.config_digest().clone(),
        manifest_digest: image.manifest_digest.clone(),
        manifest_media_type: image.manifest_media_type.clone(),
        layers,
        names: names.to_vec(),
        created: image.config.created.clone(),
        imported,
    })
}
