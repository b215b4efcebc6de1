//! How the registry hashes task ids: by runs of 16 consecutive ids.
//!
//! Ids are issued one after another, and tasks mostly end in about the order
//! they started. A hash that scatters every id (Fx's multiply) puts each
//! insert and each remove on its own cache line of the map's table: with a
//! million tasks in flight, two misses per task. Here the 16 ids of a run
//! share one spot, picked by multiplying the run's number: a run's entries sit
//! in 16 adjacent slots of one shard (four cache lines of entries, one of
//! control bytes), while runs are spread as widely as Fx spreads ids.
//!
//! The hash's parts, as `dashmap` and `hashbrown` read them: the low bits
//! place an entry in its table (the run's spot plus the id's place in the
//! run); bits 54–56 and up (the shard) come from the run's spot alone; the top
//! 7 bits (the control byte, compared before the key) differ between the ids
//! of a run, so a lookup compares one key, not sixteen.
//!
//! Ids come only from the registry (never from a request), so nothing outside
//! can aim ids at one spot. A run is 16 slots, one `hashbrown` probe group.

use std::hash::{BuildHasher, Hasher};

/// Ids per run: one `hashbrown` probe group.
const RUN: u64 = 16;
/// The top 7 bits: `hashbrown`'s control byte.
const TAG: u64 = 0x7F << 57;
/// An odd constant near 2^64 / φ: multiplying by it spreads consecutive run
/// numbers across the whole range (Fibonacci hashing).
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// Builds [`IdHasher`]s (stateless).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ids;

impl BuildHasher for Ids {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// Hashes one task id (a `u64`); see the module docs.
#[derive(Debug)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write_u64(&mut self, id: u64) {
        let spot = (id / RUN).wrapping_mul(SPREAD);
        let place = id % RUN;
        // The run's spot without its low 4 bits and its tag, then the id's
        // place in the run, and a tag of its own.
        self.0 = (spot & !(RUN - 1) & !TAG) | place | ((spot ^ place.wrapping_mul(SPREAD)) & TAG);
    }

    /// Not used by task ids (they hash as one `u64`); any other input is
    /// folded in the same way, so that the hasher stays a hasher.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*byte));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(id: u64) -> u64 {
        Ids.hash_one(crate::TaskId(id))
    }

    #[test]
    fn a_run_of_ids_shares_a_spot_and_a_shard_but_not_a_tag() {
        let base = hash(32) & !(RUN - 1) & !TAG;
        let mut tags = std::collections::HashSet::new();
        for id in 32..48 {
            let h = hash(id);
            assert_eq!(h & !(RUN - 1) & !TAG, base, "id {id} left its run's spot");
            assert_eq!(h & (RUN - 1), id % RUN, "id {id} is not at its place");
            tags.insert(h >> 57);
        }
        assert!(tags.len() >= 12, "the ids of a run share tags: {tags:?}");
    }

    #[test]
    fn runs_spread_over_shards_and_slots() {
        // dashmap's shard of a hash, for 8 shards: bits 54..57.
        let shard = |h: u64| ((h << 7) >> 61) as usize;
        let mut shards = [0usize; 8];
        let mut slots = std::collections::HashSet::new();
        for run in 0..4_096u64 {
            let h = hash(run * RUN);
            shards[shard(h)] += 1;
            slots.insert((h & ((1 << 16) - 1)) >> 4);
        }
        for count in shards {
            assert!(
                (384..=640).contains(&count),
                "shards unevenly used: {shards:?}"
            );
        }
        assert!(
            slots.len() > 2_500,
            "runs crowd into {} of 4,096 spots",
            slots.len()
        );
    }
}
