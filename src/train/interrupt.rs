//! SIGINT and SIGTERM as a request to stop: the training loop finishes its epoch, writes a
//! checkpoint and returns [`crate::GrokError::Interrupted`], so a stopped run resumes where it was.
//! Only a front end that wants this calls [`install`]; until then the signals keep their default.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the stop request (Unix; a no-op elsewhere).
pub fn install() {
    #[cfg(unix)]
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Gives SIGINT and SIGTERM back their default (the process ends), for the work after training
/// (a report) that does not check for a stop request.
pub fn uninstall() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
}

/// True once SIGINT or SIGTERM arrived after [`install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
