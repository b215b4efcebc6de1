//! What `GET /tasks` reads of the registry, in one pass: the tasks grouped
//! with counts, and one page of tasks.
//!
//! Nothing is copied out per task: the pass counts each task in its group
//! (a map as large as the number of distinct groups) and keeps the page's
//! tasks in a heap bounded by the page's length, so a request costs one
//! walk of the map and memory for a page, whatever the number in flight.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::collections::hash_map::{Entry, HashMap};
use std::time::Instant;

use rustc_hash::FxBuildHasher;

use super::query::{Cursor, TasksQuery};
use crate::cell::TaskCell;
use crate::mode::ModeKind;
use crate::registry::Registry;
use crate::{Phase, TaskId, TaskInfo};

/// The most groups one answer lists (the largest); the rest are counted.
pub(super) const MAX_GROUPS: usize = 100;

/// The tasks of one name, phase, mode and state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupKey {
    pub(super) name: Cow<'static, str>,
    pub(super) phase: Phase,
    pub(super) mode: ModeKind,
    pub(super) running: bool,
}

/// A group's count and its oldest task.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) key: GroupKey,
    pub(super) count: usize,
    /// Its lowest id: groups are listed by it, oldest first.
    first: TaskId,
    /// Its earliest `schedule`.
    pub(super) oldest: Instant,
}

/// The groups counted so far.
///
/// Most names are `&'static str` (a literal, or derived from the task's type
/// path), the same string for every task of the group: those are found by
/// address first (a few words through a fast hash; addresses are not
/// chosen from outside), and only the first time by content. Other names
/// are found by content, with the default hasher (a name may carry outside
/// data: a cheap hash could then be made to collide).
#[derive(Default)]
struct Tallies {
    groups: Vec<Group>,
    by_key: HashMap<GroupKey, usize>,
    by_address: HashMap<(usize, usize, Phase, ModeKind, bool), usize, FxBuildHasher>,
}

impl Tallies {
    fn count(&mut self, key: GroupKey, id: TaskId, scheduled_at: Instant) {
        let address = match &key.name {
            Cow::Borrowed(name) => Some((
                name.as_ptr() as usize,
                name.len(),
                key.phase,
                key.mode,
                key.running,
            )),
            Cow::Owned(_) => None,
        };
        let known = address.and_then(|address| self.by_address.get(&address).copied());
        let index = match known {
            Some(index) => index,
            None => {
                let index = match self.by_key.entry(key) {
                    Entry::Occupied(entry) => *entry.get(),
                    Entry::Vacant(entry) => {
                        let key = entry.key().clone();
                        entry.insert(self.groups.len());
                        self.groups.push(Group {
                            key,
                            count: 0,
                            first: id,
                            oldest: scheduled_at,
                        });
                        self.groups.len() - 1
                    }
                };
                if let Some(address) = address {
                    self.by_address.insert(address, index);
                }
                index
            }
        };
        let group = &mut self.groups[index];
        group.count += 1;
        group.first = group.first.min(id);
        group.oldest = group.oldest.min(scheduled_at);
    }
}

/// One answer of `GET /tasks`, read in one pass over the registry.
#[derive(Debug)]
pub(super) struct Listing {
    /// Every task seen (the sum of the groups' counts and the omitted ones).
    pub(super) in_flight: usize,
    /// The [`MAX_GROUPS`] largest (the oldest first among equals), listed
    /// the group whose oldest task is oldest first.
    pub(super) groups: Vec<Group>,
    pub(super) groups_omitted: usize,
    pub(super) tasks_in_omitted_groups: usize,
    /// The tasks that match the filter.
    pub(super) total: usize,
    /// Of those, how many are older than the page (listed before it).
    pub(super) older: usize,
    /// The page, oldest first (by id, which is schedule order).
    pub(super) tasks: Vec<TaskInfo>,
    /// `after=` for the next page (newer tasks), if there are any.
    pub(super) next_after: Option<u64>,
    /// `before=` for the previous page (older tasks), if there are any.
    pub(super) prev_before: Option<u64>,
}

/// Reads the groups and the page `query` asks for.
pub(super) fn list(registry: &Registry<TaskCell>, query: &TasksQuery) -> Listing {
    let mut tallies = Tallies::default();
    let mut page = Nearest::new(query.cursor, query.limit);
    let (mut in_flight, mut total, mut beyond_cursor) = (0, 0, 0);
    registry.for_each(|cell| {
        in_flight += 1;
        let key = GroupKey {
            name: cell.name(),
            phase: cell.phase,
            mode: cell.mode,
            running: cell.is_started(),
        };
        let id = cell.id;
        let matches = query
            .filter
            .matches(&key.name, key.phase, key.mode, key.running);
        tallies.count(key, id, cell.scheduled_at());
        if matches {
            total += 1;
            if !page.offer(id, cell) {
                beyond_cursor += 1;
            }
        }
    });

    let (cells, more) = page.into_sorted();
    let tasks: Vec<TaskInfo> = cells.iter().map(|cell| cell.info()).collect();
    let (first, last) = (
        tasks.first().map(|info| info.id.as_u64()),
        tasks.last().map(|info| info.id.as_u64()),
    );
    // `beyond_cursor`: tasks on the cursor's other side (at or before
    // `after`, at or after `before`).
    let (older, next_after, prev_before) = match query.cursor {
        Cursor::After(after) => (
            beyond_cursor,
            more.then_some(last).flatten(),
            (beyond_cursor > 0).then(|| first.unwrap_or(after.saturating_add(1))),
        ),
        Cursor::Before(before) => (
            total - beyond_cursor - tasks.len(),
            (beyond_cursor > 0).then(|| last.unwrap_or(before.saturating_sub(1))),
            more.then_some(first).flatten(),
        ),
    };

    let mut groups = tallies.groups;
    let (groups_omitted, tasks_in_omitted_groups) = if groups.len() > MAX_GROUPS {
        // The largest: where the tasks are. A small group's old task still
        // heads the page of tasks.
        groups.select_nth_unstable_by_key(MAX_GROUPS - 1, |group| {
            (std::cmp::Reverse(group.count), group.first)
        });
        let omitted = groups.split_off(MAX_GROUPS);
        (omitted.len(), omitted.iter().map(|group| group.count).sum())
    } else {
        (0, 0)
    };
    groups.sort_unstable_by_key(|group| group.first);

    Listing {
        in_flight,
        groups,
        groups_omitted,
        tasks_in_omitted_groups,
        total,
        older,
        tasks,
        next_after,
        prev_before,
    }
}

