//! A team of threads for work that comes in phases: a minibatch step of ~1 ms is several short
//! parallel sections in a row (lookup tables, then the chunks, then their sums, then the table
//! gradients), and waking a thread pool for each costs a noticeable share of it. A team is woken
//! once; between phases its threads wait by spinning, for microseconds.
//!
//! Any thread runs any item, the caller included: the caller starts on the first phase at once and
//! runs every item itself when no helper has arrived (the pool is busy, or one thread was asked
//! for), so a busy pool delays the work and never deadlocks it. Which thread runs an item never
//! changes a result: items own disjoint outputs.

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Values per item where a phase splits long buffers into ranges (64 KiB: a range and its operands
/// stay in L2 while the item runs).
pub const ITEM_VALUES: usize = 16 * 1024;

/// One unit of work of a phase.
pub type Item<'p> = Box<dyn FnOnce() + Send + 'p>;

/// A phase's unclaimed items (last to be claimed first) and what its finished ones reported.
#[derive(Default)]
struct Queue {
    /// Lifetimes erased: [`Team::phase`] returns only once every item has run and been dropped.
    items: Vec<Item<'static>>,
    /// The first panic an item raised, re-raised on the caller's thread when the phase ends.
    panic: Option<Box<dyn Any + Send>>,
}

/// What the caller and its helpers share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Items of the current phase not yet finished (queued or running).
    pending: AtomicUsize,
    /// Bumped when a phase is published, so a waiting helper polls one atomic, not the lock.
    generation: AtomicUsize,
    /// Set when the caller's work is done: helpers return.
    closed: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Items run outside the lock, so it is never poisoned by one; recover regardless.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims and runs one item of the current phase; false when none is left to claim.
    fn run_one(&self) -> bool {
        let Some(item) = self.queue().items.pop() else {
            return false;
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(item)) {
            self.queue().panic.get_or_insert(panic);
        }
        self.pending.fetch_sub(1, Ordering::Release);
        true
    }

    /// A helper: runs items of each phase published until the caller closes the team.
    fn help(&self) {
        let mut seen = 0;
        loop {
            let mut wait = Backoff::default();
            loop {
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                let now = self.generation.load(Ordering::Acquire);
                if now != seen {
                    seen = now;
                    break;
                }
                wait.pause_helping();
            }
            while self.run_one() {}
        }
    }
}

/// Spins briefly, then yields the core (the wait between phases is microseconds; a thread
/// descheduled by a busy host must not be spun on for long).
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn pause(&mut self) {
        if self.0 < 64 {
            (0..1 << self.0.min(6)).for_each(|_| std::hint::spin_loop());
        } else {
            std::thread::yield_now();
        }
        self.0 += 1;
    }

    /// A helper's pause: once spinning is over, it first runs another pending job of rayon's pool
    /// if there is one, so a team formed inside an item (whose own helper may be queued behind
    /// this one) always finds a thread.
    fn pause_helping(&mut self) {
        if self.0 < 64 || rayon::yield_now() != Some(rayon::Yield::Executed) {
            self.pause();
        }
    }
}

/// The caller's handle on a team: publishes phases one after the other (see [`with_team`]).
pub struct Team<'r, 's> {
    shared: Option<&'s Shared>,
    /// Where the helpers are spawned, at the first phase (so that work the caller does before it,
    /// such as preparing weights, is not shared with a spinning helper), and how many.
    spawn: Option<(&'r rayon::Scope<'s>, usize)>,
    spawned: Cell<bool>,
    /// Not `Sync`: items cannot capture the team and start a phase inside a phase.
    _not_sync: PhantomData<*const ()>,
}

