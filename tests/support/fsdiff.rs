//! Comparing a mounted (or unpacked) tree with what it should be.
//!
//! - `WALK_PY`: a python3 walker that prints one JSON line per entry of a tree
//!   (lstat fields, sha256 of regular files, symlink target, xattrs), never following
//!   a symlink; `parse_walk` reads its output.
//! - `union_model`: what the union of builder layers shows, computed from the entries
//!   the builder wrote (OCI whiteout and opaque-directory semantics), with hardlink
//!   groups and link counts.
//! - `diff_model` and `diff_trees`: every difference, as readable lines.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::builder::{Entry, ExpectedKind, expected_index};

/// Walks `ROOT` (argv[1]) and prints one JSON object per line, root first, in sorted
/// order. `--no-hash` skips reading file contents. Errors are recorded, never fatal:
/// a directory that cannot be listed has `"list_error"`, a file that cannot be read
/// has `"sha256": "error:ERRNAME"`.
pub const WALK_PY: &str = r#"
import errno, hashlib, json, os, stat, sys

root = sys.argv[1]
do_hash = '--no-hash' not in sys.argv[2:]
out = sys.stdout

def ename(e):
    return 'error:' + errno.errorcode.get(e.errno, str(e.errno))

def show(b):
    return b.decode('utf-8', 'backslashreplace')

def kind(m):
    if stat.S_ISREG(m): return 'f'
    if stat.S_ISDIR(m): return 'd'
    if stat.S_ISLNK(m): return 'l'
    if stat.S_ISCHR(m): return 'c'
    if stat.S_ISBLK(m): return 'b'
    if stat.S_ISFIFO(m): return 'p'
    if stat.S_ISSOCK(m): return 's'
    return '?'

def entry(rel):
    full = os.path.join(root.encode(), rel) if rel else root.encode()
    st = os.lstat(full)
    k = kind(st.st_mode)
    e = {
        'path': show(rel), 'type': k, 'mode': stat.S_IMODE(st.st_mode),
        'uid': st.st_uid, 'gid': st.st_gid, 'size': st.st_size, 'nlink': st.st_nlink,
        'ino': st.st_ino, 'mtime_ns': st.st_mtime_ns,
        'rdev': [os.major(st.st_rdev), os.minor(st.st_rdev)] if k in 'cb' else [0, 0],
        'sha256': None, 'link': None, 'xattrs': {}, 'list_error': None,
    }
    if k == 'l':
        e['link'] = show(os.readlink(full))
    if k == 'f' and do_hash:
        try:
            h = hashlib.sha256()
            with open(full, 'rb', buffering=0) as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
            e['sha256'] = h.hexdigest()
        except OSError as err:
            e['sha256'] = ename(err)
    if k in 'fd':
        try:
            for name in os.listxattr(full, follow_symlinks=False):
                try:
                    e['xattrs'][name] = os.getxattr(full, name, follow_symlinks=False).hex()
                except OSError as err:
                    e['xattrs'][name] = ename(err)
        except OSError as err:
            if err.errno not in (errno.ENOTSUP, errno.ENODATA):
                e['xattrs']['!list'] = ename(err)
    names = []
    if k == 'd':
        try:
            names = sorted(os.listdir(full))
        except OSError as err:
            e['list_error'] = ename(err)
    out.write(json.dumps(e, sort_keys=True) + '\n')
    for n in names:
        entry(os.path.join(rel, n) if rel else n)

sys.setrecursionlimit(10000)
entry(b'')
out.flush()
"#;

/// One entry as the walker saw it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub rdev: (u32, u32),
    pub sha256: Option<String>,
    pub link: Option<String>,
    pub xattrs: BTreeMap<String, String>,
    pub list_error: Option<String>,
}

/// A walk's output, by path ("" is the root).
pub type Tree = BTreeMap<String, Seen>;

#[track_caller]
pub fn parse_walk(text: &str) -> Tree {
    let mut tree = Tree::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let seen: Seen = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("walker line is not an entry: {e}\n{line}"));
        tree.insert(seen.path.clone(), seen);
    }
    assert!(tree.contains_key(""), "the walk has no root entry:\n{text}");
    tree
}

