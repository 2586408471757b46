//! Reading one layer blob: decompress, walk the tar, and hand each entry on in a
//! sanitised form, while the compressed and uncompressed digests are computed in the
//! same pass and checked at the end against the descriptor and the config's diff_id.
//!
//! Sanitising means: names are made relative (a leading `/` is dropped, as tar does),
//! `.` components vanish, and `..` or a NUL byte refuse the whole layer. Whiteout files
//! (`.wh.NAME`, `.wh..wh..opq`) become whiteout and opaque entries, never files. The
//! consumer still decides what the entry may do to the tree it builds (hardlink
//! targets, entries under symlinks): only it knows what the layer has had so far.

use std::io::{self, Read};

use super::digest::{HashingReader, verify};
use super::spec::{Compression, Descriptor};
use super::{Digest, ImageError};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs kept its own bookkeeping under `.wh..wh.`; it means nothing to a union.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// The kind of a node. The numbers are stored in layer indexes: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    CharDevice = 4,
    BlockDevice = 5,
    Fifo = 6,
    /// A name deleted from the layers below.
    Whiteout = 7,
}

impl EntryKind {
    pub fn from_u8(v: u8) -> Option<EntryKind> {
        use EntryKind::*;
        [File, Dir, Symlink, CharDevice, BlockDevice, Fifo, Whiteout]
            .into_iter()
            .find(|k| *k as u8 == v)
    }

    /// The S_IFMT bits of this kind (a whiteout shows as the char 0/0 overlayfs uses).
    pub fn file_type_bits(self) -> u32 {
        match self {
            EntryKind::File => libc::S_IFREG,
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::Symlink => libc::S_IFLNK,
            EntryKind::CharDevice | EntryKind::Whiteout => libc::S_IFCHR,
            EntryKind::BlockDevice => libc::S_IFBLK,
            EntryKind::Fifo => libc::S_IFIFO,
        }
    }
}

/// What a tar entry asks of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOp {
    /// A new node of this kind at `path`.
    Create(EntryKind),
    /// Another name for the node at this (sanitised) path, which the layer must have had.
    Hardlink(Vec<u8>),
    /// `path` is deleted from the layers below.
    Whiteout,
    /// The directory at `path` hides everything the layers below have in it.
    Opaque,
}

