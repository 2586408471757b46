//! Which ids the filesystem can show. A FUSE daemon's uids are read in the user
//! namespace of whoever mounted it; an id that namespace does not map would reach
//! the container as the overflow id ("nobody"). Such owners are shown as the
//! namespace's first mapped id instead, as DESIGN.md says.

use std::path::Path;

/// The ids mapped in one namespace: (first id inside, count) ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<(u32, u32)>,
}

impl IdMap {
    /// Every id maps: the initial namespace.
    pub fn identity() -> IdMap {
        IdMap {
            ranges: vec![(0, u32::MAX)],
        }
    }

    /// Parses `/proc/<pid>/uid_map` text: "inside outside count" per line.
    pub fn parse(text: &str) -> IdMap {
        let ranges: Vec<(u32, u32)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
                let (inside, _outside, count) = (fields.next()??, fields.next()??, fields.next()??);
                Some((inside, count))
            })
            .collect();
        IdMap { ranges }
    }

    /// The map of this process's own namespace (`/proc/self/uid_map` or `gid_map`).
    pub fn of_current(file: &str) -> IdMap {
        std::fs::read_to_string(Path::new("/proc/self").join(file))
            .map_or_else(|_| IdMap::identity(), |t| IdMap::parse(&t))
    }

    /// Whether the namespace maps `id`.
    pub fn maps(&self, id: u32) -> bool {
        self.ranges
            .iter()
            .any(|&(start, count)| id >= start && (id - start) < count)
    }

    /// `id` if the namespace can show it, else the first mapped id.
    pub fn show(&self, id: u32) -> u32 {
        if self.maps(id) {
            id
        } else {
            self.ranges.first().map_or(id, |&(start, _)| start)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squashes_what_is_not_mapped() {
        let one = IdMap::parse("         0       1000          1\n");
        assert_eq!(one.show(0), 0);
        assert_eq!(one.show(33), 0);
        let range = IdMap::parse("0 1000 1\n1 100000 65536\n");
        assert_eq!(range.show(33), 33);
        assert_eq!(range.show(65536), 65536);
        assert_eq!(range.show(65537), 0);
        assert_eq!(IdMap::parse("0 0 4294967295").show(123456), 123456);
    }
}
