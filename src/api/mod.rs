//! One API for every front end: the CLI, the Python package and a user's Rust program call these
//! functions, and none of them holds logic another lacks. [`Run`] is a run directory of any family
//! and task kind — create or open it, train or resume it with a progress callback, read its config,
//! history, checkpoints and models, analyse it and write its report. The commands above a single run
//! live beside it: [`grok`] (train, report and compare presets), [`inspect`] (`cache`, `ablate`),
//! [`bench`](mod@bench) and [`sweeps`] (local pools, Slurm arrays, the sweep page and the worker a
//! pool starts).

pub mod bench;
pub mod grok;
pub mod inspect;
pub mod sweeps;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::analysis::compound::{analyze_compound_run, CompoundAnalysis};
use crate::analysis::sequence::{analyze_sequence_run, SequenceAnalysis};
use crate::analysis::{analyze_modular_run, ModularAnalysis};
use crate::config::RunConfig;
use crate::error::{GrokError, Result};
use crate::model::Params;
use crate::presets::preset_template;
use crate::report::compound::{write_compound_report, CompoundReport};
use crate::report::sequence::{write_sequence_report, SequenceReport};
use crate::report::{write_modular_report, ModularReport};
use crate::run::{checkpoint, grokking_epoch, metrics, MetricsRow, RunDir, GROKKED_ACCURACY};
use crate::tasks::{Split, TaskConfig};
use crate::train::interrupt::StopOnSignal;
use crate::train::Trainer;

/// A config from a preset or a TOML file, with `--set KEY=VALUE` overrides applied, resolved and
/// checked.
pub fn build_config(
    preset: Option<&str>,
    file: Option<&Path>,
    sets: &[String],
) -> Result<RunConfig> {
    let cfg = match (preset, file) {
        (Some(p), _) => preset_template(p)?,
        (None, Some(f)) => RunConfig::load(f)?,
        (None, None) => {
            return Err(GrokError::Usage(
                "give --preset NAME or --config FILE (see `groklens presets`)".into(),
            ))
        }
    };
    configure(cfg, sets)
}

/// `cfg` with `--set KEY=VALUE` overrides applied, resolved and checked.
pub fn configure(mut cfg: RunConfig, sets: &[String]) -> Result<RunConfig> {
    for s in sets {
        cfg.set(s)
            .map_err(|e| GrokError::Usage(format!("--set {s}: {e}")))?;
    }
    cfg.resolve()
}

/// What happens while a run trains, for a front end to show: progress bars, notes, estimates.
pub enum Event<'a> {
    /// Something the user should read (a resumed run's note, a reused run).
    Note(String),
    /// What the run will take on this machine, timed on a sample (long epochs only).
    Estimate(String),
    /// An evaluation: the row, the epochs (steps) in all, the unit, and the rate since this call began.
    Eval {
        /// The metrics row just written.
        row: &'a MetricsRow,
        /// Epochs (steps) the run trains in all.
        total: usize,
        /// "epoch" or "step".
        unit: &'static str,
        /// Epochs (steps) per second in this call.
        rate: f64,
    },
    /// Training ended (the summary is also what `train` returns).
    Trained(&'a Trained),
    /// A report page was written.
    Report(&'a Report),
}

/// Decides which evaluations a progress display redraws: at most ten a second, and always the last.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// Whether to show the evaluation at `epoch` of `total` (and, if so, counts it as shown).
    pub fn due(&mut self, epoch: usize, total: usize) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed().as_millis() >= 100) || epoch == total;
        if due {
            self.last = Some(Instant::now());
        }
        due
    }
}

/// A front end's handler of [`Event`]s.
pub type OnEvent<'a> = dyn FnMut(Event) + 'a;

/// How [`Run::train`] runs.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Time a sample first and send an [`Event::Estimate`] when an epoch is long enough to matter.
    pub estimate: bool,
    /// While training, SIGINT and SIGTERM stop at the end of the epoch with a checkpoint (the run
    /// resumes exactly) instead of ending the process.
    pub stop_on_signal: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            estimate: true,
            stop_on_signal: true,
        }
    }
}

/// A run directory: any family, any task kind.
pub struct Run {
    dir: RunDir,
    cfg: RunConfig,
    /// Present once this handle has created or resumed the run (and so holds its lock).
    trainer: Option<Trainer>,
}

