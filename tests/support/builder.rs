//! Test images: tar layers written header by header (so that hostile entries, which a
//! careful tar library refuses to write, can be written too), gzip, and OCI image
//! layouts whose digests are computed here, with knobs that break them.
//!
//! Every entry the builder writes is also a value the tests keep, so that an imported
//! layer's index can be checked against what the tar said.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

pub const DEFAULT_MTIME: i64 = 1_700_000_000;
pub const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, in hex. Large inputs go to coreutils' sha256sum: the sha2 crate
/// in a debug build hashes at about 35 MB/s.
pub fn sha256_hex(bytes: &[u8]) -> String {
    if bytes.len() > (4 << 20)
        && let Some(h) = sha256sum(bytes)
    {
        return h;
    }
    hex(&sha2::Sha256::digest(bytes))
}

fn sha256sum(bytes: &[u8]) -> Option<String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(bytes));
        let out = child.wait_with_output();
        let _ = writer.join();
        out
    })
    .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let h = text.split_whitespace().next()?.to_string();
    (out.status.success() && h.len() == 64).then_some(h)
}

/// A fast, seeded, incompressible byte stream (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_random(&mut seed.max(1), &mut out);
    out
}

pub fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

// ---------------------------------------------------------------------------------
// Tar entries

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

impl Kind {
    fn typeflag(&self) -> u8 {
        match self {
            Kind::File(_) => b'0',
            Kind::Hardlink(_) => b'1',
            Kind::Symlink(_) => b'2',
            Kind::Char(..) => b'3',
            Kind::Block(..) => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One tar entry, as the builder writes it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name exactly as written (a PAX `path` record carries it when it does not
    /// fit the header, or when `pax_path` is set).
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Sub-second mtime, written as a PAX `mtime` record.
    pub mtime_nsec: Option<u32>,
    /// SCHILY.xattr.NAME records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Always carry the name in a PAX record.
    pub pax_path: bool,
    /// The size the header claims, when it should differ from the data written.
    pub claimed_size: Option<u64>,
}

impl Entry {
    fn new(path: impl AsRef<[u8]>, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            mtime_nsec: None,
            xattrs: Vec::new(),
            pax_path: false,
            claimed_size: None,
        }
    }
    pub fn file(path: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, Kind::File(data.as_ref().to_vec()), 0o644)
    }
    pub fn dir(path: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, Kind::Dir, 0o755)
    }
    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, Kind::Symlink(target.as_ref().to_vec()), 0o777)
    }
    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, Kind::Hardlink(target.as_ref().to_vec()), 0o644)
    }
    pub fn char_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(path, Kind::Char(major, minor), 0o666)
    }
    pub fn block_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(path, Kind::Block(major, minor), 0o660)
    }
    pub fn fifo(path: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, Kind::Fifo, 0o644)
    }
    /// `DIR/.wh.NAME` for `path` = "DIR/NAME".
    pub fn whiteout(path: &str) -> Entry {
        let (dir, name) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("", path),
        };
        Entry::new(format!("{dir}.wh.{name}"), Kind::File(Vec::new()), 0o644)
    }
    /// `DIR/.wh..wh..opq`.
    pub fn opaque(dir: &str) -> Entry {
        let dir = dir.trim_end_matches('/');
        let name = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        Entry::new(name, Kind::File(Vec::new()), 0o644)
    }
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, secs: i64) -> Entry {
        self.mtime = secs;
        self
    }
    pub fn mtime_nsec(mut self, nsec: u32) -> Entry {
        self.mtime_nsec = Some(nsec);
        self
    }
    pub fn xattr(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Entry {
        self.xattrs
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }
    pub fn pax_path(mut self) -> Entry {
        self.pax_path = true;
        self
    }
    pub fn claim_size(mut self, size: u64) -> Entry {
        self.claimed_size = Some(size);
        self
    }

    pub fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(d) => d,
            _ => &[],
        }
    }

    fn link(&self) -> &[u8] {
        match &self.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => t,
            _ => &[],
        }
    }
}

/// One `LEN KEY=VALUE\n` PAX record; LEN counts the whole record, its own digits too.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    assert_eq!(rec.len(), len);
    rec
}