/// What one name of the union should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// 'f', 'd', 'l', 'c', 'b', 'p'.
    pub kind: char,
    /// None for a directory no tar listed (only implied by its children).
    pub mode: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub link: Option<String>,
    pub rdev: (u32, u32),
    /// name -> hex value.
    pub xattrs: BTreeMap<String, String>,
    pub mtime_ns: i64,
    /// (layer, node in that layer) for hardlinked names.
    pub node: Option<(usize, usize)>,
    pub nlink: u64,
    pub implied: bool,
}

/// The union, by path ("" is the root).
pub type Model = BTreeMap<String, Want>;

fn below(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

fn remove_below(m: &mut Model, dir: &str) {
    m.retain(|p, _| p == dir || !below(p, dir));
}

fn ancestors(path: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut at = 0;
    while let Some(i) = path[at..].find('/') {
        out.push(path[..at + i].to_string());
        at += i + 1;
    }
    out
}

fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn implied_dir() -> Want {
    Want {
        kind: 'd',
        mode: None,
        uid: 0,
        gid: 0,
        size: 0,
        sha256: None,
        link: None,
        rdev: (0, 0),
        xattrs: BTreeMap::new(),
        mtime_ns: 0,
        node: None,
        nlink: 2,
        implied: true,
    }
}

/// The union of `layers` (bottom first), as OCI whiteouts and opaque directories make
/// it: each layer hides what it deletes, replaces or makes opaque in the layers below,
/// then adds its own entries; a directory a layer only implies keeps the metadata of a
/// directory below it.
pub fn union_model(layers: &[Vec<Entry>]) -> Model {
    let mut view: Model = Model::new();
    view.insert(String::new(), implied_dir());
    for (n, entries) in layers.iter().enumerate() {
        let (index, implied_opaque) = expected_index(entries);
        let index: BTreeMap<String, _> = index
            .into_iter()
            .map(|(p, x)| (String::from_utf8(p).expect("test paths are UTF-8"), x))
            .collect();
        let implied_opaque: Vec<String> = implied_opaque
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        let mut implied: BTreeSet<String> = BTreeSet::new();
        for p in index.keys().chain(implied_opaque.iter()) {
            implied.extend(ancestors(p));
        }
        implied.extend(implied_opaque.iter().cloned());
        implied.retain(|p| {
            !index
                .get(p)
                .is_some_and(|x| x.kind != ExpectedKind::Whiteout)
        });

        // What this layer hides below it.
        for (p, x) in &index {
            match x.kind {
                ExpectedKind::Whiteout => {
                    view.remove(p);
                    remove_below(&mut view, p);
                }
                ExpectedKind::Dir => {
                    if x.opaque {
                        remove_below(&mut view, p);
                    }
                    if view.get(p).is_some_and(|w| w.kind != 'd') {
                        view.remove(p);
                    }
                }
                _ => {
                    view.remove(p);
                    remove_below(&mut view, p);
                }
            }
        }
        for p in &implied_opaque {
            remove_below(&mut view, p);
        }
        for p in &implied {
            if view.get(p).is_some_and(|w| w.kind != 'd') {
                view.remove(p);
            }
        }

        // What it adds.
        for p in &implied {
            view.entry(p.clone()).or_insert_with(implied_dir);
        }
        for (p, x) in &index {
            let kind = match x.kind {
                ExpectedKind::Whiteout => continue,
                ExpectedKind::File => 'f',
                ExpectedKind::Dir => 'd',
                ExpectedKind::Symlink => 'l',
                ExpectedKind::Char => 'c',
                ExpectedKind::Block => 'b',
                ExpectedKind::Fifo => 'p',
            };
            let want = Want {
                kind,
                mode: Some(x.mode),
                uid: x.uid,
                gid: x.gid,
                size: x.size,
                sha256: (kind == 'f').then(|| super::builder::sha256_hex(&x.data)),
                link: (kind == 'l').then(|| String::from_utf8_lossy(&x.link).into_owned()),
                rdev: x.rdev,
                xattrs: x
                    .xattrs
                    .iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(k).into_owned(),
                            super::builder::hex(v),
                        )
                    })
                    .collect(),
                mtime_ns: x.mtime * 1_000_000_000 + i64::from(x.mtime_nsec),
                node: (x.node != 0).then_some((n, x.node)),
                nlink: 1,
                implied: false,
            };
            view.insert(p.clone(), want);
        }
    }
    // Link counts: 2 + subdirectories; visible names per hardlinked node.
    let mut subdirs: BTreeMap<String, u64> = BTreeMap::new();
    let mut names: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    for (p, w) in &view {
        if w.kind == 'd' && !p.is_empty() {
            *subdirs.entry(parent_of(p).to_string()).or_default() += 1;
        }
        if let Some(node) = w.node {
            *names.entry(node).or_default() += 1;
        }
    }
    for (p, w) in view.iter_mut() {
        w.nlink = match (w.kind, w.node) {
            ('d', _) => 2 + subdirs.get(p).copied().unwrap_or(0),
            (_, Some(node)) => names[&node],
            _ => 1,
        };
    }
    view
}

