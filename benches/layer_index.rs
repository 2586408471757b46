//! Layer index: encoding, loading (the cost every mount pays per layer) and lookup,
//! for indexes of 10k and 100k entries shaped like a distribution's tree.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata::image::layer::{EntryKind, Metadata};
use strata::store::layer_index::{IndexEntry, LayerIndex, encode};

/// `n` entries: 1 in 20 a directory, file names of realistic length, a few xattrs.
fn synthetic(n: usize) -> Vec<IndexEntry> {
    (0..n)
        .map(|i| {
            let dir = i / 20;
            let is_dir = i % 20 == 0;
            let path = if is_dir {
                format!("usr/lib/python3.11/pkg{dir:05}")
            } else {
                format!("usr/lib/python3.11/pkg{dir:05}/module_{i:07}.cpython-311.pyc")
            };
            IndexEntry {
                path: path.into_bytes(),
                kind: if is_dir {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
                flags: 0,
                meta: Metadata {
                    mode: 0o644,
                    size: i as u64,
                    mtime_sec: 1_700_000_000,
                    ..Metadata::default()
                },
                symlink_target: Vec::new(),
                xattrs: if i % 100 == 0 {
                    vec![(b"user.x".to_vec(), b"y".to_vec())]
                } else {
                    Vec::new()
                },
                hardlink_group: 0,
            }
        })
        .collect()
}

fn bench_index(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("layer_index");
    for n in [10_000usize, 100_000] {
        let entries = synthetic(n);
        let bytes = encode(&entries).expect("encode");
        let path = dir.path().join(format!("index-{n}"));
        std::fs::write(&path, &bytes).expect("write");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("encode", n), &entries, |b, e| {
            b.iter(|| encode(black_box(e)))
        });
        group.bench_with_input(BenchmarkId::new("open", n), &path, |b, p| {
            b.iter(|| LayerIndex::open(black_box(p)))
        });
        let index = LayerIndex::open(&path).expect("open");
        let hit = entries[n / 2].path.clone();
        let miss = b"usr/lib/python3.11/pkg00042/absent.py".to_vec();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("get_hit", n), &hit, |b, p| {
            b.iter(|| index.get(black_box(p)).is_some())
        });
        group.bench_with_input(BenchmarkId::new("get_miss", n), &miss, |b, p| {
            b.iter(|| index.get(black_box(p)).is_some())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_index);
criterion_main!(benches);
