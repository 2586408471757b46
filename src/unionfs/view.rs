//! The flattened lower view: the union of a chain of immutable layers, computed once.
//!
//! Every layer index is sorted in component order and lists every ancestor of its
//! entries (implicit directories), so the union is a k-way merge of the sorted
//! indexes, top layer first at equal paths. While merging we keep the chain of
//! visible ancestor directories with, for each, the lowest layer whose children still
//! show through it (its "floor"): a whiteout or a non-directory hides a name and its
//! subtree in every layer below it, and an opaque directory hides the children of the
//! layers below it. The result is sorted like a layer index, so a lookup in the view
//! is one binary search, whatever the number of layers.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use crate::image::Digest;
use crate::image::layer::{EntryKind, split_last};
use crate::image::spec::chain_id;
use crate::store::fsutil::{create_dir_private, rename_noreplace};
use crate::store::layer_index::{
    self, FLAG_IMPLICIT, FLAG_OPAQUE, IndexEntry, LayerIndex, path_cmp,
};
use crate::store::staging::Staging;
use crate::store::{Store, StoreError};

/// The view of a layer chain, loaded: its entries in a layer-index file (so lookup is
/// the same binary search), and beside them, for each entry, the layer holding its
/// data and its link count.
///
/// On disk, `views/<chain id>/index` is in the layer index format and
/// `views/<chain id>/layers` is: magic "STRATAVW", u32 version 1, u32 entry count,
/// u32 crc32 of the records, u32 zero, then per entry u32 layer and u32 nlink (LE).
pub struct View {
    pub index: LayerIndex,
    layer_and_nlink: Vec<(u32, u32)>,
}

const AUX_MAGIC: &[u8; 8] = b"STRATAVW";
const AUX_VERSION: u32 = 1;
const AUX_HEADER: usize = 24;

