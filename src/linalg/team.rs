//! A team of threads for work that comes in phases: a minibatch step of ~1 ms is several short
//! parallel sections in a row (lookup tables, then the chunks, then their sums, then the table
//! gradients), and waking a thread for each costs a noticeable share of it. A team is formed once
//! per step; between phases its threads wait by spinning, for microseconds.
//!
//! The helpers are threads of this module's own, kept between teams: one that leaves a team
//! lingers, awake, for [`LINGER`] before it sleeps, so the next team (the optimizer's after the
//! gradients', the next step's after the optimizer's) finds it awake. On a 2-core KVM guest, a
//! helper woken from sleep (rayon's pool, which teams used before) joined 50–90 µs after the team
//! opened — a tenth of one of seed 002's 0.7 ms steps — and a lingering one joins in 1–1.5 µs.
//!
//! A process forked from one that has helpers (Python's `multiprocessing`) has none of their
//! threads: its first team starts helpers of its own (`tests/fork.rs`).
//!
//! Any thread runs any item, the caller included: the caller starts on the first phase at once and
//! runs every item itself when no helper has arrived (all are busy in other teams, or one thread
//! was asked for), so a busy helper delays the work and never deadlocks it. Which thread runs an
//! item never changes a result: items own disjoint outputs. Scratch they need while they run comes
//! from a [`Pool`], one per item running at once rather than one per item.

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Values per item where a phase splits long buffers into ranges (64 KiB: a range and its operands
/// stay in L2 while the item runs).
pub const ITEM_VALUES: usize = 16 * 1024;

/// How long a helper that has left a team waits awake for the next one before it sleeps.
pub const LINGER: Duration = Duration::from_micros(200);

/// One unit of work of a phase.
pub type Item<'p> = Box<dyn FnOnce() + Send + 'p>;

/// Locks `m`; items and helpers never panic while holding a lock, so a poisoned one is recovered.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A phase's unclaimed items (last to be claimed first) and what its finished ones reported.
#[derive(Default)]
struct Queue {
    /// Lifetimes erased: [`Team::phase`] returns only once every item has run and been dropped.
    items: Vec<Item<'static>>,
    /// The first panic an item raised, re-raised on the caller's thread when the phase ends.
    panic: Option<Box<dyn Any + Send>>,
}

/// What a team's caller and its helpers share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Items of the current phase not yet finished (queued or running).
    pending: AtomicUsize,
    /// Bumped when a phase is published, so a waiting helper polls one atomic, not the lock.
    generation: AtomicUsize,
    /// Set when the caller's work is done: helpers leave.
    closed: AtomicBool,
}

impl Shared {
    /// Claims and runs one item of the current phase; false when none is left to claim.
    fn run_one(&self) -> bool {
        let Some(item) = lock(&self.queue).items.pop() else {
            return false;
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(item)) {
            lock(&self.queue).panic.get_or_insert(panic);
        }
        self.pending.fetch_sub(1, Ordering::Release);
        true
    }

    /// A helper's time in the team: runs items of each phase published until the caller closes it.
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
                wait.pause();
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
}

/// A team that still wants helpers, and how many more.
struct Opening {
    team: Arc<Shared>,
    wanted: usize,
}

/// Where helper threads wait between teams, and the teams that want them.
struct Lobby {
    /// Open teams, oldest first; helpers sleep on `woken` under this lock.
    open: Mutex<Openings>,
    woken: Condvar,
    /// Bumped whenever a team opens, so a lingering helper polls one atomic, not the lock.
    posted: AtomicUsize,
}

/// What the lobby's lock guards.
struct Openings {
    teams: Vec<Opening>,
    /// Helper threads started (they never exit), and how many of them sleep on `woken`.
    threads: usize,
    asleep: usize,
    /// The process they were started in: a child made by `fork` (Python's `multiprocessing`, say)
    /// inherits these counts but none of the threads, and starts helpers of its own.
    pid: u32,
}

impl Openings {
    /// No teams and no helpers yet, in process `pid`.
    const fn none_in(pid: u32) -> Self {
        Openings {
            teams: Vec::new(),
            threads: 0,
            asleep: 0,
            pid,
        }
    }
}

/// The process's helpers.
static LOBBY: Lobby = Lobby::new();

impl Lobby {
    const fn new() -> Self {
        Lobby {
            open: Mutex::new(Openings::none_in(0)),
            woken: Condvar::new(),
            posted: AtomicUsize::new(0),
        }
    }

    /// Opens `team` to `helpers` helpers, starting threads until there are as many as the largest
    /// team asked for (one that cannot start is simply not there: the caller runs the items).
    fn open(&'static self, team: &Arc<Shared>, helpers: usize) {
        let mut open = lock(&self.open);
        let pid = std::process::id();
        if open.pid != pid {
            // A new process (or a forked child, whose parent's helpers and teams are not here).
            *open = Openings::none_in(pid);
        }
        open.teams.push(Opening {
            team: team.clone(),
            wanted: helpers,
        });
        self.posted.fetch_add(1, Ordering::Release);
        while open.threads < helpers {
            let started = std::thread::Builder::new()
                .name("groklens-team".into())
                .spawn(move || self.serve());
            if started.is_err() {
                break;
            }
            open.threads += 1;
        }
        if open.asleep > 0 {
            self.woken.notify_all();
        }
    }

