//! Running the `groklens` binary from a test: one place that spawns it, and the checks every CLI
//! test makes (success with its output, failure naming what it must name, never a panic).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A `groklens` command, ready for arguments.
pub fn groklens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_groklens"))
}

/// Runs `groklens ARGS` to the end.
pub fn output(args: &[&str]) -> Output {
    groklens().args(args).output().unwrap()
}

/// Standard output then standard error, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `groklens ARGS`, asserts it succeeded, and returns what it printed.
pub fn succeeds(args: &[&str]) -> String {
    let out = output(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    text(&out)
}

/// Runs `groklens ARGS`, asserts it failed without a panic and printed every needle; returns the text.
pub fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let out = output(args);
    let t = text(&out);
    assert!(!out.status.success(), "{args:?} should fail: {t}");
    for n in needles {
        assert!(t.contains(n), "{args:?}: output lacks {n:?}: {t}");
    }
    assert!(!t.contains("panicked"), "{args:?} panicked: {t}");
    t
}

/// Polls `done` every few milliseconds until it holds, failing the test with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `["--set", s]` for each setting, to extend an argument list with.
pub fn sets<'a>(settings: &[&'a str]) -> Vec<&'a str> {
    settings.iter().flat_map(|s| ["--set", s]).collect()
}