/// The `limit` tasks nearest a cursor on its paging side, and one more to
/// tell whether there are others: a max-heap on the distance from the
/// cursor, never longer than `limit + 1`.
struct Nearest<T> {
    cursor: Cursor,
    /// `limit + 1`.
    keep: usize,
    heap: BinaryHeap<ByDistance<T>>,
}

impl<T> Nearest<T> {
    fn new(cursor: Cursor, limit: usize) -> Self {
        Nearest {
            cursor,
            keep: limit + 1,
            heap: BinaryHeap::with_capacity(limit + 1),
        }
    }

    /// How far `id` lies from the cursor on its paging side; `None` on the
    /// other side (or on the cursor itself).
    fn distance(&self, id: TaskId) -> Option<u64> {
        let id = id.as_u64();
        match self.cursor {
            Cursor::After(after) => id.checked_sub(after).filter(|&d| d > 0),
            Cursor::Before(before) => before.checked_sub(id).filter(|&d| d > 0),
        }
    }

    /// Keeps `value` if it is among the nearest so far (cloning it only
    /// then); false if it lies behind the cursor.
    fn offer(&mut self, id: TaskId, value: &T) -> bool
    where
        T: Clone,
    {
        let Some(distance) = self.distance(id) else {
            return false;
        };
        if self.heap.len() < self.keep {
            self.heap.push(ByDistance {
                distance,
                value: value.clone(),
            });
        } else if let Some(mut farthest) = self.heap.peek_mut() {
            if distance < farthest.distance {
                *farthest = ByDistance {
                    distance,
                    value: value.clone(),
                };
            }
        }
        true
    }

    /// The nearest `limit`, in id order, and whether there were more.
    fn into_sorted(self) -> (Vec<T>, bool) {
        let limit = self.keep - 1;
        // Ascending distance: nearest first.
        let mut kept: Vec<T> = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|entry| entry.value)
            .collect();
        let more = kept.len() > limit;
        kept.truncate(limit);
        if let Cursor::Before(_) = self.cursor {
            // Nearest first is newest first: turn to id order.
            kept.reverse();
        }
        (kept, more)
    }
}

struct ByDistance<T> {
    distance: u64,
    value: T,
}

impl<T> PartialEq for ByDistance<T> {
    fn eq(&self, other: &Self) -> bool {
        self.distance == other.distance
    }
}

impl<T> Eq for ByDistance<T> {}

impl<T> PartialOrd for ByDistance<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for ByDistance<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.cmp(&other.distance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids of `ids` (in any order) that a page at `cursor` lists.
    fn page(cursor: Cursor, limit: usize, ids: &[u64]) -> (Vec<u64>, bool, usize) {
        let mut nearest = Nearest::new(cursor, limit);
        let mut behind = 0;
        for &id in ids {
            if !nearest.offer(TaskId(id), &id) {
                behind += 1;
            }
        }
        let (kept, more) = nearest.into_sorted();
        (kept, more, behind)
    }

    #[test]
    fn after_keeps_the_oldest_above_the_cursor() {
        let ids = [9, 3, 7, 1, 5, 8, 2, 6, 4];
        assert_eq!(page(Cursor::After(0), 3, &ids), (vec![1, 2, 3], true, 0));
        assert_eq!(page(Cursor::After(3), 3, &ids), (vec![4, 5, 6], true, 3));
        assert_eq!(page(Cursor::After(6), 3, &ids), (vec![7, 8, 9], false, 6));
        assert_eq!(page(Cursor::After(9), 3, &ids), (vec![], false, 9));
        assert_eq!(
            page(Cursor::After(0), 50, &ids).0,
            (1..=9).collect::<Vec<_>>()
        );
    }

    #[test]
    fn before_keeps_the_newest_below_the_cursor() {
        let ids = [9, 3, 7, 1, 5, 8, 2, 6, 4];
        assert_eq!(
            page(Cursor::Before(u64::MAX), 3, &ids),
            (vec![7, 8, 9], true, 0)
        );
        assert_eq!(page(Cursor::Before(7), 3, &ids), (vec![4, 5, 6], true, 3));
        assert_eq!(page(Cursor::Before(4), 3, &ids), (vec![1, 2, 3], false, 6));
        assert_eq!(page(Cursor::Before(1), 3, &ids), (vec![], false, 9));
    }

    #[test]
    fn gaps_left_by_ended_tasks_do_not_move_a_page() {
        // Tasks 4 and 5 ended: the page after 3 starts at the next one left.
        let ids = [1, 2, 3, 6, 7, 8, 9];
        assert_eq!(page(Cursor::After(3), 2, &ids), (vec![6, 7], true, 3));
        assert_eq!(page(Cursor::Before(6), 2, &ids), (vec![2, 3], true, 4));
    }
}
