//! The layer index: one layer's true metadata, as its tar said, in a compact binary
//! file (`layers/<diff_id>/index`) that loads in one read and is searched in place.
//!
//! The files in `tree/` are owned by whoever unpacked them and carry only the modes
//! that user could give them; the index is the truth the union filesystem serves.
//!
//! # Format, version 1 (all integers little-endian)
//!
//! ```text
//! header, 64 bytes:
//!    0  magic         8 bytes  "STRATAIX"
//!    8  version       u32      1
//!   12  record_size   u32      72
//!   16  entry_count   u64
//!   24  strings_len   u64      bytes in the string table
//!   32  reserved      20 bytes zero
//!   52  body_crc      u32      crc32 of everything after the header
//!   56  reserved      u32      zero
//!   60  header_crc    u32      crc32 of bytes 0..60
//! records, entry_count x 72 bytes, sorted by path in component order (see path_cmp):
//!    0  path_off u32   4 path_len u32     offsets into the string table
//!    8  link_off u32  12 link_len u32     symlink target
//!   16  xattr_off u32 20 xattr_len u32    xattrs: repeated [name_len u16][value_len u32][name][value]
//!   24  kind u8       25 flags u8         kind: EntryKind; flags: 1 opaque, 2 implicit
//!   26  reserved u16
//!   28  mode u32                          permission bits, 0o7777
//!   32  uid u32       36 gid u32
//!   40  size u64                          file size; link length for symlinks
//!   48  mtime_sec i64 56 mtime_nsec u32
//!   60  hardlink_group u32                0: none; equal non-zero: names of one node
//!   64  rdev_major u32 68 rdev_minor u32
//! string table, strings_len bytes
//! ```
//!
//! An *implicit* directory is one the tar never listed but whose children it did: a
//! union lets a lower layer's real directory show through it. The root directory has
//! the empty path. Fixed-size records make lookup a binary search with no parsing.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::image::layer::{EntryKind, Metadata};

const MAGIC: &[u8; 8] = b"STRATAIX";
const VERSION: u32 = 1;
const HEADER_SIZE: usize = 64;
const RECORD_SIZE: usize = 72;

pub const FLAG_OPAQUE: u8 = 1;
pub const FLAG_IMPLICIT: u8 = 2;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("cannot read layer index {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "layer index {path} is corrupt ({reason}); remove the layer's directory and import the image again"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("layer index is too large: {0} bytes of names and xattrs (limit 4 GiB)")]
    TooLarge(u64),
}

/// One entry as the unpacker builds it, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub flags: u8,
    pub meta: Metadata,
    pub symlink_target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub hardlink_group: u32,
}

/// Orders paths component by component, so that a directory's descendants follow it
/// contiguously ("a", "a/b", "a-c": '/' sorts before every byte a name may hold).
pub fn path_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => key(a[i]).cmp(&key(b[i])),
        None => a.len().cmp(&b.len()),
    }
}