fn put_octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    assert!(
        s.len() <= width,
        "{value} does not fit a {width}-digit tar field"
    );
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A ustar header block. `name` and `link` are cut to their fields' 100 bytes.
#[allow(clippy::too_many_arguments)]
pub fn ustar_header(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    link: &[u8],
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    put_bytes(&mut h[0..100], name);
    put_octal(&mut h[100..108], mode as u64);
    put_octal(&mut h[108..116], uid as u64);
    put_octal(&mut h[116..124], gid as u64);
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], mtime.max(0) as u64);
    h[156] = typeflag;
    put_bytes(&mut h[157..257], link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_octal(&mut h[329..337], dev.0 as u64);
    put_octal(&mut h[337..345], dev.1 as u64);
    set_checksum(&mut h);
    h
}

pub fn set_checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A PAX extended header ('x') with these records, ready to precede an entry.
pub fn pax_header(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    let mut out = ustar_header(
        b"PaxHeaders/entry",
        b'x',
        0o644,
        0,
        0,
        body.len() as u64,
        DEFAULT_MTIME,
        b"",
        (0, 0),
    )
    .to_vec();
    out.extend_from_slice(&body);
    pad(&mut out);
    out
}

/// Appends one entry (with its PAX header when it needs one) to `out`.
pub fn append_entry(out: &mut Vec<u8>, e: &Entry) {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let name_in_pax = e.pax_path || e.path.len() > 100;
    if name_in_pax {
        records.push((b"path".to_vec(), e.path.clone()));
    }
    let link = e.link();
    if link.len() > 100 {
        records.push((b"linkpath".to_vec(), link.to_vec()));
    }
    if let Some(ns) = e.mtime_nsec {
        records.push((
            b"mtime".to_vec(),
            format!("{}.{ns:09}", e.mtime).into_bytes(),
        ));
    }
    for (k, v) in &e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        records.push((key, v.clone()));
    }
    if !records.is_empty() {
        out.extend_from_slice(&pax_header(&records));
    }
    let header_name: &[u8] = if name_in_pax {
        b"pax-named-entry"
    } else {
        &e.path
    };
    let dev = match e.kind {
        Kind::Char(a, b) | Kind::Block(a, b) => (a, b),
        _ => (0, 0),
    };
    let data = e.data();
    let size = e.claimed_size.unwrap_or(data.len() as u64);
    out.extend_from_slice(&ustar_header(
        header_name,
        e.kind.typeflag(),
        e.mode,
        e.uid,
        e.gid,
        size,
        e.mtime,
        link,
        dev,
    ));
    out.extend_from_slice(data);
    if e.claimed_size.is_none() {
        pad(out);
    }
}

/// A whole tar: the entries, then the two zero blocks that end an archive.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        append_entry(&mut out, e);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The entries' bytes only, with no end-of-archive blocks (for truncated tars).
pub fn tar_unterminated(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        append_entry(&mut out, e);
    }
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

// ---------------------------------------------------------------------------------
// OCI image layouts

/// A layer blob and its descriptor. The descriptor's fields are public so a test can
/// make them lie.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub media_type: String,
    pub blob: Vec<u8>,
    /// "sha256:..." for the config's rootfs.diff_ids.
    pub diff_id: String,
    /// "sha256:..." for the manifest's descriptor.
    pub digest: String,
    pub size: u64,
    /// False: the blob is left out of blobs/ (a missing blob).
    pub present: bool,
    /// What the test built it from, if entries.
    pub entries: Vec<Entry>,
}

impl LayerBlob {
    /// A blob with honest digests: `tar_bytes` is the uncompressed tar.
    pub fn from_tar(tar_bytes: Vec<u8>, gzipped: bool) -> LayerBlob {
        let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
        if !gzipped {
            return LayerBlob {
                media_type: MT_TAR.to_string(),
                digest: diff_id.clone(),
                size: tar_bytes.len() as u64,
                blob: tar_bytes,
                diff_id,
                present: true,
                entries: Vec::new(),
            };
        }
        LayerBlob::raw(gzip(&tar_bytes), MT_TAR_GZIP, diff_id)
    }

    pub fn gz(entries: Vec<Entry>) -> LayerBlob {
        let mut l = LayerBlob::from_tar(tar(&entries), true);
        l.entries = entries;
        l
    }