impl Run {
    /// Creates a new run of `cfg` in `dir` (refused if `dir` holds anything but an interrupted
    /// creation of the same run), writing its config, identity and split; [`Run::train`] trains it.
    pub fn create(cfg: RunConfig, dir: impl Into<PathBuf>) -> Result<Run> {
        let dir = RunDir::new(dir);
        let trainer = Trainer::create(cfg, &dir)?;
        Ok(Run {
            cfg: trainer.cfg.clone(),
            dir,
            trainer: Some(trainer),
        })
    }

    /// Writes a run of `cfg` in `dir` for `params` trained elsewhere (e.g. a TransformerLens model),
    /// recorded as its epoch 0 with one evaluation, so [`Run::analyze`], reports and comparisons work
    /// on it; training it further starts from these weights with a fresh optimizer.
    pub fn import(cfg: RunConfig, params: Params, dir: impl Into<PathBuf>) -> Result<Run> {
        let dir = RunDir::new(dir);
        let trainer = Trainer::import(cfg, params, &dir)?;
        Ok(Run {
            cfg: trainer.cfg.clone(),
            dir,
            trainer: None,
        })
    }

    /// Opens an existing run to read it (no lock is taken; a run being trained can be read).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Run> {
        let dir = RunDir::new(dir);
        if !crate::run::is_run_dir(&dir.root) {
            return Err(GrokError::file(
                &dir.root,
                "is not a run directory (no config.toml): train one with `groklens train` or `groklens grok`",
            ));
        }
        let cfg = dir.load_config()?;
        Ok(Run {
            dir,
            cfg,
            trainer: None,
        })
    }

    /// Opens the run in `dir` to train it further, with `--set` overrides of its resumable keys
    /// (more epochs, another thread count…); returns the run and notes on what the resume changed.
    pub fn resume(dir: impl Into<PathBuf>, sets: &[String]) -> Result<(Run, Vec<String>)> {
        let dir = RunDir::new(dir);
        let (trainer, mut notes) = Trainer::resume(&dir, sets)?;
        notes.push(format!(
            "resuming {} at {} {}",
            dir.root.display(),
            trainer.cfg.task.unit(),
            trainer.epoch
        ));
        Ok((
            Run {
                cfg: trainer.cfg.clone(),
                dir,
                trainer: Some(trainer),
            },
            notes,
        ))
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.dir.root
    }

    /// The run directory's files.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    /// The run's resolved config.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    /// Every metrics row written so far.
    pub fn metrics(&self) -> Result<Vec<MetricsRow>> {
        metrics::read(&self.dir.metrics_path())
    }

    /// Epochs (steps) with a checkpoint, oldest first.
    pub fn checkpoints(&self) -> Vec<usize> {
        checkpoint::list_epochs(&self.dir.checkpoint_dir())
    }

    /// True once the final model is written.
    pub fn is_finished(&self) -> bool {
        self.dir.final_path().exists()
    }

    /// The parameters at checkpoint `epoch`, or the final model for `None` (an unfinished run's
    /// error names its newest checkpoint). A file of another run is refused.
    pub fn model(&self, epoch: Option<usize>) -> Result<Params> {
        let path = match epoch {
            Some(e) => {
                let path = checkpoint::model_path(&self.dir.checkpoint_dir(), e);
                if !path.exists() {
                    return Err(GrokError::file(
                        &path,
                        format!(
                            "not found: the run's checkpoints are at {:?}",
                            self.checkpoints()
                        ),
                    ));
                }
                path
            }
            None => {
                let path = self.dir.final_path();
                if !path.exists() {
                    return Err(GrokError::file(
                        &path,
                        self.unfinished_hint(|_, e| {
                            format!("load one of its checkpoints instead (the newest: epoch {e})")
                        }),
                    ));
                }
                path
            }
        };
        self.dir.load_params(&path, &self.cfg)
    }

    /// "not found: the run is unfinished; …", with `instead(path, epoch)` saying how to use its newest
    /// checkpoint instead.
    pub(crate) fn unfinished_hint(&self, instead: impl Fn(&Path, usize) -> String) -> String {
        let resume = format!("`groklens train --resume {}`", self.dir.root.display());
        match self.checkpoints().last() {
            Some(&e) => format!(
                "not found: the run is unfinished; {}, or finish it with {resume}",
                instead(&checkpoint::model_path(&self.dir.checkpoint_dir(), e), e)
            ),
            None => format!("not found: the run is unfinished; train it first ({resume})"),
        }
    }

    /// The run's train/test split (refused if the file belongs to another run).
    pub fn split(&self) -> Result<Split> {
        self.dir.load_split(&self.cfg)
    }

    /// Trains the run to its configured end: the run created by [`Run::create`] or resumed by
    /// [`Run::resume`]; a run from [`Run::open`] is resumed first (its notes sent as events).
    pub fn train(&mut self, opts: TrainOptions, on: &mut OnEvent) -> Result<Trained> {
        if self.trainer.is_none() {
            let (resumed, notes) = Run::resume(&self.dir.root, &[])?;
            for n in notes {
                on(Event::Note(n));
            }
            *self = resumed;
        }
        let trainer = self.trainer.as_mut().expect("set above");
        if opts.estimate {
            if let Some(text) = estimate(trainer)? {
                on(Event::Estimate(text));
            }
        }
        let total = trainer.cfg.train.epochs;
        let unit = trainer.cfg.task.unit();
        let start = Instant::now();
        let first_epoch = trainer.epoch;
        let outcome = {
            let _signals = opts.stop_on_signal.then(StopOnSignal::install);
            trainer.run(&mut |row| {
                let rate =
                    (row.epoch - first_epoch) as f64 / start.elapsed().as_secs_f64().max(1e-9);
                on(Event::Eval {
                    row,
                    total,
                    unit,
                    rate,
                })
            })
        };
        let root = &self.dir.root;
        let outcome = outcome.map_err(|e| match e {
            GrokError::Interrupted(what) => GrokError::Interrupted(format!(
                "{}: {what}; continue it with `groklens train --resume {}`",
                root.display(),
                root.display()
            )),
            e => e,
        })?;
        let last = outcome
            .last
            .ok_or_else(|| GrokError::file(root, "no evaluation was recorded"))?;
        let first_loss = trainer.history.first().map_or(f64::NAN, |r| r.train_loss);
        let mut warnings = Vec::new();
        if last.train_loss > 100.0 * first_loss.max(1e-3) {
            warnings.push(format!(
                "the train loss grew from {first_loss:.3e} to {:.3e}: training is unstable; {}",
                last.train_loss,
                trainer.cfg.train.divergence_suspects().join(", ")
            ));
        }
        let trained = Trained {
            dir: root.clone(),
            unit,
            epochs: outcome.epochs,
            first_epoch,
            seconds: start.elapsed().as_secs_f64(),
            engine: trainer.engine_name(),
            last,
            streamed: trainer.cfg.task.is_streamed(),
            grokking_epoch: grokking_epoch(&trainer.history, GROKKED_ACCURACY),
            warnings,
        };
        on(Event::Trained(&trained));
        Ok(trained)
    }

    /// The analysis for the run's task kind: its final model (or newest loadable checkpoint) and
    /// every checkpoint.
    pub fn analyze(&self) -> Result<Analysis> {
        let root = &self.dir.root;
        Ok(match self.cfg.task {
            TaskConfig::Modular(_) => Analysis::Modular(Box::new(analyze_modular_run(root)?)),
            TaskConfig::Compound(_) => Analysis::Compound(Box::new(analyze_compound_run(root)?)),
            TaskConfig::PreviousToken(_) => {
                Analysis::Sequence(Box::new(analyze_sequence_run(root)?))
            }
        })
    }

    /// Analyses the run and writes `report.html` in its directory, the page for its task kind.
    pub fn write_report(&self) -> Result<Report> {
        let root = &self.dir.root;
        Ok(match self.cfg.task {
            TaskConfig::Modular(_) => Report::Modular(Box::new(write_modular_report(root)?)),
            TaskConfig::Compound(_) => Report::Compound(Box::new(write_compound_report(root)?)),
            TaskConfig::PreviousToken(_) => {
                Report::Sequence(Box::new(write_sequence_report(root)?))
            }
        })
    }
}