/// Encodes entries (in any order) into the index format.
pub fn encode(entries: &[IndexEntry]) -> Result<Vec<u8>, IndexError> {
    let mut order: Vec<&IndexEntry> = entries.iter().collect();
    order.sort_by(|a, b| path_cmp(&a.path, &b.path));
    let mut strings: Vec<u8> = Vec::new();
    let mut records = Vec::with_capacity(order.len() * RECORD_SIZE);
    let push = |bytes: &[u8], strings: &mut Vec<u8>| -> (u32, u32) {
        let off = strings.len() as u32;
        strings.extend_from_slice(bytes);
        (off, bytes.len() as u32)
    };
    for e in order {
        let (path_off, path_len) = push(&e.path, &mut strings);
        let (link_off, link_len) = push(&e.symlink_target, &mut strings);
        let xattr_bytes = encode_xattrs(&e.xattrs);
        let (xattr_off, xattr_len) = push(&xattr_bytes, &mut strings);
        if strings.len() as u64 > u32::MAX as u64 {
            return Err(IndexError::TooLarge(strings.len() as u64));
        }
        let m = &e.meta;
        for v in [path_off, path_len, link_off, link_len, xattr_off, xattr_len] {
            records.extend_from_slice(&v.to_le_bytes());
        }
        records.extend_from_slice(&[e.kind as u8, e.flags, 0, 0]);
        for v in [m.mode, m.uid, m.gid] {
            records.extend_from_slice(&v.to_le_bytes());
        }
        records.extend_from_slice(&m.size.to_le_bytes());
        records.extend_from_slice(&m.mtime_sec.to_le_bytes());
        for v in [m.mtime_nsec, e.hardlink_group, m.rdev_major, m.rdev_minor] {
            records.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut body_crc = crc32fast::Hasher::new();
    body_crc.update(&records);
    body_crc.update(&strings);
    let mut out = Vec::with_capacity(HEADER_SIZE + records.len() + strings.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(RECORD_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u64).to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&body_crc.finalize().to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    let header_crc = crc32fast::hash(&out[..60]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&records);
    out.extend_from_slice(&strings);
    Ok(out)
}

fn encode_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in xattrs {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    out
}

/// A loaded, verified layer index.
pub struct LayerIndex {
    data: Vec<u8>,
    count: usize,
    strings_at: usize,
}

impl std::fmt::Debug for LayerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayerIndex({} entries)", self.count)
    }
}

impl LayerIndex {
    pub fn open(path: &Path) -> Result<LayerIndex, IndexError> {
        let data = std::fs::read(path).map_err(|e| IndexError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        LayerIndex::from_bytes(data).map_err(|reason| IndexError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Checks the header, both checksums and every record's bounds, so that later
    /// accessors can index without failing.
    pub fn from_bytes(data: Vec<u8>) -> Result<LayerIndex, String> {
        if data.len() < HEADER_SIZE || &data[..8] != MAGIC {
            return Err("not a strata layer index".into());
        }
        if crc32fast::hash(&data[..60]) != u32_at(&data, 60) {
            return Err("header checksum mismatch".into());
        }
        let version = u32_at(&data, 8);
        if version != VERSION {
            return Err(format!(
                "format version {version}, this strata reads {VERSION}"
            ));
        }
        if u32_at(&data, 12) as usize != RECORD_SIZE {
            return Err("unexpected record size".into());
        }
        let count = usize::try_from(u64_at(&data, 16)).map_err(|_| "entry count overflows")?;
        let strings_len =
            usize::try_from(u64_at(&data, 24)).map_err(|_| "string table overflows")?;
        let strings_at = count
            .checked_mul(RECORD_SIZE)
            .and_then(|r| r.checked_add(HEADER_SIZE))
            .ok_or("entry count overflows")?;
        if strings_at.checked_add(strings_len) != Some(data.len()) {
            return Err(format!("length {} does not match its header", data.len()));
        }
        if crc32fast::hash(&data[HEADER_SIZE..]) != u32_at(&data, 52) {
            return Err("body checksum mismatch".into());
        }
        let index = LayerIndex {
            data,
            count,
            strings_at,
        };
        for i in 0..count {
            index.check_record(i, strings_len)?;
        }
        Ok(index)
    }

    fn check_record(&self, i: usize, strings_len: usize) -> Result<(), String> {
        let r = HEADER_SIZE + i * RECORD_SIZE;
        for field in [0, 8, 16] {
            let off = u32_at(&self.data, r + field) as usize;
            let len = u32_at(&self.data, r + field + 4) as usize;
            if off + len > strings_len {
                return Err(format!("record {i} points outside the string table"));
            }
        }
        if EntryKind::from_u8(self.data[r + 24]).is_none() {
            return Err(format!("record {i} has unknown kind {}", self.data[r + 24]));
        }
        if i > 0 && path_cmp(self.entry(i - 1).path(), self.entry(i).path()) != Ordering::Less {
            return Err(format!("records {} and {i} are out of order", i - 1));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The i-th entry in path order.
    pub fn entry(&self, i: usize) -> EntryRef<'_> {
        assert!(i < self.count, "index entry {i} out of range");
        EntryRef {
            index: self,
            at: HEADER_SIZE + i * RECORD_SIZE,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = EntryRef<'_>> {
        (0..self.count).map(|i| self.entry(i))
    }

    /// The position of `path`, or where it would be inserted.
    pub fn search(&self, path: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match path_cmp(self.entry(mid).path(), path) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    pub fn get(&self, path: &[u8]) -> Option<EntryRef<'_>> {
        self.search(path).ok().map(|i| self.entry(i))
    }

    fn string(&self, off: u32, len: u32) -> &[u8] {
        let start = self.strings_at + off as usize;
        &self.data[start..start + len as usize]
    }
}

/// A view of one record, read in place.
#[derive(Clone, Copy)]
pub struct EntryRef<'a> {
    index: &'a LayerIndex,
    at: usize,
}

impl<'a> EntryRef<'a> {
    fn u32(&self, off: usize) -> u32 {
        u32_at(&self.index.data, self.at + off)
    }

    fn field(&self, off: usize) -> &'a [u8] {
        let index: &'a LayerIndex = self.index;
        index.string(self.u32(off), self.u32(off + 4))
    }

    pub fn path(&self) -> &'a [u8] {
        self.field(0)
    }

    pub fn symlink_target(&self) -> &'a [u8] {
        self.field(8)
    }

    pub fn kind(&self) -> EntryKind {
        // from_bytes checked every kind.
        EntryKind::from_u8(self.index.data[self.at + 24]).unwrap_or(EntryKind::File)
    }

    pub fn flags(&self) -> u8 {
        self.index.data[self.at + 25]
    }

    pub fn is_opaque(&self) -> bool {
        self.flags() & FLAG_OPAQUE != 0
    }

    pub fn is_implicit(&self) -> bool {
        self.flags() & FLAG_IMPLICIT != 0
    }

    pub fn hardlink_group(&self) -> u32 {
        self.u32(60)
    }

    pub fn meta(&self) -> Metadata {
        let d = &self.index.data;
        Metadata {
            mode: self.u32(28),
            uid: self.u32(32),
            gid: self.u32(36),
            size: u64_at(d, self.at + 40),
            mtime_sec: u64_at(d, self.at + 48) as i64,
            mtime_nsec: self.u32(56),
            rdev_major: self.u32(64),
            rdev_minor: self.u32(68),
        }
    }

    /// The xattrs, as (name, value) pairs.
    pub fn xattrs(&self) -> Vec<(&'a [u8], &'a [u8])> {
        let mut bytes = self.field(16);
        let mut out = Vec::new();
        while bytes.len() >= 6 {
            let name_len = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
            let value_len = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
            let rest = &bytes[6..];
            if rest.len() < name_len + value_len {
                break;
            }
            out.push((&rest[..name_len], &rest[name_len..name_len + value_len]));
            bytes = &rest[name_len + value_len..];
        }
        out
    }

    /// The entry back in its owned, encodable form.
    pub fn to_owned_entry(&self) -> IndexEntry {
        IndexEntry {
            path: self.path().to_vec(),
            kind: self.kind(),
            flags: self.flags(),
            meta: self.meta(),
            symlink_target: self.symlink_target().to_vec(),
            xattrs: self
                .xattrs()
                .into_iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            hardlink_group: self.hardlink_group(),
        }
    }
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> IndexEntry {
        IndexEntry {
            path: path.as_bytes().to_vec(),
            kind,
            flags: 0,
            meta: Metadata {
                mode: 0o4755,
                uid: 1000,
                gid: 5,
                size: 3,
                mtime_sec: -7,
                mtime_nsec: 9,
                rdev_major: 1,
                rdev_minor: 3,
            },
            symlink_target: if kind == EntryKind::Symlink {
                b"../x".to_vec()
            } else {
                vec![]
            },
            xattrs: vec![
                (b"user.a".to_vec(), b"1".to_vec()),
                (b"security.capability".to_vec(), vec![0, 1, 2]),
            ],
            hardlink_group: 4,
        }
    }

    #[test]
    fn round_trips_and_searches() {
        let entries = vec![
            entry("a-c", EntryKind::File),
            entry("a/b", EntryKind::Symlink),
            entry("", EntryKind::Dir),
            entry("a", EntryKind::Dir),
            entry("z", EntryKind::Whiteout),
        ];
        let index = LayerIndex::from_bytes(encode(&entries).unwrap()).unwrap();
        let paths: Vec<&[u8]> = index.iter().map(|e| e.path()).collect();
        assert_eq!(paths, [&b""[..], b"a", b"a/b", b"a-c", b"z"]);
        let got = index.get(b"a/b").unwrap().to_owned_entry();
        assert_eq!(got, entries[1]);
        assert!(index.get(b"a/c").is_none());
        assert_eq!(index.search(b"a/bb"), Err(3));
    }

    #[test]
    fn refuses_corruption() {
        let mut bytes = encode(&[entry("a", EntryKind::File)]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            LayerIndex::from_bytes(bytes.clone())
                .unwrap_err()
                .contains("checksum")
        );
        bytes.truncate(40);
        assert!(LayerIndex::from_bytes(bytes).is_err());
        assert!(LayerIndex::from_bytes(b"STRATAIX".to_vec()).is_err());
    }
}
