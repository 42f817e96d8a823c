//! `groklens sweep …`: run a sweep on this machine (a pool of worker processes, or one shard of it),
//! write a Slurm job array that runs its shards, write the sweep page, and the work of one worker.

use std::path::{Path, PathBuf};

use super::{Event, OnEvent, Run, TrainOptions};
use crate::error::{GrokError, Result};
use crate::report::sweep::{write_sweep_page, SweepPage};
pub use crate::sweep::local::Launcher;
use crate::sweep::local::{self, PoolOptions, PoolOutcome};
use crate::sweep::slurm::ArrayJob;
use crate::sweep::worker::WorkerArgs;
use crate::sweep::{self, Status, SweepDir};

/// How `sweep run` runs.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Points trained at once (default: one per core).
    pub workers: Option<usize>,
    /// Engine threads per point (0 = one per core each).
    pub threads_per_run: usize,
    /// Only shard `I/N` of the points (a Slurm array task runs one).
    pub shard: Option<String>,
    /// Write each point's report.
    pub reports: bool,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

/// What `sweep run` did.
pub struct LocalRun {
    /// The sweep directory.
    pub dir: PathBuf,
    /// Points in the sweep.
    pub all: usize,
    /// `(i, n, points in it)` when one shard ran.
    pub shard: Option<(usize, usize, usize)>,
    /// What the pool did.
    pub outcome: PoolOutcome,
    /// Workers and threads per run.
    pub workers: usize,
    /// Engine threads per point (0 = one per core each).
    pub threads_per_run: usize,
    /// `index.csv`, written when the whole sweep ran.
    pub index: Option<PathBuf>,
}

impl LocalRun {
    /// The lines the CLI prints (failures go in the error [`run_local`] returns).
    pub fn text(&self) -> String {
        let o = &self.outcome;
        let which = self
            .shard
            .map_or(format!("{} points", self.all), |(i, n, m)| {
                format!("shard {i}/{n}: {m} of {} points", self.all)
            });
        let mut out = format!(
            "{}: {which}; {} finished now, {} already finished, {} failed, in {:.1}s ({} workers × {})",
            self.dir.display(),
            o.finished,
            o.skipped,
            o.failed.len(),
            o.seconds,
            self.workers,
            match self.threads_per_run {
                0 => "one thread per core each".to_string(),
                n => format!("{n} thread(s)"),
            }
        );
        if let Some(index) = &self.index {
            out += &format!("\nindex: {}", index.display());
        }
        out
    }
}

/// Runs the sweep `spec` (a file or a built-in name) into `out` with a pool of worker processes
/// started by `launcher` (the `groklens` binary, or `python -m groklens`). Finished points are kept; a
/// point that failed makes the whole call an error naming each and the end of its log, after the index
/// is written.
pub fn run_local(
    spec: &str,
    out: &Path,
    launcher: Launcher,
    opts: &LocalOptions,
) -> Result<LocalRun> {
    let spec = sweep::load_spec(spec)?;
    let dir = SweepDir::new(out);
    let shard = sweep::shard_of(opts.shard.as_deref())?;
    let _lock = dir.lock(shard.is_some())?;
    let points = dir.prepare(&spec)?;
    let mine = match shard {
        Some((i, n)) => sweep::shard(points.clone(), i, n),
        None => points.clone(),
    };
    let pool = PoolOptions {
        launcher,
        workers: opts.workers.unwrap_or_else(local::default_workers),
        threads_per_run: opts.threads_per_run,
        reports: opts.reports,
        progress: opts.progress,
    };
    let outcome = local::run_points(&dir, &mine, &pool)?;
    let index = match shard {
        None => {
            dir.write_index(&spec, &points)?;
            Some(dir.index_path())
        }
        Some(_) => None,
    };
    let done = LocalRun {
        dir: dir.root.clone(),
        all: points.len(),
        shard: shard.map(|(i, n)| (i, n, mine.len())),
        workers: pool.workers,
        threads_per_run: opts.threads_per_run,
        index,
        outcome,
    };
    if done.outcome.failed.is_empty() {
        return Ok(done);
    }
    let why: Vec<String> = done
        .outcome
        .failed
        .iter()
        .map(|(name, why)| format!("{name}: {why}"))
        .collect();
    Err(GrokError::Usage(format!(
        "{}\n{}\n{} point(s) failed; fix the cause and run the same command again (finished points are kept)",
        done.text(),
        why.join("\n"),
        why.len()
    )))
}