/// What to check of a mounted tree against the model.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// The mount's user namespace maps ids 0..N (N given): an owner it cannot show is
    /// shown as 0, the first mapped id. None: owners show as the tar said.
    pub ids_mapped_below: Option<u32>,
    pub mtimes: bool,
    pub contents: bool,
    /// Inode partition (hardlinked names share one, all else distinct) and nlink.
    pub links: bool,
}

impl Checks {
    pub fn all() -> Checks {
        Checks {
            ids_mapped_below: None,
            mtimes: true,
            contents: true,
            links: true,
        }
    }
    /// In a namespace that maps only 0 (`unshare -Ur`): every owner shows as 0.
    pub fn squashed(self) -> Checks {
        self.mapped_below(1)
    }
    /// In a namespace that maps ids 0..n.
    pub fn mapped_below(mut self, n: u32) -> Checks {
        self.ids_mapped_below = Some(n);
        self
    }
}

/// Every difference between a walk of a mount and the model, one line each.
pub fn diff_model(got: &Tree, want: &Model, checks: Checks) -> Vec<String> {
    let mut d = Vec::new();
    for p in want.keys().filter(|p| !got.contains_key(*p)) {
        d.push(format!("'{p}': missing ({:?})", want[p].kind));
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        d.push(format!("'{p}': not expected (a {})", got[p].kind));
    }
    for (p, w) in want {
        let Some(g) = got.get(p) else { continue };
        let mut bad = |what: &str, got: String, want: String| {
            if got != want {
                d.push(format!("'{p}': {what}: got {got}, want {want}"));
            }
        };
        bad("type", g.kind.clone(), w.kind.to_string());
        if g.kind != w.kind.to_string() {
            continue;
        }
        if let Some(m) = w.mode {
            bad("mode", format!("{:o}", g.mode), format!("{m:o}"));
        }
        bad(
            "listing error",
            format!("{:?}", g.list_error),
            "None".into(),
        );
        if !w.implied {
            let show = |id: u32| match checks.ids_mapped_below {
                Some(n) if id >= n => 0,
                _ => id,
            };
            let (uid, gid) = (show(w.uid), show(w.gid));
            bad(
                "owner",
                format!("{}:{}", g.uid, g.gid),
                format!("{uid}:{gid}"),
            );
            bad(
                "xattrs",
                format!("{:?}", g.xattrs),
                format!("{:?}", w.xattrs),
            );
            if checks.mtimes {
                bad("mtime_ns", g.mtime_ns.to_string(), w.mtime_ns.to_string());
            }
        }
        if w.kind != 'd' {
            bad("size", g.size.to_string(), w.size.to_string());
        }
        if checks.contents && w.kind == 'f' {
            bad(
                "sha256",
                format!("{:?}", g.sha256),
                format!("{:?}", w.sha256),
            );
        }
        bad("link", format!("{:?}", g.link), format!("{:?}", w.link));
        bad("rdev", format!("{:?}", g.rdev), format!("{:?}", w.rdev));
        if checks.links {
            bad("nlink", g.nlink.to_string(), w.nlink.to_string());
        }
    }
    if checks.links {
        d.extend(diff_inode_groups(got, |p| {
            want.get(p)
                .and_then(|w| w.node)
                .map(|(l, n)| format!("{l}/{n}"))
        }));
        if let Some(root) = got.get("")
            && root.ino != 1
        {
            d.push(format!("root inode is {}, want 1", root.ino));
        }
    }
    d
}