    pub fn plain(entries: Vec<Entry>) -> LayerBlob {
        let mut l = LayerBlob::from_tar(tar(&entries), false);
        l.entries = entries;
        l
    }

    /// A blob taken as is: the descriptor matches it, the diff_id is the caller's.
    pub fn raw(blob: Vec<u8>, media_type: &str, diff_id: String) -> LayerBlob {
        LayerBlob {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", sha256_hex(&blob)),
            size: blob.len() as u64,
            blob,
            diff_id,
            present: true,
            entries: Vec::new(),
        }
    }

    pub fn diff_id_hex(&self) -> &str {
        self.diff_id.trim_start_matches("sha256:")
    }

    pub fn digest_hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    /// Replaces the blob's bytes and makes the descriptor match them again.
    pub fn set_blob_fix_descriptor(&mut self, blob: Vec<u8>) {
        self.digest = format!("sha256:{}", sha256_hex(&blob));
        self.size = blob.len() as u64;
        self.blob = blob;
    }
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An image to write as an OCI layout (one manifest in index.json).
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub layers: Vec<LayerBlob>,
    /// index.json's org.opencontainers.image.ref.name.
    pub ref_name: Option<String>,
    pub created: Option<String>,
    /// Written as the manifest blob instead of the real manifest (the index's
    /// descriptor is made to match these bytes).
    pub manifest_override: Option<Vec<u8>>,
    /// Leave the config blob out.
    pub omit_config: bool,
    /// The config's `config` object (Env, Cmd, Entrypoint, ...), when not the
    /// default `{"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]}`.
    pub run_config: Option<serde_json::Value>,
}

/// What was written, with the digests a test checks against.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    pub manifest_hex: String,
    pub manifest_size: u64,
    /// The config digest: strata's image ID.
    pub config_hex: String,
    pub diff_ids: Vec<String>,
}

impl Written {
    /// The layout as an import source, `oci:DIR`.
    pub fn source(&self) -> String {
        format!("oci:{}", self.dir.display())
    }
    pub fn path(&self) -> String {
        self.dir.display().to_string()
    }
}

impl Image {
    pub fn new(layers: Vec<LayerBlob>) -> Image {
        Image {
            layers,
            created: Some("2024-01-02T03:04:05Z".into()),
            ..Image::default()
        }
    }

    pub fn with_ref(mut self, r: &str) -> Image {
        self.ref_name = Some(r.to_string());
        self
    }

    pub fn config_bytes(&self) -> Vec<u8> {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut config = serde_json::json!({
            "architecture": host_arch(),
            "os": "linux",
            "config": self.run_config.clone().unwrap_or_else(
                || serde_json::json!({ "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"] })
            ),
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": [],
        });
        if let Some(c) = &self.created {
            config["created"] = serde_json::json!(c);
        }
        serde_json::to_vec(&config).unwrap()
    }

    pub fn manifest_bytes(&self, config: &[u8]) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": l.media_type,
                    "digest": l.digest,
                    "size": l.size,
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": MT_CONFIG,
                "digest": format!("sha256:{}", sha256_hex(config)),
                "size": config.len(),
            },
            "layers": layers,
        }))
        .unwrap()
    }

    /// Writes the layout into `dir` (created; readable by everyone).
    pub fn write(&self, dir: &Path) -> Written {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        for l in &self.layers {
            if l.present {
                fs::write(blobs.join(l.digest_hex()), &l.blob).unwrap();
            }
        }
        let config = self.config_bytes();
        let config_hex = sha256_hex(&config);
        if !self.omit_config {
            fs::write(blobs.join(&config_hex), &config).unwrap();
        }
        let manifest = self
            .manifest_override
            .clone()
            .unwrap_or_else(|| self.manifest_bytes(&config));
        let manifest_hex = sha256_hex(&manifest);
        fs::write(blobs.join(&manifest_hex), &manifest).unwrap();
        let mut desc = serde_json::json!({
            "mediaType": MT_MANIFEST,
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest.len(),
        });
        if let Some(r) = &self.ref_name {
            desc["annotations"] = serde_json::json!({ REF_ANNOTATION: r });
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [desc],
        });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        super::harness::give_to_user(dir);
        Written {
            dir: dir.to_path_buf(),
            manifest_hex,
            manifest_size: manifest.len() as u64,
            config_hex,
            diff_ids: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------
// What an index should hold, computed from the entries

/// The index entry a tar entry should produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub path: Vec<u8>,
    pub kind: ExpectedKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub rdev: (u32, u32),
    pub link: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub opaque: bool,
    /// Names of one node share a node number (the index's group numbering is its own).
    pub node: usize,
    /// The file's content, for regular files.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedKind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Whiteout,
}