/// How `sweep slurm` writes its job array.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// Array tasks (default: one per point).
    pub tasks: Option<usize>,
    /// Array tasks running at once (`%N`).
    pub array_parallelism: Option<usize>,
    /// CPUs per array task.
    pub cpus_per_task: usize,
    /// `#SBATCH --partition`.
    pub partition: Option<String>,
    /// `#SBATCH --time`.
    pub time: Option<String>,
    /// Write the script without submitting it.
    pub dry_run: bool,
    /// Submit with `sbatch --wait`.
    pub wait: bool,
}

/// What `sweep slurm` did.
pub struct SlurmRun {
    /// The job's script.
    pub script: PathBuf,
    /// The job.
    pub job: ArrayJob,
    /// Points in the sweep.
    pub points: usize,
    /// What sbatch said; `None` for a dry run.
    pub submitted: Option<String>,
}

/// Prepares the sweep `spec` in `out` and writes (and unless `dry_run`, submits) a Slurm job array
/// whose tasks each run one shard with `exe`.
pub fn run_slurm(spec: &str, out: &Path, exe: PathBuf, opts: &SlurmOptions) -> Result<SlurmRun> {
    let spec = sweep::load_spec(spec)?;
    let out = std::path::absolute(out)
        .map_err(|e| GrokError::file(out, format!("cannot resolve: {e}")))?;
    let dir = SweepDir::new(&out);
    let points = dir.prepare(&spec)?;
    if opts.tasks == Some(0) || opts.cpus_per_task == 0 || opts.array_parallelism == Some(0) {
        return Err(GrokError::Usage(
            "--tasks, --cpus-per-task and --array-parallelism must be at least 1".into(),
        ));
    }
    let job = ArrayJob {
        exe,
        dir: out,
        name: spec.name.clone(),
        tasks: opts.tasks.unwrap_or(points.len()).min(points.len()),
        parallelism: opts.array_parallelism,
        cpus_per_task: opts.cpus_per_task,
        partition: opts.partition.clone(),
        time: opts.time.clone(),
    };
    let script = job.write()?;
    let submitted = if opts.dry_run {
        None
    } else {
        Some(job.submit(&script, opts.wait)?)
    };
    Ok(SlurmRun {
        script,
        job,
        points: points.len(),
        submitted,
    })
}

/// Writes the sweep page of the sweep in `dir`.
pub fn report(dir: &Path) -> Result<SweepPage> {
    write_sweep_page(&SweepDir::new(dir))
}

/// The text of built-in spec `name`.
pub fn built_in(name: &str) -> Result<&'static str> {
    sweep::BUILT_IN
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, text)| *text)
        .ok_or_else(|| {
            let names: Vec<&str> = sweep::BUILT_IN.iter().map(|(n, _, _)| *n).collect();
            GrokError::Usage(format!(
                "no built-in sweep spec named {name:?} (there are: {})",
                names.join(", ")
            ))
        })
}

/// One worker's work: train (or resume) the point, then write its report when asked. A point that
/// has finished or diverged is not trained again; a damaged one is refused.
pub fn work_on_point(args: &WorkerArgs, on: &mut OnEvent) -> Result<()> {
    let dir = SweepDir::new(&args.sweep);
    let run_dir = dir.run(&args.point);
    let threads = format!("train.threads={}", args.threads);
    let opts = TrainOptions {
        estimate: false,
        stop_on_signal: true,
    };
    match dir.status(&args.point) {
        Status::Damaged => return Err(dir.damaged(&args.point)),
        Status::Finished | Status::Diverged => {}
        Status::Partial => {
            let (mut run, notes) = Run::resume(&run_dir.root, &[threads])?;
            for n in notes {
                on(Event::Note(n));
            }
            run.train(opts, on)?;
        }
        Status::Pending => {
            let cfg = super::build_config(None, Some(&dir.config_path(&args.point)), &[threads])?;
            Run::create(cfg, &run_dir.root)?.train(opts, on)?;
        }
    }
    if args.report && dir.status(&args.point) == Status::Finished {
        let report = Run::open(&run_dir.root)?.write_report()?;
        on(Event::Report(&report));
    }
    Ok(())
}