/// What one [`Run::train`] call did.
pub struct Trained {
    /// The run directory.
    pub dir: PathBuf,
    /// "epoch" or "step".
    pub unit: &'static str,
    /// Epochs (steps) completed in all.
    pub epochs: usize,
    /// Epoch the call started from (0 for a new run).
    pub first_epoch: usize,
    /// Seconds this call trained.
    pub seconds: f64,
    /// The engine that ran it.
    pub engine: &'static str,
    /// The last evaluation.
    pub last: MetricsRow,
    /// True for a streamed task: every batch is fresh, so there is no train/test gap to close.
    pub streamed: bool,
    /// First evaluated epoch with test accuracy ≥ 99 %.
    pub grokking_epoch: Option<usize>,
    /// Signs of unstable training the user should see.
    pub warnings: Vec<String>,
}

impl Trained {
    /// The lines the CLI prints after training.
    pub fn text(&self) -> String {
        let unit = self.unit;
        let secs = self.seconds;
        let epochs = match self.first_epoch {
            0 => format!("{} {unit}s in {secs:.1}s", self.epochs),
            e => format!(
                "{} {unit}s ({e} before this resume, {} now in {secs:.1}s; {:.1}s in all)",
                self.epochs,
                self.epochs - e,
                self.last.elapsed_s
            ),
        };
        let mut out = format!(
            "{}: {epochs} with the {} engine; final train loss {:.3e}, test loss {:.3e}, test acc {:.2}%",
            self.dir.display(),
            self.engine,
            self.last.train_loss,
            self.last.test_loss,
            100.0 * self.last.test_acc
        );
        match (self.streamed, self.grokking_epoch) {
            (true, _) => {}
            (false, Some(e)) => out += &format!("\ngrokked (test accuracy >= 99%) at epoch {e}"),
            (false, None) => out += "\ndid not reach 99% test accuracy",
        }
        out
    }
}

