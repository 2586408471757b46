//! The flattened lower view: building it from a chain of layer indexes, and looking
//! names up in it, at chain depths of 1 to 500 layers. The point to show: a lookup
//! costs the same whatever the depth, because the layers were merged once.
//!
//! STRATA_BENCH_ENTRIES=1000000 adds a 1M-entry view (slow to set up).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use strata::image::Digest;
use strata::image::layer::{EntryKind, Metadata};
use strata::store::Store;
use strata::store::layer_index::{IndexEntry, LayerIndex, encode};
use strata::unionfs::view::{View, flatten};

fn entry(path: String, kind: EntryKind) -> IndexEntry {
    IndexEntry {
        path: path.into_bytes(),
        kind,
        flags: 0,
        meta: Metadata {
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            ..Metadata::default()
        },
        symlink_target: Vec::new(),
        xattrs: Vec::new(),
        hardlink_group: 0,
    }
}

/// `files` files in directories of 20, spread round-robin over `depth` layers; the
/// top layer also whites out one file in a hundred.
fn chain(files: usize, depth: usize) -> Vec<LayerIndex> {
    let mut layers: Vec<Vec<IndexEntry>> = (0..depth)
        .map(|_| vec![entry(String::new(), EntryKind::Dir)])
        .collect();
    let dirs = files.div_ceil(20);
    for d in 0..dirs {
        for layer in layers.iter_mut() {
            layer.push(entry(format!("usr/lib/d{d:06}"), EntryKind::Dir));
        }
    }
    for layer in layers.iter_mut() {
        layer.push(entry("usr".into(), EntryKind::Dir));
        layer.push(entry("usr/lib".into(), EntryKind::Dir));
    }
    for f in 0..files {
        layers[f % depth].push(entry(
            format!("usr/lib/d{:06}/file-{f:08}.so", f / 20),
            EntryKind::File,
        ));
    }
    for f in (0..files).step_by(100) {
        layers[depth - 1].push(entry(
            format!("usr/lib/d{:06}/file-{f:08}.so", f / 20),
            EntryKind::Whiteout,
        ));
    }
    layers
        .into_iter()
        .map(|mut entries| {
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            entries.dedup_by(|a, b| a.path == b.path);
            LayerIndex::from_bytes(encode(&entries).expect("encode")).expect("decode")
        })
        .collect()
}

fn bench_view(c: &mut Criterion) {
    let mut sizes = vec![10_000usize, 100_000];
    if let Some(n) = std::env::var("STRATA_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        sizes.push(n);
    }
    let mut group = c.benchmark_group("view");
    group.sample_size(10);
    for &files in &sizes {
        // A million entries in 500 layers would take minutes to set up: the big view
        // is measured at the depths that matter most.
        let depths: &[usize] = if files > 100_000 {
            &[1, 20, 128]
        } else {
            &[1, 8, 20, 32, 128, 500]
        };
        for &depth in depths {
            let layers = chain(files, depth);
            let id = format!("{files}x{depth}");
            group.bench_with_input(BenchmarkId::new("flatten", &id), &layers, |b, l| {
                b.iter(|| flatten(black_box(l)))
            });
            let flat = flatten(&layers);
            let entries: Vec<IndexEntry> = flat.into_iter().map(|f| f.entry).collect();
            let encoded = encode(&entries).expect("encode");
            eprintln!(
                "view {id}: {} entries, {} bytes encoded",
                entries.len(),
                encoded.len()
            );
            let view = LayerIndex::from_bytes(encoded).expect("decode");
            let short = b"usr".to_vec();
            group.bench_with_input(BenchmarkId::new("lookup_short", &id), &short, |b, p| {
                b.iter(|| view.get(black_box(p)).is_some())
            });
            let hit =
                format!("usr/lib/d{:06}/file-{:08}.so", files / 40, files / 2 + 1).into_bytes();
            let miss = format!("usr/lib/d{:06}/absent.so", files / 40).into_bytes();
            assert!(view.get(&hit).is_some() && view.get(&miss).is_none());
            group.bench_with_input(BenchmarkId::new("lookup_hit", &id), &hit, |b, p| {
                b.iter(|| view.get(black_box(p)).is_some())
            });
            group.bench_with_input(BenchmarkId::new("lookup_miss", &id), &miss, |b, p| {
                b.iter(|| view.get(black_box(p)).is_some())
            });
        }
    }
    group.finish();
}

/// Loading a view that an earlier mount cached: what every later mount pays.
fn bench_cached_view(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let layers = chain(100_000, 20);
    let diff_ids: Vec<Digest> = (0..layers.len())
        .map(|i| {
            let d = Digest::of(format!("layer {i}").as_bytes());
            let entries: Vec<IndexEntry> = layers[i].iter().map(|e| e.to_owned_entry()).collect();
            std::fs::create_dir_all(store.layer_dir(&d)).expect("layer dir");
            std::fs::write(
                store.layer_index_path(&d),
                encode(&entries).expect("encode"),
            )
            .expect("index");
            d
        })
        .collect();
    View::open(&store, &diff_ids).expect("build and cache the view");
    c.bench_function("view/load_cached/100000x20", |b| {
        b.iter(|| View::open(black_box(&store), &diff_ids).expect("load"))
    });
}

criterion_group!(benches, bench_view, bench_cached_view);
criterion_main!(benches);