/// The metadata a tar header (and its PAX records) gives an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits, setuid/setgid/sticky included (0o7777 at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// One sanitised tar entry.
#[derive(Debug, Clone)]
pub struct LayerEntry {
    /// Relative path, components joined by `/`, no `.` or `..`; empty for the root.
    pub path: Vec<u8>,
    pub op: EntryOp,
    pub meta: Metadata,
    /// A symlink's target, byte for byte (never interpreted here).
    pub symlink_target: Vec<u8>,
    /// PAX `SCHILY.xattr.*` records, in the order the tar gave them.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Digests and sizes of a layer that was read to its end and verified.
#[derive(Debug, Clone)]
pub struct LayerSummary {
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub entries: u64,
}

/// Errors from reading a layer, or from the consumer's visit of an entry.
#[derive(Debug)]
pub enum ReadLayerError<E> {
    Image(ImageError),
    Visit(E),
}

impl<E> From<ImageError> for ReadLayerError<E> {
    fn from(e: ImageError) -> Self {
        ReadLayerError::Image(e)
    }
}

/// Reads the layer blob `blob` described by `desc`, calls `visit` for every entry with
/// a reader over its data, and verifies the blob's digest and size and the diff_id.
/// On any error the consumer must discard what it built: nothing here is trusted
/// until this returns Ok.
pub fn read_layer<R: Read, E>(
    blob: R,
    desc: &Descriptor,
    diff_id: &Digest,
    compression: Compression,
    mut visit: impl FnMut(&LayerEntry, &mut dyn Read) -> Result<(), E>,
) -> Result<LayerSummary, ReadLayerError<E>> {
    let layer = &desc.digest;
    let corrupt = |source: io::Error| ImageError::CorruptLayer {
        layer: layer.clone(),
        source,
    };
    let mut compressed = HashingReader::new(blob);
    let walked = {
        let decoder = compression.decoder(&mut compressed).map_err(corrupt)?;
        let mut uncompressed = HashingReader::new(decoder);
        let walked = walk_tar(&mut uncompressed, layer, &mut visit);
        match walked {
            Ok(n) => uncompressed
                .finish()
                .map(|(d, size)| (n, d, size))
                .map_err(|e| corrupt(e).into()),
            Err(e) => Err(e),
        }
    };
    // A changed byte usually breaks the gzip stream first; when the blob's digest is
    // wrong, that is the error worth reporting, so read the rest and compare.
    let (compressed_digest, compressed_size) = compressed.finish().map_err(|e| {
        ReadLayerError::Image(ImageError::Read {
            what: format!("layer {layer}"),
            source: e,
        })
    })?;
    verify(
        &format!("layer {layer}"),
        layer,
        desc.size,
        &compressed_digest,
        compressed_size,
    )?;
    let (entries, actual_diff_id, uncompressed_size) = walked?;
    if &actual_diff_id != diff_id {
        return Err(ImageError::DiffIdMismatch {
            layer: layer.clone(),
            expected: diff_id.clone(),
            actual: actual_diff_id,
        }
        .into());
    }
    Ok(LayerSummary {
        compressed_size,
        uncompressed_size,
        entries,
    })
}

fn walk_tar<R: Read, E>(
    reader: R,
    layer: &Digest,
    visit: &mut impl FnMut(&LayerEntry, &mut dyn Read) -> Result<(), E>,
) -> Result<u64, ReadLayerError<E>> {
    let corrupt = |source: io::Error| ImageError::CorruptLayer {
        layer: layer.clone(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let mut count = 0;
    // Raw entries: the extension headers (PAX, GNU long names) are parsed here, by
    // their length prefixes, because the tar crate splits PAX records at newlines
    // and so refuses (or worse, misreads) binary xattr values that contain one.
    let mut pending = Extensions::default();
    for entry in archive.entries().map_err(corrupt)?.raw(true) {
        let mut entry = entry.map_err(corrupt)?;
        if pending.absorb(&mut entry).map_err(corrupt)? {
            continue;
        }
        let extensions = std::mem::take(&mut pending);
        let Some(sanitised) = sanitise(&mut entry, &extensions, layer)? else {
            io::copy(&mut entry, &mut io::sink()).map_err(corrupt)?;
            continue;
        };
        let mut counted = CountingReader {
            inner: &mut entry,
            count: 0,
        };
        visit(&sanitised, &mut counted).map_err(ReadLayerError::Visit)?;
        // Whatever the visitor left unread still has to be consumed, and a tar whose
        // data ends before its header's size is truncated, not short.
        io::copy(&mut counted, &mut io::sink()).map_err(corrupt)?;
        let has_data = matches!(sanitised.op, EntryOp::Create(EntryKind::File));
        if has_data && counted.count != sanitised.meta.size {
            return Err(corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "entry '{}' claims {} bytes but the tar ends after {}",
                    String::from_utf8_lossy(&sanitised.path),
                    sanitised.meta.size,
                    counted.count
                ),
            ))
            .into());
        }
        count += 1;
    }
    if !pending.is_empty() {
        return Err(corrupt(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the tar ends with extension headers that describe no entry",
        ))
        .into());
    }
    Ok(count)
}

/// What extension headers say about the entry that follows them.
#[derive(Debug, Default)]
struct Extensions {
    /// PAX records, in order (a later record for a key overrides an earlier one).
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

/// Extension headers are metadata, not files: a megabyte is far beyond any real one.
const EXTENSION_LIMIT: u64 = 1 << 20;

impl Extensions {
    fn is_empty(&self) -> bool {
        self.pax.is_empty() && self.long_name.is_none() && self.long_link.is_none()
    }

    /// Takes in `entry` if it is an extension header; says whether it was.
    fn absorb<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> io::Result<bool> {
        let kind = entry.header().entry_type();
        let is_extension = kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink();
        if !is_extension {
            return Ok(false);
        }
        if entry.size() > EXTENSION_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an extension header of more than 1 MiB",
            ));
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data)?;
        if data.len() as u64 != entry.size() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "an extension header is cut short",
            ));
        }
        if kind.is_pax_local_extensions() {
            self.pax.extend(parse_pax_records(&data)?);
        } else if kind.is_gnu_longname() {
            self.long_name = Some(trim_nuls(data));
        } else if kind.is_gnu_longlink() {
            self.long_link = Some(trim_nuls(data));
        }
        // Global PAX headers set defaults for the whole archive; none that matter to
        // a layer (image tools never write them), so they are read and dropped.
        Ok(true)
    }

    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

fn trim_nuls(mut name: Vec<u8>) -> Vec<u8> {
    while name.last() == Some(&0) {
        name.pop();
    }
    name
}