/// What a run's analysis found, by task kind.
pub enum Analysis {
    /// A modular run: Fourier features, key frequencies, clusters, progress measures, phases.
    Modular(Box<ModularAnalysis>),
    /// A compound expression: each operand's spectrum, attention from `=`, accuracy by exponent.
    Compound(Box<CompoundAnalysis>),
    /// A previous-token sequence run: attention, ablations, the learned shift.
    Sequence(Box<SequenceAnalysis>),
}

/// What a report wrote, by task kind.
pub enum Report {
    /// A modular run's page.
    Modular(Box<ModularReport>),
    /// A compound run's page.
    Compound(Box<CompoundReport>),
    /// A sequence run's page.
    Sequence(Box<SequenceReport>),
}

impl Report {
    /// The page's path.
    pub fn path(&self) -> &Path {
        match self {
            Report::Modular(r) => &r.path,
            Report::Compound(r) => &r.path,
            Report::Sequence(r) => &r.path,
        }
    }

    /// A few lines for the terminal.
    pub fn text(&self) -> String {
        match self {
            Report::Modular(r) => r.text(),
            Report::Compound(r) => r.text(),
            Report::Sequence(r) => r.text(),
        }
    }
}

/// What an epoch (step) and the rest of the run will take on this machine, timed on a sample of
/// rows; `None` when the epoch is too short for it to matter.
fn estimate(trainer: &mut Trainer) -> Result<Option<String>> {
    const SAMPLE_ROWS: usize = 4096;
    let (n_train, n_test) = trainer.rows();
    if n_train + n_test <= SAMPLE_ROWS {
        return Ok(None);
    }
    let per_epoch = trainer.estimate_epoch_seconds(SAMPLE_ROWS)?;
    let left = trainer.cfg.train.epochs.saturating_sub(trainer.epoch);
    let unit = trainer.cfg.task.unit();
    let run = per_epoch * left as f64;
    let (amount, scale) = match run {
        r if r >= 2.0 * 86_400.0 => (r / 86_400.0, "days"),
        r if r >= 2.0 * 3600.0 => (r / 3600.0, "hours"),
        r if r >= 120.0 => (r / 60.0, "minutes"),
        r => (r, "seconds"),
    };
    Ok(Some(format!(
        "estimated on this machine ({} threads): {per_epoch:.2} s per {unit} ({n_train} train rows, \
         test evaluated every {} {unit}s), {amount:.1} {scale} for the {left} {unit}s left \
         (less if an early stop is met)",
        crate::engine::thread_count(trainer.cfg.train.threads),
        trainer.cfg.train.eval_every
    )))
}