impl View {
    /// The view of `diff_ids` (bottom first): loaded from the store's cache, or built
    /// from the layer indexes and cached for the next mount.
    pub fn open(store: &Store, diff_ids: &[Digest]) -> Result<View, StoreError> {
        let Some(chain) = chain_id(diff_ids) else {
            return View::from_flat(flatten(&[]));
        };
        let dir = store.view_dir(&chain);
        let damaged = match View::load(&dir) {
            Ok(view) => return Ok(view),
            Err(StoreError::Index(layer_index::IndexError::Read { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                false
            }
            // A damaged cache is only a cache: build it again.
            Err(_) => true,
        };
        let layers = diff_ids
            .iter()
            .map(|d| LayerIndex::open(&store.layer_index_path(d)))
            .collect::<Result<Vec<_>, _>>()?;
        let flat = flatten(&layers);
        let staging = Staging::new(&store.tmp_dir(), "view")?;
        let built = staging.path().join("view");
        create_dir_private(&built)?;
        write_view(&built, &flat)?;
        if damaged {
            // Moved into our staging area, it goes when the staging area does.
            let _ = std::fs::rename(&dir, staging.path().join("damaged"));
        }
        // Another mount may have cached the same chain meanwhile: theirs is as good.
        rename_noreplace(&built, &dir)?;
        View::from_flat(flat)
    }

    /// The view of entries already flattened, in path order, not cached: a
    /// directory of strata-overlayfs's plain lowers, merged as it was read.
    pub fn from_flat(flat: Vec<FlatEntry>) -> Result<View, StoreError> {
        let layer_and_nlink = flat.iter().map(|f| (f.layer as u32, f.nlink)).collect();
        let entries: Vec<IndexEntry> = flat.into_iter().map(|f| f.entry).collect();
        let index = LayerIndex::from_bytes(layer_index::encode(&entries)?).map_err(|reason| {
            StoreError::Index(layer_index::IndexError::Corrupt {
                path: "<view>".into(),
                reason,
            })
        })?;
        Ok(View {
            index,
            layer_and_nlink,
        })
    }

    fn load(dir: &Path) -> Result<View, StoreError> {
        let index = LayerIndex::open(&dir.join("index"))?;
        let aux_path = dir.join("layers");
        let corrupt = |reason: &str| {
            StoreError::Index(layer_index::IndexError::Corrupt {
                path: aux_path.clone(),
                reason: reason.to_string(),
            })
        };
        let aux = std::fs::read(&aux_path).map_err(|e| StoreError::io("read", &aux_path, e))?;
        if aux.len() < AUX_HEADER || &aux[..8] != AUX_MAGIC || le32(&aux, 8) != AUX_VERSION {
            return Err(corrupt("not a strata view"));
        }
        let count = le32(&aux, 12) as usize;
        if count != index.len() || aux.len() != AUX_HEADER + count * 8 {
            return Err(corrupt("entry count does not match the view's index"));
        }
        if crc32fast::hash(&aux[AUX_HEADER..]) != le32(&aux, 16) {
            return Err(corrupt("checksum mismatch"));
        }
        let layer_and_nlink = (0..count)
            .map(|i| {
                (
                    le32(&aux, AUX_HEADER + i * 8),
                    le32(&aux, AUX_HEADER + i * 8 + 4),
                )
            })
            .collect();
        Ok(View {
            index,
            layer_and_nlink,
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The chain position (0 = bottom) whose tree holds entry `i`'s data.
    pub fn layer(&self, i: usize) -> usize {
        self.layer_and_nlink[i].0 as usize
    }

    pub fn nlink(&self, i: usize) -> u32 {
        self.layer_and_nlink[i].1
    }
}

fn write_view(dir: &Path, flat: &[FlatEntry]) -> Result<(), StoreError> {
    let entries: Vec<IndexEntry> = flat.iter().map(|f| f.entry.clone()).collect();
    let index_path = dir.join("index");
    std::fs::write(&index_path, layer_index::encode(&entries)?)
        .map_err(|e| StoreError::io("write", &index_path, e))?;
    let mut records = Vec::with_capacity(flat.len() * 8);
    for f in flat {
        records.extend_from_slice(&(f.layer as u32).to_le_bytes());
        records.extend_from_slice(&f.nlink.to_le_bytes());
    }
    let mut aux = Vec::with_capacity(AUX_HEADER + records.len());
    aux.extend_from_slice(AUX_MAGIC);
    aux.extend_from_slice(&AUX_VERSION.to_le_bytes());
    aux.extend_from_slice(&(flat.len() as u32).to_le_bytes());
    aux.extend_from_slice(&crc32fast::hash(&records).to_le_bytes());
    aux.extend_from_slice(&0u32.to_le_bytes());
    aux.extend_from_slice(&records);
    let aux_path = dir.join("layers");
    std::fs::write(&aux_path, aux).map_err(|e| StoreError::io("write", &aux_path, e))
}

fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// One visible entry of the union, with the layer that holds its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatEntry {
    /// The winning entry; its hardlink group is renumbered to be unique in the view,
    /// and the opaque flag (meaningful only between layers) is cleared.
    pub entry: IndexEntry,
    /// Position in the chain, 0 the bottom layer: whose `tree/` has the data.
    pub layer: usize,
    /// Links: 2 + subdirectories for a directory, the names of its node otherwise.
    pub nlink: u32,
}

/// A cursor's current path, ordered for a min-heap; at equal paths, upper layers
/// come first.
struct Head<'a> {
    path: &'a [u8],
    layer: usize,
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head<'_> {}
impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        path_cmp(self.path, other.path).then(other.layer.cmp(&self.layer))
    }
}

/// Flattens `layers` (bottom first) into the sorted list of visible entries.
pub fn flatten(layers: &[LayerIndex]) -> Vec<FlatEntry> {
    let mut cursors = vec![0usize; layers.len()];
    let mut heap: BinaryHeap<Reverse<Head<'_>>> = BinaryHeap::with_capacity(layers.len());
    for (layer, index) in layers.iter().enumerate() {
        if !index.is_empty() {
            heap.push(Reverse(Head {
                path: index.entry(0).path(),
                layer,
            }));
        }
    }
    // Visible ancestor directories of the current path: (view position, floor).
    let mut ancestors: Vec<(usize, usize)> = Vec::new();
    let mut out: Vec<FlatEntry> = Vec::new();
    let mut groups: HashMap<(usize, u32), u32> = HashMap::new();
    let mut having: Vec<usize> = Vec::new();
    while let Some(Reverse(head)) = heap.pop() {
        let path = head.path;
        having.clear();
        having.push(head.layer);
        while heap.peek().is_some_and(|Reverse(h)| h.path == path) {
            having.extend(heap.pop().map(|Reverse(h)| h.layer));
        }
        // `having` is top layer first (the heap orders equal paths so).
        let floor = visible_floor(&mut ancestors, &out, path);
        if let Some(floor) = floor {
            let entries: Vec<(usize, IndexEntry)> = having
                .iter()
                .filter(|&&l| l >= floor)
                .map(|&l| (l, layers[l].entry(cursors[l]).to_owned_entry()))
                .collect();
            if let Some(flat) =
                resolve_path(&entries, floor, &mut groups, &mut ancestors, out.len())
            {
                out.push(flat);
            }
        }
        for &l in &having {
            cursors[l] += 1;
            if cursors[l] < layers[l].len() {
                heap.push(Reverse(Head {
                    path: layers[l].entry(cursors[l]).path(),
                    layer: l,
                }));
            }
        }
    }
    count_links(&mut out);
    out
}

/// The floor under which `path`'s entries are hidden, or None when its parent is not
/// visible. Pops ancestors that the merge has left behind.
fn visible_floor(
    ancestors: &mut Vec<(usize, usize)>,
    out: &[FlatEntry],
    path: &[u8],
) -> Option<usize> {
    if path.is_empty() {
        ancestors.clear();
        return Some(0);
    }
    let (parent, _) = split_last(path);
    while let Some(&(pos, floor)) = ancestors.last() {
        let dir = &out[pos].entry.path;
        if dir.as_slice() == parent {
            return Some(floor);
        }
        let is_ancestor =
            dir.is_empty() || (parent.starts_with(dir) && parent.get(dir.len()) == Some(&b'/'));
        if is_ancestor {
            // The parent itself was hidden, though a higher ancestor is visible.
            return None;
        }
        ancestors.pop();
    }
    None
}

/// Decides what `entries` (one path, top layer first, all at or above `floor`) show.
fn resolve_path(
    entries: &[(usize, IndexEntry)],
    floor: usize,
    groups: &mut HashMap<(usize, u32), u32>,
    ancestors: &mut Vec<(usize, usize)>,
    position: usize,
) -> Option<FlatEntry> {
    let (top_layer, top) = entries.first()?;
    match top.kind {
        EntryKind::Whiteout => None,
        EntryKind::Dir => {
            // Children show through down to the first layer that hides them.
            let mut children_floor = floor;
            for (layer, e) in entries {
                if e.kind != EntryKind::Dir {
                    children_floor = layer + 1;
                    break;
                }
                if e.flags & FLAG_OPAQUE != 0 {
                    children_floor = *layer;
                    break;
                }
            }
            // An implicit directory lets a real one below give the metadata.
            let (layer, winner) = entries
                .iter()
                .take_while(|(l, e)| e.kind == EntryKind::Dir && *l >= children_floor)
                .find(|(_, e)| e.flags & FLAG_IMPLICIT == 0)
                .unwrap_or(&entries[0])
                .clone();
            let mut entry = winner;
            entry.flags &= !FLAG_OPAQUE;
            ancestors.push((position, children_floor));
            Some(FlatEntry {
                entry,
                layer,
                nlink: 2,
            })
        }
        _ => {
            let mut entry = top.clone();
            if entry.hardlink_group != 0 {
                let next = groups.len() as u32 + 1;
                entry.hardlink_group = *groups
                    .entry((*top_layer, entry.hardlink_group))
                    .or_insert(next);
            }
            Some(FlatEntry {
                entry,
                layer: *top_layer,
                nlink: 1,
            })
        }
    }
}

/// Fills in link counts: subdirectories for directories, visible names per node.
fn count_links(out: &mut [FlatEntry]) {
    let mut group_sizes: HashMap<u32, u32> = HashMap::new();
    for f in out.iter() {
        if f.entry.hardlink_group != 0 {
            *group_sizes.entry(f.entry.hardlink_group).or_default() += 1;
        }
    }
    let mut dir_positions: HashMap<Vec<u8>, usize> = HashMap::new();
    for i in 0..out.len() {
        let kind = out[i].entry.kind;
        if kind == EntryKind::Dir {
            dir_positions.insert(out[i].entry.path.clone(), i);
            if !out[i].entry.path.is_empty() {
                let (parent, _) = split_last(&out[i].entry.path);
                if let Some(&p) = dir_positions.get(parent) {
                    out[p].nlink += 1;
                }
            }
        } else if out[i].entry.hardlink_group != 0 {
            out[i].nlink = group_sizes[&out[i].entry.hardlink_group];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::Metadata;
    use crate::store::layer_index::encode;

    fn e(path: &str, kind: EntryKind, flags: u8, mode: u32) -> IndexEntry {
        IndexEntry {
            path: path.as_bytes().to_vec(),
            kind,
            flags,
            meta: Metadata {
                mode,
                ..Metadata::default()
            },
            symlink_target: Vec::new(),
            xattrs: Vec::new(),
            hardlink_group: 0,
        }
    }
    fn dir(path: &str) -> IndexEntry {
        e(path, EntryKind::Dir, 0, 0o755)
    }
    fn file(path: &str, mode: u32) -> IndexEntry {
        e(path, EntryKind::File, 0, mode)
    }
    fn layer(entries: Vec<IndexEntry>) -> LayerIndex {
        LayerIndex::from_bytes(encode(&entries).unwrap()).unwrap()
    }
    fn view(layers: &[LayerIndex]) -> Vec<(String, usize, u32)> {
        flatten(layers)
            .into_iter()
            .map(|f| {
                (
                    String::from_utf8(f.entry.path).unwrap(),
                    f.layer,
                    f.entry.meta.mode,
                )
            })
            .collect()
    }
    fn paths(layers: &[LayerIndex]) -> Vec<String> {
        view(layers).into_iter().map(|(p, _, _)| p).collect()
    }

    #[test]
    fn upper_wins_and_lower_shows_through() {
        let l0 = layer(vec![
            dir(""),
            dir("etc"),
            file("etc/a", 0o600),
            file("etc/b", 0o600),
        ]);
        let l1 = layer(vec![
            dir(""),
            dir("etc"),
            file("etc/b", 0o644),
            file("etc/c", 0o644),
        ]);
        assert_eq!(
            view(&[l0, l1]),
            vec![
                ("".into(), 1, 0o755),
                ("etc".into(), 1, 0o755),
                ("etc/a".into(), 0, 0o600),
                ("etc/b".into(), 1, 0o644),
                ("etc/c".into(), 1, 0o644)
            ]
        );
    }

    #[test]
    fn whiteouts_hide_names_and_subtrees() {
        let l0 = layer(vec![
            dir(""),
            dir("d"),
            file("d/x", 0o644),
            dir("d/sub"),
            file("d/sub/y", 0o644),
            file("f", 0o644),
        ]);
        let l1 = layer(vec![
            dir(""),
            dir("d"),
            e("d/sub", EntryKind::Whiteout, 0, 0),
            e("f", EntryKind::Whiteout, 0, 0),
        ]);
        assert_eq!(paths(&[l0, l1]), vec!["", "d", "d/x"]);
    }

    #[test]
    fn opaque_dirs_hide_lower_children_only() {
        let l0 = layer(vec![
            dir(""),
            dir("d"),
            file("d/old", 0o644),
            dir("d/deep"),
            file("d/deep/z", 0o644),
        ]);
        let l1 = layer(vec![
            dir(""),
            e("d", EntryKind::Dir, FLAG_OPAQUE, 0o700),
            file("d/new", 0o644),
        ]);
        let l2 = layer(vec![dir(""), dir("d"), file("d/top", 0o644)]);
        assert_eq!(paths(&[l0, l1, l2]), vec!["", "d", "d/new", "d/top"]);
    }

    #[test]
    fn implicit_dirs_keep_lower_metadata() {
        let l0 = layer(vec![dir(""), e("usr", EntryKind::Dir, 0, 0o711)]);
        let l1 = layer(vec![
            dir(""),
            e("usr", EntryKind::Dir, FLAG_IMPLICIT, 0o755),
            file("usr/f", 0o644),
        ]);
        assert_eq!(view(&[l0, l1])[1], ("usr".into(), 0, 0o711));
    }

    #[test]
    fn type_changes_replace_subtrees() {
        let l0 = layer(vec![
            dir(""),
            dir("a"),
            file("a/x", 0o644),
            file("b", 0o644),
        ]);
        let l1 = layer(vec![
            dir(""),
            e("a", EntryKind::Symlink, 0, 0o777),
            dir("b"),
            file("b/y", 0o644),
        ]);
        assert_eq!(paths(&[l0, l1]), vec!["", "a", "b", "b/y"]);
    }

    #[test]
    fn hidden_parent_hides_children_of_upper_layers_below_it() {
        // A file replaced the directory in l1; l2 makes it a directory again, without
        // the lower children: only l2's child shows.
        let l0 = layer(vec![dir(""), dir("a"), file("a/old", 0o644)]);
        let l1 = layer(vec![dir(""), file("a", 0o644)]);
        let l2 = layer(vec![dir(""), dir("a"), file("a/new", 0o644)]);
        assert_eq!(paths(&[l0, l1, l2]), vec!["", "a", "a/new"]);
    }

    #[test]
    fn links_are_counted() {
        let mut h1 = file("h1", 0o644);
        h1.hardlink_group = 1;
        let mut h2 = file("d/h2", 0o644);
        h2.hardlink_group = 1;
        let l0 = layer(vec![dir(""), dir("d"), dir("d/e"), h1, h2]);
        let flat = flatten(&[l0]);
        let nlink: Vec<(String, u32)> = flat
            .iter()
            .map(|f| (String::from_utf8(f.entry.path.clone()).unwrap(), f.nlink))
            .collect();
        assert_eq!(
            nlink,
            vec![
                ("".into(), 3),
                ("d".into(), 3),
                ("d/e".into(), 2),
                ("d/h2".into(), 2),
                ("h1".into(), 2)
            ]
        );
    }

    #[test]
    fn views_are_cached_and_rebuilt_when_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let chain: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
        for (i, d) in chain.iter().enumerate() {
            std::fs::create_dir_all(store.layer_dir(d)).unwrap();
            let entries = vec![dir(""), dir("d"), file(&format!("d/f{i}"), 0o644)];
            std::fs::write(store.layer_index_path(d), encode(&entries).unwrap()).unwrap();
        }
        let built = View::open(&store, &chain).unwrap();
        assert_eq!(built.len(), 5);
        assert_eq!(built.layer(built.index.search(b"d/f1").unwrap()), 1);
        assert_eq!(built.nlink(0), 3);
        let cached = store.view_dir(&chain_id(&chain).unwrap());
        assert!(cached.join("index").is_file() && cached.join("layers").is_file());
        // Served from the cache: the layer indexes are no longer needed.
        for d in &chain {
            std::fs::remove_file(store.layer_index_path(d)).unwrap();
        }
        let loaded = View::open(&store, &chain).unwrap();
        assert_eq!(loaded.len(), 5);
        assert_eq!(loaded.layer(loaded.index.search(b"d/f2").unwrap()), 2);
        // A damaged cache is rebuilt (here it cannot be: the indexes are gone).
        std::fs::write(cached.join("layers"), b"junk").unwrap();
        assert!(View::open(&store, &chain).is_err());
    }

    #[test]
    fn depth_does_not_change_the_result() {
        let mut layers = vec![layer(vec![dir(""), dir("bin"), file("bin/sh", 0o755)])];
        for i in 0..100 {
            layers.push(layer(vec![
                dir(""),
                dir("bin"),
                file(&format!("bin/tool{i:03}"), 0o755),
            ]));
        }
        layers.push(layer(vec![
            dir(""),
            dir("bin"),
            e("bin/tool050", EntryKind::Whiteout, 0, 0),
        ]));
        let v = paths(&layers);
        assert_eq!(v.len(), 2 + 1 + 99);
        assert!(v.contains(&"bin/sh".to_string()));
        assert!(!v.contains(&"bin/tool050".to_string()));
    }
}