/// Names that share an inode in `got` must be exactly the names that `group_of` puts
/// in one group; every other name has an inode of its own.
pub fn diff_inode_groups(got: &Tree, group_of: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut by_ino: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for (p, g) in got {
        by_ino.entry(g.ino).or_default().insert(p);
    }
    let mut by_group: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for p in got.keys() {
        let key = group_of(p).unwrap_or_else(|| format!("alone:{p}"));
        by_group.entry(key).or_default().insert(p);
    }
    let got_sets: BTreeSet<&BTreeSet<&str>> = by_ino.values().collect();
    let want_sets: BTreeSet<&BTreeSet<&str>> = by_group.values().collect();
    let mut d = Vec::new();
    for s in got_sets.difference(&want_sets) {
        d.push(format!(
            "names sharing one inode: {s:?}, not a hardlink group"
        ));
    }
    for s in want_sets.difference(&got_sets) {
        d.push(format!(
            "hardlink group (or single name) {s:?} does not have one inode of its own"
        ));
    }
    d
}

/// What to compare between two walked trees (say, a mount and umoci's unpack).
#[derive(Debug, Clone, Copy)]
pub struct TreeChecks {
    pub modes: bool,
    pub xattrs: bool,
    /// Compare hardlink groups (names sharing an inode), not inode numbers.
    pub link_groups: bool,
}

/// Every difference between two walks, for the names in both and the names in one
/// only; `skip` leaves names out of the comparison entirely.
pub fn diff_trees(
    a: &Tree,
    b: &Tree,
    checks: TreeChecks,
    skip: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut d = Vec::new();
    for p in a.keys().filter(|p| !skip(p) && !b.contains_key(*p)) {
        d.push(format!("'{p}': only in the first tree (a {})", a[p].kind));
    }
    for p in b.keys().filter(|p| !skip(p) && !a.contains_key(*p)) {
        d.push(format!("'{p}': only in the second tree (a {})", b[p].kind));
    }
    for (p, x) in a {
        let Some(y) = b.get(p) else { continue };
        if skip(p) || p.is_empty() {
            continue;
        }
        let mut bad = |what: &str, l: String, r: String| {
            if l != r {
                d.push(format!("'{p}': {what}: {l} vs {r}"));
            }
        };
        bad("type", x.kind.clone(), y.kind.clone());
        if x.kind != y.kind {
            continue;
        }
        if checks.modes {
            bad("mode", format!("{:o}", x.mode), format!("{:o}", y.mode));
        }
        if x.kind != "d" {
            bad("size", x.size.to_string(), y.size.to_string());
        }
        bad(
            "sha256",
            format!("{:?}", x.sha256),
            format!("{:?}", y.sha256),
        );
        bad("link", format!("{:?}", x.link), format!("{:?}", y.link));
        if checks.xattrs {
            let user = |t: &BTreeMap<String, String>| {
                t.iter()
                    // umoci --rootless records owners it cannot set in this one.
                    .filter(|(k, _)| k.starts_with("user.") && *k != "user.rootlesscontainers")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
            };
            bad(
                "user xattrs",
                format!("{:?}", user(&x.xattrs)),
                format!("{:?}", user(&y.xattrs)),
            );
        }
    }
    if checks.link_groups {
        let groups = |t: &Tree| -> BTreeSet<BTreeSet<String>> {
            let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
            for (p, e) in t {
                if e.kind != "d" && !skip(p) {
                    by_ino.entry(e.ino).or_default().insert(p.clone());
                }
            }
            by_ino.into_values().filter(|s| s.len() > 1).collect()
        };
        let (ga, gb) = (groups(a), groups(b));
        for s in ga.difference(&gb) {
            d.push(format!("hardlinked in the first tree only: {s:?}"));
        }
        for s in gb.difference(&ga) {
            d.push(format!("hardlinked in the second tree only: {s:?}"));
        }
    }
    d
}

/// Panics with every difference, when there are any.
#[track_caller]
pub fn assert_no_diffs(what: &str, diffs: &[String]) {
    if !diffs.is_empty() {
        let shown: Vec<&str> = diffs.iter().take(60).map(String::as_str).collect();
        panic!(
            "{what}: {} difference(s):\n  {}{}",
            diffs.len(),
            shown.join("\n  "),
            if diffs.len() > 60 { "\n  ..." } else { "" }
        );
    }
}
