//! A process forked after groklens has used its helper threads (Python's `multiprocessing` forks
//! by default on Linux before 3.14) inherits the helpers' bookkeeping but none of the threads; its
//! teams must start helpers of their own. In a test binary of its own: forking copies only the
//! forking thread, so no other test may hold a lock at that moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use groklens::linalg::team::{with_team, Item};

/// A 2-thread team whose two items wait for each other: it finishes only if a helper joins.
fn rendezvous() {
    let started = AtomicUsize::new(0);
    with_team(2, |team| {
        let items: Vec<Item> = (0..2)
            .map(|_| {
                let started = &started;
                Box::new(move || {
                    started.fetch_add(1, Ordering::AcqRel);
                    let since = Instant::now();
                    while started.load(Ordering::Acquire) < 2 {
                        assert!(
                            since.elapsed() < Duration::from_secs(30),
                            "no helper joined"
                        );
                        std::thread::yield_now();
                    }
                }) as Item
            })
            .collect();
        team.phase(items);
    });
}

#[test]
fn a_forked_child_starts_helpers_of_its_own() {
    rendezvous();
    // SAFETY: the child runs only `rendezvous` (allocation and thread creation, both safe after a
    // fork with glibc) and leaves with `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = std::panic::catch_unwind(rendezvous).is_ok();
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child's team did not finish (wait status {status})"
    );
}
