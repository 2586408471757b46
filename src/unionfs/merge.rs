//! What the union knows of the upper, kept in memory: all changes go through the
//! mount, so after one scan of an upper directory its names never need reading again.
//!
//! A node is identified by its inode number. Lower nodes keep the view's numbers
//! (position + 1) for life: a copy-up keeps the number, in this mount through the
//! node table and in the next one through the origin xattr the copy carries. Nodes
//! born in the upper are numbered by their upper inode with the top bit set, so they
//! too keep their number across mounts, and upper hardlinks are one node.
//!
//! Renaming a directory that has lower contents copies all of them up first and marks
//! the moved directory opaque: the upper then says everything by itself, with no
//! redirect for another reader to follow (kernel overlayfs refuses redirects in a user
//! namespace). It costs a full copy of that subtree, once; renames of whole lower
//! directories are rare next to renames of files.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use fuser::FileType;

use super::upper::OverrideStat;

/// Set in the inode numbers of nodes born in the upper.
pub const UPPER_INO_BIT: u64 = 1 << 63;
/// Set, with UPPER_INO_BIT, in the numbers of upper-born nodes whose natural number
/// was still in use (see `State::upper_born_ino`); never clashes with an ext4 or
/// xfs inode number below 2^62.
const SPARE_INO_BIT: u64 = UPPER_INO_BIT | (1 << 62);

/// What an upper directory says of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Node(u64),
    /// Deleted: the lower name must not show.
    Whiteout,
}

/// A node that is in the upper, or that left the lower view's picture of it.
#[derive(Debug)]
pub struct Node {
    pub kind: FileType,
    /// Its lower position: for a file, what it was copied from; for a directory, the
    /// lower directory merged beneath it (None once opaque).
    pub lower: Option<usize>,
    pub in_upper: bool,
    /// Its names, as (directory inode, name); empty once unlinked.
    pub links: Vec<(u64, Vec<u8>)>,
    /// Its upper data, open; kept while the kernel may still use an unlinked node.
    pub file: Option<Arc<File>>,
    /// Owner and mode the host could not store.
    pub over: Option<OverrideStat>,
}

impl Node {
    pub fn upper(kind: FileType, lower: Option<usize>, link: (u64, Vec<u8>)) -> Node {
        Node {
            kind,
            lower,
            in_upper: true,
            links: vec![link],
            file: None,
            over: None,
        }
    }

    pub fn rename_link(&mut self, from: (u64, &[u8]), to: (u64, &[u8])) {
        for link in &mut self.links {
            if link.0 == from.0 && link.1 == from.1 {
                *link = (to.0, to.1.to_vec());
                return;
            }
        }
        self.links.push((to.0, to.1.to_vec()));
    }

    pub fn remove_link(&mut self, dir: u64, name: &[u8]) {
        self.links.retain(|(d, n)| !(*d == dir && n == name));
    }
}

/// A directory of the upper, scanned.
#[derive(Debug, Default)]
pub struct DirState {
    /// The lower directory whose names show through (None: opaque, or upper only).
    pub lower: Option<usize>,
    pub entries: HashMap<Vec<u8>, Slot>,
}

impl DirState {
    pub fn new(lower: Option<usize>) -> DirState {
        DirState {
            lower,
            ..DirState::default()
        }
    }

    pub fn insert(&mut self, name: Vec<u8>, slot: Slot) {
        self.entries.insert(name, slot);
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.entries.remove(name);
    }

    pub fn retain(&mut self, keep: impl FnMut(&Vec<u8>, &mut Slot) -> bool) {
        self.entries.retain(keep);
    }

    pub fn set_lower(&mut self, lower: Option<usize>) {
        self.lower = lower;
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub nodes: HashMap<u64, Node>,
    pub dirs: HashMap<u64, DirState>,
    /// Upper-born nodes whose natural number was taken when they appeared: by upper
    /// inode, the number they got instead.
    pub renumbered: HashMap<u64, u64>,
    next_spare: u64,
    /// Upper files opened since the last trim.
    opened_since_trim: usize,
}

/// Upper files kept open at most (besides those of unlinked nodes, which must stay):
/// past it, those that can be opened again by name are closed. Without a bound a
/// tar of 20,000 files into the mount ran the daemon out of descriptors.
pub const UPPER_FILES_LIMIT: usize = 4096;

impl State {
    /// Records that a node's upper file was kept open; closes the files of named
    /// nodes when too many are open (they reopen on their next use).
    pub fn kept_open(&mut self) {
        self.opened_since_trim += 1;
        if self.opened_since_trim < UPPER_FILES_LIMIT / 2 {
            return;
        }
        self.opened_since_trim = 0;
        let open = self.nodes.values().filter(|n| n.file.is_some()).count();
        if open > UPPER_FILES_LIMIT {
            for node in self.nodes.values_mut() {
                if !node.links.is_empty() {
                    node.file = None;
                }
            }
        }
    }

    /// The inode number of an upper-born node whose upper inode is `upper_ino`.
    /// Normally `UPPER_INO_BIT | upper_ino`, the same on every mount. But the upper
    /// filesystem reuses the inode numbers of deleted files at once, while the kernel
    /// may still hold the deleted node (open, or not yet forgotten): a number in use
    /// is never handed out again, the new node gets a spare one. `new`: the node is
    /// new (created, not another name of a known one).
    pub fn upper_born_ino(&mut self, upper_ino: u64, new: bool) -> u64 {
        if !new
            && let Some(&ino) = self.renumbered.get(&upper_ino)
            && self.nodes.get(&ino).is_some_and(|n| !n.links.is_empty())
        {
            return ino;
        }
        let natural = UPPER_INO_BIT | upper_ino;
        match self.nodes.get(&natural) {
            None => {
                self.renumbered.remove(&upper_ino);
                natural
            }
            Some(n) if !new && !n.links.is_empty() && n.in_upper => natural,
            Some(_) => {
                self.next_spare += 1;
                let spare = SPARE_INO_BIT | self.next_spare;
                self.renumbered.insert(upper_ino, spare);
                spare
            }
        }
    }

    pub fn is_upper(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.in_upper)
    }
}

/// A directory offset for `name` that stays valid while the directory changes:
/// readdir resumes after the entry whose cookie it was given, whatever was created or
/// deleted in between (as ext4's hash cookies do). 1 and 2 are "." and "..".
pub fn cookie(name: &[u8]) -> u64 {
    // FNV-1a, 64 bits, folded to 62 so that cookies never collide with the dots or
    // reach the sign bit of a signed off_t.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h ^ (h >> 62)) & ((1 << 62) - 1)).max(3)
}