    /// Withdraws `team`'s opening, if helpers are still wanted for it.
    fn close(&self, team: &Arc<Shared>) {
        lock(&self.open)
            .teams
            .retain(|o| !Arc::ptr_eq(&o.team, team));
    }

    /// A helper thread: joins open teams one after another, lingering between them and sleeping
    /// when none opens for [`LINGER`].
    fn serve(&self) {
        loop {
            let team = self
                .claim_lingering()
                .unwrap_or_else(|| self.claim_asleep());
            team.help();
        }
    }

    /// Takes one place in the oldest open team, if any.
    fn take(open: &mut Openings) -> Option<Arc<Shared>> {
        let at = open.teams.iter().position(|o| o.wanted > 0)?;
        let opening = &mut open.teams[at];
        opening.wanted -= 1;
        let team = opening.team.clone();
        if opening.wanted == 0 {
            open.teams.remove(at);
        }
        Some(team)
    }

    /// A place in a team that opens (or is open) within [`LINGER`], waiting awake.
    fn claim_lingering(&self) -> Option<Arc<Shared>> {
        let since = Instant::now();
        let mut wait = Backoff::default();
        loop {
            let posted = self.posted.load(Ordering::Acquire);
            if let Some(team) = Self::take(&mut lock(&self.open)) {
                return Some(team);
            }
            while self.posted.load(Ordering::Acquire) == posted {
                if since.elapsed() > LINGER {
                    return None;
                }
                wait.pause();
            }
        }
    }

    /// A place in the next team that opens, asleep until one does.
    fn claim_asleep(&self) -> Arc<Shared> {
        let mut open = lock(&self.open);
        loop {
            if let Some(team) = Self::take(&mut open) {
                return team;
            }
            open.asleep += 1;
            open = self
                .woken
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
            open.asleep -= 1;
        }
    }
}

/// The caller's handle on a team: publishes phases one after the other (see [`with_team`]).
pub struct Team<'s> {
    lobby: &'static Lobby,
    shared: Option<&'s Arc<Shared>>,
    /// Helpers the team is opened to at its first phase (so that work the caller does before it,
    /// such as preparing weights, is not shared with a spinning helper).
    helpers: usize,
    opened: Cell<bool>,
    /// Not `Sync`: items cannot capture the team and start a phase inside a phase.
    _not_sync: PhantomData<*const ()>,
}

impl Team<'_> {
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
        if !self.opened.replace(true) {
            self.lobby.open(shared, self.helpers);
        }
        items.reverse();
        // SAFETY: only the lifetime changes. Every item is claimed from the queue and dropped
        // after it runs, and `pending` counts it down only then; this function returns only when
        // `pending` is 0, so no item (nor anything it borrows for 'p) outlives this call. An item
        // that panics is caught in `run_one`, so this thread never unwinds past the wait below.
        // Helpers hold the `Shared` itself (an `Arc`) and may look at it after the team is gone,
        // but find its queue empty.
        let items: Vec<Item<'static>> = unsafe { std::mem::transmute(items) };
        shared.pending.store(items.len(), Ordering::Release);
        lock(&shared.queue).items = items;
        shared.generation.fetch_add(1, Ordering::Release);
        while shared.run_one() {}
        let mut wait = Backoff::default();
        while shared.pending.load(Ordering::Acquire) > 0 {
            wait.pause();
        }
        if let Some(panic) = lock(&shared.queue).panic.take() {
            resume_unwind(panic);
        }
    }
}

/// The team closes when its caller's work is done, or unwinds: its helpers leave.
impl Drop for Team<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared {
            shared.closed.store(true, Ordering::Release);
            self.lobby.close(shared);
        }
    }
}

/// Runs `work` with a team of `threads` threads: the caller and `threads − 1` helpers, which join
/// at the first phase `work` publishes (those not busy in another team), stay for every later one
/// and leave when `work` returns. With one thread, phases run their items in order on the caller.
pub fn with_team<R>(threads: usize, work: impl FnOnce(&Team) -> R) -> R {
    with_team_in(&LOBBY, threads, work)
}

/// [`with_team`] with the helpers of `lobby`.
fn with_team_in<R>(lobby: &'static Lobby, threads: usize, work: impl FnOnce(&Team) -> R) -> R {
    let shared = (threads > 1).then(|| Arc::new(Shared::default()));
    let team = Team {
        lobby,
        shared: shared.as_ref(),
        helpers: threads.saturating_sub(1),
        opened: Cell::new(false),
        _not_sync: PhantomData,
    };
    work(&team)
}

