//! Runs a sweep's points on this machine: a pool of workers, each training one point at a time in
//! its own `groklens sweep worker` process ([`WorkerArgs`]) (single-threaded by default: for small models several runs at
//! once use the cores better than one run on all of them) and then writing its report.
//!
//! Resumable: finished points are skipped, partial ones continue from their last checkpoint. Ctrl-C
//! reaches the worker processes too (one process group); every file a run writes is written
//! atomically, so an interrupted point resumes on the next call.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{GrokError, Result, EXIT_DIVERGED};
use crate::sweep::worker::WorkerArgs;
use crate::sweep::{Point, Status, SweepDir};

/// How the pool starts a worker: a program and the arguments that come before the worker's own (the
/// `groklens` binary alone; `python -m groklens` for the Python package, whose wheel has no binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// The program.
    pub program: PathBuf,
    /// Arguments before [`WorkerArgs::to_args`].
    pub prefix: Vec<OsString>,
}

impl Launcher {
    /// The `groklens` executable at `exe`.
    pub fn binary(exe: PathBuf) -> Launcher {
        Launcher {
            program: exe,
            prefix: Vec::new(),
        }
    }
}

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// How the workers are started.
    pub launcher: Launcher,
    /// Points trained at once.
    pub workers: usize,
    /// Engine threads per point (`train.threads`).
    pub threads_per_run: usize,
    /// Write each finished point's report.html.
    pub reports: bool,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

/// What one call did.
#[derive(Debug, Clone, Default)]
pub struct PoolOutcome {
    /// Points already finished before this call.
    pub skipped: usize,
    /// Points trained (or resumed) to the end now.
    pub finished: usize,
    /// Points that failed: name and the end of their log.
    pub failed: Vec<(String, String)>,
    /// Wall seconds.
    pub seconds: f64,
}

/// The workers' default: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `points` of the sweep in `dir` with a pool of workers.
pub fn run_points(dir: &SweepDir, points: &[Point], opts: &PoolOptions) -> Result<PoolOutcome> {
    if opts.workers == 0 {
        return Err(GrokError::config("--workers", 0, "must be at least 1"));
    }
    let started = Instant::now();
    let mut outcome = PoolOutcome::default();
    let mut todo = VecDeque::new();
    for p in points {
        match dir.status(&p.name) {
            Status::Finished
                if !opts.reports || dir.run(&p.name).root.join("report.html").exists() =>
            {
                outcome.skipped += 1
            }
            _ => todo.push_back(p.name.clone()),
        }
    }
    let total = todo.len();
    let state = Arc::new(Mutex::new(Progress {
        queue: todo,
        running: 0,
        done: 0,
        durations: Vec::new(),
        failed: Vec::new(),
    }));
    let workers = opts.workers.min(total.max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            let state = Arc::clone(&state);
            s.spawn(move || loop {
                let name = {
                    let mut st = state.lock().expect("progress lock");
                    match st.queue.pop_front() {
                        Some(n) => {
                            st.running += 1;
                            n
                        }
                        None => return,
                    }
                };
                let t = Instant::now();
                let result = run_point(dir, &name, opts);
                let mut st = state.lock().expect("progress lock");
                st.running -= 1;
                st.done += 1;
                match result {
                    Ok(()) => st.durations.push(t.elapsed().as_secs_f64()),
                    Err(e) => st.failed.push((name, e)),
                }
            });
        }
        if opts.progress && total > 0 {
            let state = Arc::clone(&state);
            s.spawn(move || loop {
                let line = {
                    let st = state.lock().expect("progress lock");
                    let line = st.line(total, workers, started.elapsed().as_secs_f64());
                    if st.done == total {
                        eprintln!("\r{line}");
                        return;
                    }
                    line
                };
                eprint!("\r{line}");
                let _ = std::io::stderr().flush();
                std::thread::sleep(Duration::from_millis(500));
            });
        }
    });
    let st = Arc::try_unwrap(state)
        .map_err(|_| ())
        .expect("workers joined")
        .into_inner()
        .expect("progress lock");
    outcome.finished = st.durations.len();
    outcome.failed = st.failed;
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The pool's shared state.
struct Progress {
    queue: VecDeque<String>,
    running: usize,
    done: usize,
    durations: Vec<f64>,
    failed: Vec<(String, String)>,
}

impl Progress {
    /// `[#####-----] 7/21 points, 2 running, 1 failed | 3m10s, ETA 6m40s`.
    fn line(&self, total: usize, workers: usize, elapsed: f64) -> String {
        const WIDTH: usize = 30;
        let filled = (WIDTH * self.done).checked_div(total).unwrap_or(WIDTH);
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
        let eta = if self.durations.is_empty() {
            "ETA after the first point".to_string()
        } else {
            let mean = self.durations.iter().sum::<f64>() / self.durations.len() as f64;
            let left = (total - self.done) as f64 * mean / workers.max(1) as f64;
            format!("ETA {}", clock(left))
        };
        let failed = match self.failed.len() {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        format!(
            "[{bar}] {}/{total} points, {} running{failed} | {}, {eta}   ",
            self.done,
            self.running,
            clock(elapsed)
        )
    }
}

/// `1h02m`, `3m10s`, `42s`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Trains (or resumes) one point in its own process, then writes its report; on failure returns the
/// end of its log.
fn run_point(dir: &SweepDir, name: &str, opts: &PoolOptions) -> std::result::Result<(), String> {
    let run = dir.run(name);
    let log_path = dir.log_path(name);
    // A worker of a sweep that was just killed may still be writing its last checkpoint.
    if !crate::run::RunLock::wait_until_free(&run.root, Duration::from_secs(60)) {
        return Err(format!(
            "{} is in use by another process (it holds its lock) after waiting 60 s",
            run.root.display()
        ));
    }
    if dir.status(name) == Status::Damaged {
        return Err(dir.damaged(name).to_string());
    }
    let args = WorkerArgs {
        sweep: dir.root.clone(),
        point: name.to_string(),
        threads: opts.threads_per_run,
        report: opts.reports,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut command = Command::new(&opts.launcher.program);
    command
        .args(&opts.launcher.prefix)
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    die_with_parent(&mut command);
    let status = command
        .status()
        .map_err(|e| format!("cannot start {}: {e}", opts.launcher.program.display()))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    if status.code() == Some(i32::from(EXIT_DIVERGED)) {
        // An outcome, recorded so later calls and the index see it.
        std::fs::write(
            dir.diverged_marker(name),
            tail.first().unwrap_or(&"diverged"),
        )
        .map_err(|e| format!("cannot mark {name} diverged: {e}"))?;
        return Ok(());
    }
    Err(format!(
        "the worker failed ({status}); {}: {}",
        log_path.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// Makes the worker receive SIGTERM when the thread that started it dies (the sweep killed by any
/// signal, SIGKILL included): it then checkpoints and exits (see [`crate::train::interrupt`]) instead
/// of training on, unseen, holding its run's lock. Linux only (`PR_SET_PDEATHSIG`).
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
}
