//! An append-only list whose items never move: the lower view of plain directories
//! grows while the filesystem serves, and its readers (every request) must borrow
//! what is already there without taking a lock. Items live in buckets of doubling
//! size, each allocated once and never reallocated; a slot is a `OnceLock`, so a
//! reader sees an item whole or not at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Bucket `b` holds items `2^b - 1 .. 2^(b+1) - 1`: 32 buckets hold 2^32 - 1 items.
const BUCKETS: usize = 32;

pub struct Grow<T> {
    buckets: [OnceLock<Box<[OnceLock<T>]>>; BUCKETS],
    /// Items pushed and visible (published after their slot is set).
    len: AtomicUsize,
    /// Appends one at a time: the slot of the next item is `len`.
    push: Mutex<()>,
}

impl<T> Default for Grow<T> {
    fn default() -> Self {
        Grow {
            buckets: [const { OnceLock::new() }; BUCKETS],
            len: AtomicUsize::new(0),
            push: Mutex::new(()),
        }
    }
}

/// The bucket of item `i` and its place in it.
fn slot_of(i: usize) -> (usize, usize) {
    let b = (usize::BITS - 1 - (i + 1).leading_zeros()) as usize;
    (b, i + 1 - (1 << b))
}

impl<T> Grow<T> {
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        let (b, at) = slot_of(i);
        self.buckets.get(b)?.get()?.get(at)?.get()
    }

    /// Appends `item`; returns its index.
    pub fn push(&self, item: T) -> usize {
        let _one = self.push.lock().unwrap_or_else(|e| e.into_inner());
        let i = self.len.load(Ordering::Relaxed);
        let (b, at) = slot_of(i);
        let bucket =
            self.buckets[b].get_or_init(|| (0..1usize << b).map(|_| OnceLock::new()).collect());
        if bucket[at].set(item).is_err() {
            unreachable!("slot {i} filled twice: pushes are serialized");
        }
        self.len.store(i + 1, Ordering::Release);
        i
    }

    /// The number of leading items for which `pred` holds (they must come first, as
    /// for `slice::partition_point`).
    pub fn partition_point(&self, pred: impl Fn(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(item) if pred(item) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_stay_where_they_were_pushed() {
        let g = Grow::default();
        let first: *const u64 = {
            g.push(7u64);
            g.get(0).unwrap()
        };
        for i in 1..5000u64 {
            assert_eq!(g.push(i * 3) as u64, i);
        }
        assert_eq!(g.len(), 5000);
        assert!(std::ptr::eq(first, g.get(0).unwrap()));
        assert_eq!(g.get(4999), Some(&(4999 * 3)));
        assert_eq!(g.get(5000), None);
        assert_eq!(g.partition_point(|&x| x < 300), 100);
    }

    #[test]
    fn readers_see_whole_items_while_a_writer_appends() {
        let g = std::sync::Arc::new(Grow::default());
        let writer = {
            let g = g.clone();
            std::thread::spawn(move || {
                for i in 0..20_000usize {
                    g.push(vec![i; 3]);
                }
            })
        };
        while g.len() < 20_000 {
            let n = g.len();
            if n > 0 {
                assert_eq!(g.get(n - 1).unwrap(), &vec![n - 1; 3]);
            }
        }
        writer.join().unwrap();
    }
}