/// Parses PAX records, "LEN KEY=VALUE\n" each, LEN counting the whole record. The
/// value may hold any byte, newlines included.
fn parse_pax_records(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed PAX record: {why}"),
        )
    };
    let mut records = Vec::new();
    // Some writers pad the data with NULs.
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("the length is not a number"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("the length does not match the record"));
        }
        let record = &data[space + 1..len - 1];
        let equals = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no '='"))?;
        records.push((record[..equals].to_vec(), record[equals + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(records)
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    count: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Turns one tar entry into a `LayerEntry`, or None for entries that carry nothing
/// (global PAX headers, aufs metadata).
fn sanitise<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    extensions: &Extensions,
    layer: &Digest,
) -> Result<Option<LayerEntry>, ImageError> {
    let raw_path = match (extensions.pax_value(b"path"), &extensions.long_name) {
        (Some(p), _) => p.to_vec(),
        (None, Some(p)) => p.clone(),
        (None, None) => entry.header().path_bytes().into_owned(),
    };
    let hostile = |reason: &str| ImageError::HostileEntry {
        layer: layer.clone(),
        path: String::from_utf8_lossy(&raw_path).into_owned(),
        reason: reason.to_string(),
    };
    let corrupt = |source: io::Error| ImageError::CorruptLayer {
        layer: layer.clone(),
        source,
    };
    let header = entry.header();
    let entry_type = header.entry_type();
    if entry_type.is_pax_global_extensions() {
        return Ok(None);
    }
    let path = normalise(&raw_path).map_err(&hostile)?;
    let kind = match entry_type {
        tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
        tar::EntryType::GNUSparse => {
            return Err(hostile(
                "GNU sparse files are not supported; re-create the layer without --sparse",
            ));
        }
        tar::EntryType::Directory => EntryKind::Dir,
        tar::EntryType::Symlink => EntryKind::Symlink,
        tar::EntryType::Link => EntryKind::File, // replaced by EntryOp::Hardlink below
        tar::EntryType::Char => EntryKind::CharDevice,
        tar::EntryType::Block => EntryKind::BlockDevice,
        tar::EntryType::Fifo => EntryKind::Fifo,
        other => {
            return Err(hostile(&format!(
                "unsupported tar entry type {:?}",
                other.as_byte() as char
            )));
        }
    };
    let mut meta = Metadata {
        mode: header.mode().map_err(corrupt)? & 0o7777,
        uid: to_u32(header.uid().map_err(corrupt)?)
            .ok_or_else(|| hostile("uid does not fit 32 bits"))?,
        gid: to_u32(header.gid().map_err(corrupt)?)
            .ok_or_else(|| hostile("gid does not fit 32 bits"))?,
        size: entry.size(),
        mtime_sec: header.mtime().map_err(corrupt)? as i64,
        mtime_nsec: 0,
        rdev_major: 0,
        rdev_minor: 0,
    };
    if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
        meta.rdev_major = header.device_major().map_err(corrupt)?.unwrap_or(0);
        meta.rdev_minor = header.device_minor().map_err(corrupt)?.unwrap_or(0);
    }
    let link = match (extensions.pax_value(b"linkpath"), &extensions.long_link) {
        (Some(l), _) => l.to_vec(),
        (None, Some(l)) => l.clone(),
        (None, None) => entry
            .header()
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default(),
    };
    if link.contains(&0) {
        return Err(hostile("its link target contains a NUL byte"));
    }
    let mut xattrs = Vec::new();
    for (key, value) in &extensions.pax {
        apply_pax(key, value, &mut meta, &mut xattrs).map_err(&hostile)?;
    }
    let (path, op) = classify(path, kind, entry_type, &link).map_err(&hostile)?;
    let Some(op) = op else { return Ok(None) };
    let symlink_target = if kind == EntryKind::Symlink {
        link
    } else {
        Vec::new()
    };
    if !matches!(op, EntryOp::Create(EntryKind::File)) {
        meta.size = if kind == EntryKind::Symlink {
            symlink_target.len() as u64
        } else {
            0
        };
    }
    Ok(Some(LayerEntry {
        path,
        op,
        meta,
        symlink_target,
        xattrs,
    }))
}

/// Recognises whiteouts and hardlinks. Returns None for names to skip.
fn classify(
    path: Vec<u8>,
    kind: EntryKind,
    entry_type: tar::EntryType,
    link: &[u8],
) -> Result<(Vec<u8>, Option<EntryOp>), &'static str> {
    let (parent, base) = split_last(&path);
    if base == OPAQUE_MARKER {
        return Ok((parent.to_vec(), Some(EntryOp::Opaque)));
    }
    if base.starts_with(AUFS_META_PREFIX) {
        return Ok((path, None));
    }
    if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
        if name.is_empty() || name == b"." || name == b".." {
            return Err("a whiteout must name an entry");
        }
        let mut target = parent.to_vec();
        if !target.is_empty() {
            target.push(b'/');
        }
        target.extend_from_slice(name);
        return Ok((target, Some(EntryOp::Whiteout)));
    }
    if path.is_empty() && kind != EntryKind::Dir {
        return Err("the layer's root must be a directory");
    }
    if entry_type == tar::EntryType::Link {
        let target = normalise(link)?;
        if target.is_empty() {
            return Err("a hardlink to the layer's root");
        }
        return Ok((path, Some(EntryOp::Hardlink(target))));
    }
    Ok((path, Some(EntryOp::Create(kind))))
}

