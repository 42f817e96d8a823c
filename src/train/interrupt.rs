//! SIGINT and SIGTERM as a request to stop: the training loop finishes its epoch, writes a
//! checkpoint and returns [`crate::GrokError::Interrupted`], so a stopped run resumes where it was.
//! Only a front end that wants this takes a [`StopOnSignal`]; while none is held the signals keep
//! whatever disposition the process gave them (the default, or a Python interpreter's handler).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// While held, SIGINT and SIGTERM request a stop instead of ending the process; dropping it puts
/// back the handlers that were there before (Unix; a no-op elsewhere). A new guard starts with no
/// request pending, so one interrupted run does not stop the next one in the same process.
pub struct StopOnSignal {
    #[cfg(unix)]
    previous: [libc::sighandler_t; 2],
}

#[cfg(unix)]
const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

impl StopOnSignal {
    /// Routes SIGINT and SIGTERM to the stop request.
    pub fn install() -> Self {
        REQUESTED.store(false, Ordering::SeqCst);
        #[cfg(unix)]
        {
            let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            let previous = SIGNALS.map(|s| unsafe { libc::signal(s, handler) });
            StopOnSignal { previous }
        }
        #[cfg(not(unix))]
        StopOnSignal {}
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        #[cfg(unix)]
        for (s, h) in SIGNALS.iter().zip(self.previous) {
            // SAFETY: restoring the disposition `install` found.
            unsafe {
                libc::signal(*s, h);
            }
        }
    }
}

/// True once SIGINT or SIGTERM arrived while a [`StopOnSignal`] was held.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