/// Scratch that a phase's items take and give back: an item runs in whichever one is free (the one
/// given back last first), so there are only as many as items ever ran at once — at most one per
/// thread of the team — however many items the phase has. Each item must overwrite what it reads,
/// so that its result does not depend on which one it got.
pub struct Pool<W>(Mutex<Vec<W>>);

impl<W: Default> Pool<W> {
    /// A pool holding `scratch` (from the last phase).
    pub fn new(scratch: Vec<W>) -> Self {
        Pool(Mutex::new(scratch))
    }

    /// Runs `job` in a free one (a new one if none is free) and gives it back.
    pub fn with<R>(&self, job: impl FnOnce(&mut W) -> R) -> R {
        let free = lock(&self.0).pop();
        let mut w = free.unwrap_or_default();
        let result = job(&mut w);
        lock(&self.0).push(w);
        result
    }

    /// Every one, for the next phase.
    pub fn into_inner(self) -> Vec<W> {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sixteen items on a team of two take their scratch from one pool: every item runs in one, and
    /// the pool ends with one per item that ran at the same time, at most one per thread, not one per
    /// item.
    #[test]
    fn a_pool_holds_one_scratch_per_item_running_at_once() {
        let pool = Pool::new(Vec::<Vec<usize>>::new());
        with_team(2, |team| {
            let pool = &pool;
            let item = move |c: usize| -> Item {
                Box::new(move || {
                    pool.with(|ws| {
                        ws.push(c);
                        std::thread::sleep(std::time::Duration::from_micros(300));
                    })
                })
            };
            team.phase((0..16).map(item).collect());
        });
        let scratch = pool.into_inner();
        assert!((1..=2).contains(&scratch.len()), "{scratch:?}");
        let mut ran = scratch.concat();
        ran.sort_unstable();
        assert_eq!(ran, (0..16).collect::<Vec<_>>());
    }

    /// Three phases on a team of `threads` over `len` zeros, items of `per_item` values each: every
    /// item checks that the previous phase finished (its values are round − 1) and sets them to
    /// round; returns the values (3 each when every item ran once per phase).
    fn three_ordered_phases(threads: usize, len: usize, per_item: usize) -> Vec<usize> {
        let mut out = vec![0usize; len];
        with_team(threads, |team| {
            for round in 1..=3 {
                let items: Vec<Item> = out
                    .chunks_mut(per_item)
                    .map(|c| {
                        Box::new(move || {
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
        out
    }

    #[test]
    fn phases_run_every_item_once_and_in_order() {
        for threads in [1, 2, 3, 5] {
            assert_eq!(
                three_ordered_phases(threads, 40, 3),
                vec![3; 40],
                "{threads} threads"
            );
        }
    }

    /// Items that form teams of their own (wanting more helpers than there are threads to spare)
    /// still finish: an inner team's caller runs every item no helper is free for.
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

    /// Callers on several threads at once, each forming team after team, share the helpers: every
    /// team's items run once and in phase order whichever helpers join it, or none.
    #[test]
    fn teams_of_concurrent_callers_share_the_helpers() {
        std::thread::scope(|scope| {
            for caller in 0..4usize {
                scope.spawn(move || {
                    for team_no in 0..150usize {
                        let out = three_ordered_phases(2 + caller % 2, 24, 2);
                        assert_eq!(out, vec![3; 24], "caller {caller}, team {team_no}");
                    }
                });
            }
        });
    }

    /// A helper that has slept (no team for longer than [`LINGER`]) is woken by the next team:
    /// each team's two items wait for each other, so they finish only if a helper runs one of them
    /// while the caller runs the other. A lobby of the test's own, so no other test's team holds
    /// its helper.
    #[test]
    fn a_sleeping_helper_joins_the_next_team() {
        let lobby: &'static Lobby = Box::leak(Box::new(Lobby::new()));
        for team_no in 0..3 {
            let started = AtomicUsize::new(0);
            with_team_in(lobby, 2, |team| {
                let items: Vec<Item> = (0..2)
                    .map(|_| {
                        let started = &started;
                        Box::new(move || {
                            started.fetch_add(1, Ordering::AcqRel);
                            let since = Instant::now();
                            while started.load(Ordering::Acquire) < 2 {
                                let waited = since.elapsed();
                                assert!(waited < Duration::from_secs(60), "no helper joined");
                                std::thread::yield_now();
                            }
                        }) as Item
                    })
                    .collect();
                team.phase(items);
            });
            assert_eq!(started.load(Ordering::Acquire), 2, "team {team_no}");
            // The helper stops lingering and sleeps before the next team opens.
            let since = Instant::now();
            while lock(&lobby.open).asleep == 0 {
                assert!(
                    since.elapsed() < Duration::from_secs(60),
                    "the helper never slept"
                );
                std::thread::sleep(LINGER);
            }
        }
        assert_eq!(
            lock(&lobby.open).threads,
            1,
            "one helper, reused by every team"
        );
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