impl Team<'_, '_> {
    /// Runs every item of `items`, on this thread and the team's helpers, and returns when all
    /// have finished; an item's panic is re-raised here once the others are done.
    pub fn phase<'p>(&self, mut items: Vec<Item<'p>>) {
        let Some(shared) = self.shared else {
            items.into_iter().for_each(|item| item());
            return;
        };
        if items.is_empty() {
            return;
        }
        if let (false, Some((scope, helpers))) = (self.spawned.replace(true), self.spawn) {
            for _ in 0..helpers {
                scope.spawn(move |_| shared.help());
            }
        }
        items.reverse();
        // SAFETY: only the lifetime changes. Every item is claimed from the queue and dropped
        // after it runs, and `pending` counts it down only then; this function returns only when
        // `pending` is 0, so no item (nor anything it borrows for 'p) outlives this call. An item
        // that panics is caught in `run_one`, so this thread never unwinds past the wait below.
        let items: Vec<Item<'static>> = unsafe { std::mem::transmute(items) };
        shared.pending.store(items.len(), Ordering::Release);
        shared.queue().items = items;
        shared.generation.fetch_add(1, Ordering::Release);
        while shared.run_one() {}
        let mut wait = Backoff::default();
        while shared.pending.load(Ordering::Acquire) > 0 {
            wait.pause();
        }
        if let Some(panic) = shared.queue().panic.take() {
            resume_unwind(panic);
        }
    }
}

/// Runs `work` with a team of `threads` threads: the caller and `threads − 1` helpers from rayon's
/// pool, which join at the first phase `work` publishes, stay for every later one and leave when
/// `work` returns. With one thread, phases run their items in order on the caller.
pub fn with_team<R>(threads: usize, work: impl FnOnce(&Team) -> R) -> R {
    if threads <= 1 {
        return work(&Team {
            shared: None,
            spawn: None,
            spawned: Cell::new(false),
            _not_sync: PhantomData,
        });
    }
    let shared = Shared::default();
    rayon::in_place_scope(|scope| {
        // Helpers must leave even if `work` panics, or the scope would wait for them forever.
        struct Close<'a>(&'a Shared);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.closed.store(true, Ordering::Release);
            }
        }
        let _close = Close(&shared);
        work(&Team {
            shared: Some(&shared),
            spawn: Some((scope, threads - 1)),
            spawned: Cell::new(false),
            _not_sync: PhantomData,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_run_every_item_once_and_in_order() {
        for threads in [1, 2, 3, 5] {
            let mut out = vec![0usize; 40];
            with_team(threads, |team| {
                for round in 1..=3 {
                    let items: Vec<Item> = out
                        .chunks_mut(3)
                        .map(|c| {
                            Box::new(move || {
                                // Each phase sees the previous one finished: every value is round − 1.
                                c.iter_mut().for_each(|v| {
                                    assert_eq!(*v, round - 1);
                                    *v = round;
                                })
                            }) as Item
                        })
                        .collect();
                    team.phase(items);
                }
            });
            assert_eq!(out, vec![3; 40], "{threads} threads");
        }
    }

    /// Items that form teams of their own (more helpers than the pool has threads to spare) still
    /// finish: a waiting helper runs the queued helpers, and a caller runs every item itself.
    #[test]
    fn teams_formed_inside_items_finish() {
        let mut out = vec![0u64; 64];
        with_team(3, |team| {
            let items: Vec<Item> = out
                .chunks_mut(16)
                .map(|part| {
                    Box::new(move || {
                        with_team(3, |inner| {
                            let items: Vec<Item> = part
                                .chunks_mut(4)
                                .map(|c| {
                                    Box::new(move || c.iter_mut().for_each(|v| *v += 1)) as Item
                                })
                                .collect();
                            inner.phase(items);
                        })
                    }) as Item
                })
                .collect();
            team.phase(items);
        });
        assert_eq!(out, vec![1; 64]);
    }

    #[test]
    fn a_panicking_item_reaches_the_caller_after_the_phase() {
        let done = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            with_team(2, |team| {
                let items: Vec<Item> = (0..8)
                    .map(|i| {
                        let done = &done;
                        Box::new(move || {
                            if i == 3 {
                                panic!("item 3");
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }) as Item
                    })
                    .collect();
                team.phase(items);
            })
        }));
        assert!(caught.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 7, "the other items still ran");
    }
}