/// Applies one PAX record that matters to us: times, big ids, xattrs.
fn apply_pax(
    key: &[u8],
    value: &[u8],
    meta: &mut Metadata,
    xattrs: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), &'static str> {
    const XATTR: &[u8] = b"SCHILY.xattr.";
    if let Some(name) = key.strip_prefix(XATTR) {
        if name.is_empty() || name.contains(&0) {
            return Err("an xattr name is empty or contains NUL");
        }
        xattrs.retain(|(n, _)| n != name);
        xattrs.push((name.to_vec(), value.to_vec()));
        return Ok(());
    }
    let text = || std::str::from_utf8(value).map_err(|_| "a PAX record is not UTF-8");
    if key.starts_with(b"GNU.sparse.") {
        return Err("PAX sparse files are not supported; re-create the layer without --sparse");
    }
    match key {
        // The tar crate frames entries by the header's size; a PAX size that differs
        // (files of 8 GiB and more) would make it misread the rest of the layer.
        b"size" if text()?.parse::<u64>().ok() != Some(meta.size) => {
            return Err(
                "a PAX size record differs from the header's size (files of 8 GiB or more are not supported yet)",
            );
        }
        b"uid" => {
            meta.uid = text()?
                .parse()
                .map_err(|_| "PAX uid is not a 32-bit number")?
        }
        b"gid" => {
            meta.gid = text()?
                .parse()
                .map_err(|_| "PAX gid is not a 32-bit number")?
        }
        b"mtime" => {
            (meta.mtime_sec, meta.mtime_nsec) =
                parse_pax_time(text()?).ok_or("PAX mtime is not a time")?
        }
        _ => {}
    }
    Ok(())
}

/// PAX times are decimal seconds with an optional fraction: "1700000000.123456789".
fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nsec: u32 = digits.parse().ok()?;
    // "-1.5" means 1.5 s before the epoch: whole seconds down, fraction up.
    if secs < 0 || s.starts_with('-') {
        if nsec == 0 {
            return Some((secs, 0));
        }
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

fn to_u32(v: u64) -> Option<u32> {
    u32::try_from(v).ok()
}

/// Makes a tar name relative and canonical, or says why it is refused.
pub fn normalise(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.contains(&0) {
        return Err("its name contains a NUL byte");
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err("its name has a '..' component, which would escape the layer"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits "a/b/c" into ("a/b", "c"), and "c" into ("", "c").
pub fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_names() {
        assert_eq!(normalise(b"./usr//bin/").unwrap(), b"usr/bin");
        assert_eq!(normalise(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalise(b"./").unwrap(), b"");
        assert!(normalise(b"a/../../etc").is_err());
        assert!(normalise(b"a\0b").is_err());
    }

    #[test]
    fn classifies_whiteouts() {
        let f = EntryKind::File;
        let t = tar::EntryType::Regular;
        assert_eq!(
            classify(b"a/.wh.b".to_vec(), f, t, b"").unwrap(),
            (b"a/b".to_vec(), Some(EntryOp::Whiteout))
        );
        assert_eq!(
            classify(b"a/.wh..wh..opq".to_vec(), f, t, b"").unwrap(),
            (b"a".to_vec(), Some(EntryOp::Opaque))
        );
        assert_eq!(
            classify(b".wh..wh..opq".to_vec(), f, t, b"").unwrap(),
            (b"".to_vec(), Some(EntryOp::Opaque))
        );
        assert_eq!(
            classify(b"a/.wh..wh.plnk".to_vec(), f, t, b"").unwrap().1,
            None
        );
        assert!(classify(b"a/.wh.".to_vec(), f, t, b"").is_err());
        assert!(classify(b"l".to_vec(), f, tar::EntryType::Link, b"../x").is_err());
    }

    #[test]
    fn pax_records_may_hold_newlines() {
        let value = b"a\n\0b\n";
        let mut record = b"SCHILY.xattr.user.bin=".to_vec();
        record.extend_from_slice(value);
        record.push(b'\n');
        // The length counts itself: 2 digits + space + the rest.
        let data = [
            format!("{} ", record.len() + 3).into_bytes(),
            record,
            b"12 path=abc\n".to_vec(),
        ]
        .concat();
        let records = parse_pax_records(&data).unwrap();
        assert_eq!(
            records[0],
            (b"SCHILY.xattr.user.bin".to_vec(), value.to_vec())
        );
        assert_eq!(records[1], (b"path".to_vec(), b"abc".to_vec()));
        assert!(parse_pax_records(b"99 path=abc\n").is_err());
        assert!(parse_pax_records(b"x path=abc\n").is_err());
        assert_eq!(parse_pax_records(b"\0\0\0").unwrap(), vec![]);
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1700000000, 500_000_000))
        );
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
