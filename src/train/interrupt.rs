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
/// back the handlers that were there before, exactly (Unix; a no-op elsewhere). A signal the process
/// ignores stays ignored: a job a non-interactive shell starts in the background has SIGINT ignored,
/// and a training it runs must not start honouring it. A new guard starts with no request pending,
/// so one interrupted run does not stop the next one in the same process.
pub struct StopOnSignal {
    /// Each signal routed here and the action it had before.
    #[cfg(unix)]
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

#[cfg(unix)]
const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

impl StopOnSignal {
    /// Routes SIGINT and SIGTERM, unless ignored, to the stop request.
    pub fn install() -> Self {
        REQUESTED.store(false, Ordering::SeqCst);
        #[cfg(unix)]
        {
            let mut previous = Vec::new();
            for signal in SIGNALS {
                // SAFETY: `sigaction` reads `action` and writes `old`, both valid for the call; the
                // handler only stores to an atomic, which is async-signal-safe.
                unsafe {
                    let mut old: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
                        || old.sa_sigaction == libc::SIG_IGN
                    {
                        continue;
                    }
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction =
                        on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                    action.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut action.sa_mask);
                    if libc::sigaction(signal, &action, &mut old) == 0 {
                        previous.push((signal, old));
                    }
                }
            }
            StopOnSignal { previous }
        }
        #[cfg(not(unix))]
        StopOnSignal {}
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        #[cfg(unix)]
        for (signal, old) in &self.previous {
            // SAFETY: restoring the action `install` found, flags and mask included.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}

/// True once SIGINT or SIGTERM arrived while a [`StopOnSignal`] was held.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