/// Strips '/' and '.' components (no '..' expected here).
pub fn normalise(path: &[u8]) -> Vec<u8> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect::<Vec<_>>()
        .join(&b'/')
}

/// Applies entries in order, as tar does (the later entry wins), and returns the
/// entries the tar listed (not the parent directories it implied), by path.
/// A directory that only an opaque marker names is an implied directory, not listed:
/// its opacity is returned separately.
pub fn expected_index(entries: &[Entry]) -> (BTreeMap<Vec<u8>, Expected>, Vec<Vec<u8>>) {
    let mut out: BTreeMap<Vec<u8>, Expected> = BTreeMap::new();
    let mut opaque_dirs = Vec::new();
    let mut next_node = 1;
    for e in entries {
        let path = normalise(&e.path);
        let (parent, base) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
            None => (Vec::new(), path.clone()),
        };
        let join = |name: &[u8]| {
            let mut p = parent.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            p
        };
        let mut x = Expected {
            path: path.clone(),
            kind: ExpectedKind::File,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            size: 0,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec.unwrap_or(0),
            rdev: (0, 0),
            link: Vec::new(),
            xattrs: e.xattrs.clone(),
            opaque: false,
            node: 0,
            data: Vec::new(),
        };
        if base == b".wh..wh..opq" {
            match out.get_mut(&parent) {
                Some(d) => d.opaque = true,
                None => opaque_dirs.push(parent.clone()),
            }
            continue;
        }
        if let Some(name) = base.strip_prefix(b".wh.") {
            x.path = join(name);
            x.kind = ExpectedKind::Whiteout;
            remove_below(&mut out, &x.path);
            out.insert(x.path.clone(), x);
            continue;
        }
        match &e.kind {
            Kind::File(d) => {
                x.size = d.len() as u64;
                x.data = d.clone();
            }
            Kind::Dir => {
                x.kind = ExpectedKind::Dir;
                // A directory keeps its opaque mark when listed again; one that
                // replaces a whiteout of the same layer hides what was below: opaque.
                if let Some(old) = out.get(&path) {
                    x.opaque = match old.kind {
                        ExpectedKind::Dir => old.opaque,
                        ExpectedKind::Whiteout => true,
                        _ => false,
                    };
                }
                if opaque_dirs.contains(&path) {
                    x.opaque = true;
                }
            }
            Kind::Symlink(t) => {
                x.kind = ExpectedKind::Symlink;
                x.size = t.len() as u64;
                x.link = t.clone();
            }
            Kind::Char(a, b) => {
                x.kind = ExpectedKind::Char;
                x.rdev = (*a, *b);
            }
            Kind::Block(a, b) => {
                x.kind = ExpectedKind::Block;
                x.rdev = (*a, *b);
            }
            Kind::Fifo => x.kind = ExpectedKind::Fifo,
            Kind::Hardlink(t) => {
                let target = normalise(t);
                let t = out.get_mut(&target).expect("hardlink to an earlier entry");
                if t.node == 0 {
                    t.node = next_node;
                    next_node += 1;
                }
                let mut copy = t.clone();
                copy.path = path.clone();
                out.insert(path, copy);
                continue;
            }
        }
        if x.kind != ExpectedKind::Dir {
            remove_below(&mut out, &path);
        }
        out.insert(path, x);
    }
    (out, opaque_dirs)
}

fn remove_below(map: &mut BTreeMap<Vec<u8>, Expected>, path: &[u8]) {
    let mut prefix = path.to_vec();
    prefix.push(b'/');
    map.retain(|k, _| !k.starts_with(&prefix));
}
