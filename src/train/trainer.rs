//! The training loop: epochs of AdamW steps, periodic evaluation, checkpoints, early stop and resume.

use std::time::Instant;

use super::shuffle::Shuffle;
use crate::config::train::glob_match;
use crate::config::RunConfig;
use crate::engine::{self, Batch, BatchStats, Engine};
use crate::error::{GrokError, Result};
use crate::linalg::spectral_norm;
use crate::model::{Params, Slot};
use crate::optim::interventions::{orthogonalise, project_norm, scale, total_norm, Grokfast};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::run::{metrics, Checkpoint, MetricsRow, RunDir, RunLock};
use crate::tasks::{Dataset, SequenceStream, Split, SplitRows};

/// Where each step's rows come from.
enum TrainRows {
    /// A finite task's train split: epochs of (shuffled) minibatches.
    Split(SplitRows),
    /// A stream: a fresh batch every step.
    Stream(Box<SequenceStream>),
}

/// Why [`Trainer::run`] returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Epochs completed in total.
    pub epochs: usize,
    /// True when an early-stop target was met.
    pub stopped_early: bool,
    /// The last evaluation.
    pub last: Option<MetricsRow>,
}

/// Owns a model, its optimizer and data, and trains it, optionally writing a run directory.
pub struct Trainer {
    /// The resolved config.
    pub cfg: RunConfig,
    /// Current parameters.
    pub params: Params,
    /// Current optimizer state.
    pub optimizer: AdamW,
    /// The Grokfast gradient filter (settings and state; a no-op unless `train.grokfast` is set).
    pub grokfast: Grokfast,
    /// The total trainable weight norm held fixed after every step (`train.weight_norm_scale`).
    fixed_norm: Option<f64>,
    /// Epochs completed.
    pub epoch: usize,
    /// Every evaluation so far (including those before a resume).
    pub history: Vec<MetricsRow>,
    trainable: Vec<bool>,
    grads: Params,
    /// One micro-batch's gradient while a step sums several.
    micro_grads: Option<Params>,
    train: TrainRows,
    test: SplitRows,
    /// The rows of the forward/backward pass being run (reused).
    pass: Dataset,
    engine: Box<dyn Engine>,
    elapsed_before: f64,
    run_dir: Option<RunDir>,
    /// The run directory's lock, held for the trainer's lifetime (one writer per run).
    _lock: Option<RunLock>,
    /// The output layer's weight and shape, whose spectral norm the metrics track.
    output_weight: (Slot, usize, usize),
    /// Each epoch's minibatch order.
    shuffle: Shuffle,
    /// Its last top right singular vector (warm start for the next evaluation).
    spectral_vector: Vec<f64>,
}

/// Whether each parameter (state_dict order) is trained: neither fixed by its family nor frozen.
fn trainable_slots(cfg: &RunConfig, params: &Params) -> Vec<bool> {
    params
        .iter()
        .zip(cfg.model.param_specs())
        .map(|(p, s)| !s.fixed && !cfg.train.is_frozen(&p.name))
        .collect()
}

/// The weights a run starts from: the family's init from the seed, the trainable ones scaled by
/// `train.weight_norm_scale` when it is set (Omnigrok's α).
fn initial_params(cfg: &RunConfig) -> Params {
    let mut params = Params::init(&cfg.model, cfg.rng);
    if cfg.train.weight_norm_scale > 0.0 {
        let trainable = trainable_slots(cfg, &params);
        scale(&mut params, &trainable, cfg.train.weight_norm_scale);
    }
    params
}

/// How a run scores the rows of `data`: its task's target, its training loss.
fn scored<'a>(data: &'a Dataset, cfg: &RunConfig) -> Batch<'a> {
    Batch::of(data, cfg.task.target()).with_loss(cfg.train.loss)
}

/// The run's Grokfast filter, with no state yet.
fn grokfast_config(cfg: &RunConfig) -> Grokfast {
    let t = &cfg.train;
    Grokfast::new(
        t.grokfast,
        t.grokfast_alpha,
        t.grokfast_window,
        t.grokfast_lambda,
    )
}

fn adam_config(cfg: &RunConfig) -> AdamWConfig {
    AdamWConfig {
        weight_decay: cfg.train.weight_decay,
        betas: (cfg.train.beta1, cfg.train.beta2),
        eps: cfg.train.adam_eps,
    }
}

impl Trainer {
    /// A fresh model trained in memory only.
    pub fn new(cfg: RunConfig) -> Result<Self> {
        let cfg = cfg.resolve()?;
        cfg.ensure_trainable()?;
        let split = cfg.task.split(cfg.rng);
        let params = initial_params(&cfg);
        let state = (
            AdamW::new(adam_config(&cfg), &params),
            grokfast_config(&cfg),
        );
        Self::assemble(cfg, split, params, state, 0, 0.0, Vec::new(), None)
    }

    /// A fresh model whose run directory `dir` is created now (config, model config, split).
    pub fn create(cfg: RunConfig, dir: &RunDir) -> Result<Self> {
        let mut t = Self::new(cfg)?;
        dir.check_new()?;
        let lock = RunLock::acquire(&dir.root)?;
        dir.create(&t.cfg, &t.cfg.task.split(t.cfg.rng))?;
        t.run_dir = Some(dir.clone());
        t._lock = Some(lock);
        Ok(t)
    }

    /// A run directory `dir` for `params` trained elsewhere, recorded as the run's epoch 0: its config,
    /// split, one evaluation of each split, a checkpoint (with a fresh optimizer state) and the final
    /// model. Analysis, reports and comparisons read it like any run; resuming it trains these weights
    /// further. `params` must have exactly the names and shapes of `cfg.model`.
    pub fn import(cfg: RunConfig, params: Params, dir: &RunDir) -> Result<Self> {
        let fresh = Self::new(cfg)?;
        let specs = fresh.cfg.model.param_specs();
        if !params.matches(&specs) {
            let want: Vec<String> = specs
                .iter()
                .map(|s| format!("{} {:?}", s.name, s.shape))
                .collect();
            let got: Vec<String> = params
                .iter()
                .map(|p| format!("{} {:?}", p.name, p.shape))
                .collect();
            return Err(GrokError::tensor(
                "params",
                format!(
                    "do not fit the run's model config: it needs [{}], the weights are [{}]",
                    want.join(", "),
                    got.join(", ")
                ),
            ));
        }
        if let Some(p) = params
            .iter()
            .find(|p| p.data.iter().any(|x| !x.is_finite()))
        {
            return Err(GrokError::tensor(
                &p.name,
                "holds NaN or infinite values; import a model with finite weights",
            ));
        }
        dir.check_new()?;
        let lock = RunLock::acquire(&dir.root)?;
        let split = fresh.cfg.task.split(fresh.cfg.rng);
        dir.create(&fresh.cfg, &split)?;
        let state = (
            AdamW::new(adam_config(&fresh.cfg), &params),
            grokfast_config(&fresh.cfg),
        );
        let run_dir = Some(dir.clone());
        let mut t = Self::assemble(fresh.cfg, split, params, state, 0, 0.0, Vec::new(), run_dir)?;
        t._lock = Some(lock);
        let test = t.evaluate_test()?;
        let train = t.evaluate_train()?;
        let row = t.metrics_row(train, test, 0.0, 0.0);
        metrics::write_all(&dir.metrics_path(), &[row])?;
        t.history.push(row);
        t.checkpoint(0.0)?;
        t.write_final()?;
        Ok(t)
    }

    /// Continues the run in `dir` from its newest complete checkpoint (from scratch if it has none),
    /// applying `sets` (resumable keys only, see [`RunDir::load_config_for_resume`]). Returns the
    /// trainer and notes: accepted config changes and newer checkpoints that were incomplete and skipped.
    pub fn resume(dir: &RunDir, sets: &[String]) -> Result<(Self, Vec<String>)> {
        dir.load_config()?; // refuses a directory that holds no run before the lock file is made
        let lock = RunLock::acquire(&dir.root)?;
        dir.remove_temp_files();
        let (cfg, mut notes) = dir.load_config_for_resume(sets)?;
        cfg.ensure_trainable()?;
        let split = dir.load_split(&cfg)?;
        let (latest, skipped) = Checkpoint::latest(
            &dir.checkpoint_dir(),
            &cfg.model,
            adam_config(&cfg),
            &grokfast_config(&cfg),
            &cfg.run_id(),
        )?;
        let recorded = if dir.metrics_path().exists() {
            metrics::read(&dir.metrics_path())?
        } else {
            Vec::new()
        };
        let resume_epoch = latest.as_ref().map_or(0, |c| c.epoch);
        check_resume_keeps_history(dir, &cfg, resume_epoch, &recorded, &skipped)?;
        let (params, state, epoch, elapsed, spectral_vector) = match latest {
            Some(c) => (
                c.params,
                (c.optimizer, c.grokfast),
                c.epoch,
                c.elapsed_s,
                c.spectral_vector,
            ),
            None => {
                let p = initial_params(&cfg);
                let state = (AdamW::new(adam_config(&cfg), &p), grokfast_config(&cfg));
                (p, state, 0, 0.0, Vec::new())
            }
        };
        if cfg.train.epochs < epoch {
            return Err(GrokError::config(
                "train.epochs",
                cfg.train.epochs,
                format!(
                    "must be at least {epoch}, the epoch the run's newest checkpoint has reached"
                ),
            ));
        }
        notes.extend(
            skipped
                .iter()
                .map(|s| format!("skipped incomplete checkpoint: {s}")),
        );
        // Every check has passed: only now does the run directory change.
        dir.commit_resume_config(&cfg)?;
        notes.extend(dir.sync_model_config(&cfg)?);
        let history: Vec<MetricsRow> = recorded.into_iter().filter(|r| r.epoch <= epoch).collect();
        metrics::write_all(&dir.metrics_path(), &history)?;
        let mut t = Self::assemble(
            cfg,
            split,
            params,
            state,
            epoch,
            elapsed,
            history,
            Some(dir.clone()),
        )?;
        t._lock = Some(lock);
        t.spectral_vector = spectral_vector;
        Ok((t, notes))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: RunConfig,
        split: Split,
        params: Params,
        (optimizer, grokfast): (AdamW, Grokfast),
        epoch: usize,
        elapsed_before: f64,
        history: Vec<MetricsRow>,
        run_dir: Option<RunDir>,
    ) -> Result<Self> {
        let test = cfg.task.split_rows(split.test);
        let n_rows = test.task_rows();
        if let Some(&bad) = split.train.iter().find(|&&i| i >= n_rows) {
            return Err(GrokError::tensor(
                "split",
                format!("row index {bad} is outside the dataset of {n_rows} rows"),
            ));
        }
        let train = match cfg.task.sequence() {
            Some(t) => {
                TrainRows::Stream(Box::new(SequenceStream::at(t, cfg.train.batch_size, epoch)))
            }
            None => TrainRows::Split(cfg.task.split_rows(split.train)),
        };
        if let Some(unused) = cfg
            .train
            .freeze
            .iter()
            .find(|pat| !params.iter().any(|p| glob_match(pat, &p.name)))
        {
            let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).take(6).collect();
            return Err(GrokError::config(
                "train.freeze",
                unused,
                format!(
                    "matches no parameter of this model (its names are like {}, …)",
                    names.join(", ")
                ),
            ));
        }
        let trainable = trainable_slots(&cfg, &params);
        let engine = engine::select(
            &cfg.model,
            cfg.task.target(),
            cfg.train.engine,
            cfg.train.threads,
        )?;
        let n_train = match &train {
            TrainRows::Split(rows) => rows.len(),
            TrainRows::Stream(_) => 0,
        };
        // The initial weights are a function of the seed, so a resumed run recomputes the same norm.
        let fixed_norm = (cfg.train.weight_norm_scale > 0.0)
            .then(|| total_norm(&initial_params(&cfg), &trainable));
        Ok(Trainer {
            grokfast,
            fixed_norm,
            shuffle: Shuffle::new(&cfg, n_train, test.len(), epoch),
            grads: params.zeros_like(),
            micro_grads: (cfg.train.micro_batch > 0).then(|| params.zeros_like()),
            train,
            test,
            pass: Dataset::default(),
            engine,
            trainable,
            params,
            optimizer,
            epoch,
            history,
            elapsed_before,
            run_dir,
            _lock: None,
            output_weight: cfg.model.output_weight(),
            spectral_vector: Vec::new(),
            cfg,
        })
    }

    /// Name of the engine computing gradients.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Whether each parameter (in state_dict order) is trained.
    pub fn trainable(&self) -> &[bool] {
        &self.trainable
    }

    /// Rows per epoch (one step's batch for a stream) and test rows.
    pub fn rows(&self) -> (usize, usize) {
        let train = match &self.train {
            TrainRows::Split(rows) => rows.len(),
            TrainRows::Stream(_) => self.cfg.train.batch_size,
        };
        (train, self.test.len())
    }

    /// One epoch of optimizer steps (for a stream, one step on a fresh batch); returns the
    /// pre-update train loss/accuracy and the last lr.
    pub fn train_epoch(&mut self) -> Result<(BatchStats, f64)> {
        let mut total = BatchStats::default();
        let mut lr = 0.0;
        match &mut self.train {
            TrainRows::Stream(stream) => {
                let mut batch = Dataset::default();
                stream.next_batch(&mut batch);
                let (stats, step_lr) =
                    self.step(batch.len(), |lo, hi, out| batch.copy_rows(lo..hi, out))?;
                total = stats;
                lr = step_lr;
            }
            TrainRows::Split(rows) => {
                let rows = std::mem::replace(rows, SplitRows::empty());
                let n = rows.len();
                let bs = self.cfg.train.batch_rows(n);
                let order = (bs < n).then(|| self.shuffle.order(self.epoch, n));
                let mut result = Ok(());
                for start in (0..n).step_by(bs.max(1)) {
                    let end = (start + bs).min(n);
                    let stats = self.step(end - start, |lo, hi, out| match &order {
                        Some(order) => {
                            rows.write(order[start + lo..start + hi].iter().copied(), out)
                        }
                        None => rows.write(start + lo..start + hi, out),
                    });
                    match stats {
                        Ok((stats, step_lr)) => {
                            total = total.merged(stats);
                            lr = step_lr;
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                self.train = TrainRows::Split(rows);
                result?;
            }
        }
        self.epoch += 1;
        Ok((total, lr))
    }

    /// One optimizer step on `n` rows that `write(lo, hi, out)` writes (rows lo..hi of the step),
    /// in micro-batches of `train.micro_batch` rows whose gradients are summed weighted by their share
    /// of the step's predictions. Returns the pre-update loss/accuracy and the lr used.
    fn step(
        &mut self,
        n: usize,
        mut write: impl FnMut(usize, usize, &mut Dataset),
    ) -> Result<(BatchStats, f64)> {
        let target = self.cfg.task.target();
        let micro = match self.cfg.train.micro_batch {
            0 => n,
            m => m.min(n),
        };
        let mut stats = BatchStats::default();
        for lo in (0..n).step_by(micro.max(1)) {
            let hi = (lo + micro).min(n);
            write(lo, hi, &mut self.pass);
            let batch = scored(&self.pass, &self.cfg);
            let into = match (&mut self.micro_grads, hi - lo == n) {
                (Some(g), false) => g,
                _ => &mut self.grads,
            };
            let part = self
                .engine
                .loss_and_grads(&self.params, &self.trainable, batch, into)?;
            if !part.loss.is_finite() {
                return Err(GrokError::Diverged(format!(
                    "the loss became {} at {} {}; the settings that can cause it: {}",
                    part.loss,
                    self.cfg.task.unit(),
                    self.epoch + 1,
                    self.cfg.train.divergence_suspects().join(", ")
                )));
            }
            if let (Some(g), false) = (&self.micro_grads, hi - lo == n) {
                let share =
                    part.predictions as f32 / target.predictions(n, self.pass.seq_len) as f32;
                let slots = self.grads.iter_mut().zip(g.iter()).zip(&self.trainable);
                for ((acc, add), _) in slots.filter(|(_, &on)| on) {
                    let pairs = acc.data.iter_mut().zip(&add.data);
                    if lo == 0 {
                        pairs.for_each(|(a, &b)| *a = share * b);
                    } else {
                        pairs.for_each(|(a, &b)| *a += share * b);
                    }
                }
            }
            stats = stats.merged(part);
        }
        // Interventions, in their papers' order: filter the gradient, project it, clip, step, and
        // put the weights back on their sphere.
        self.grokfast.apply(&mut self.grads, &self.trainable);
        if self.cfg.train.orthogonal_grad {
            orthogonalise(&mut self.grads, &self.params, &self.trainable);
        }
        if self.cfg.train.grad_clip > 0.0 {
            clip_grad_norm(&mut self.grads, &self.trainable, self.cfg.train.grad_clip);
        }
        let lr = self.cfg.train.lr_at(self.optimizer.step);
        let threads = engine::thread_count(self.cfg.train.threads);
        self.optimizer
            .step_on(threads, &mut self.params, &self.grads, &self.trainable, lr);
        if let Some(norm) = self.fixed_norm {
            project_norm(&mut self.params, &self.trainable, norm);
        }
        Ok((stats, lr))
    }

    /// Seconds one epoch (one step for a stream) and its evaluation will take on this machine,
    /// measured on a sample of at most `sample` rows of the train and test sets and scaled by
    /// their sizes. Leaves the parameters and optimizer untouched.
    pub fn estimate_epoch_seconds(&mut self, sample: usize) -> Result<f64> {
        // The first pass pays for workspaces and page faults that training pays once: time the second.
        self.time_sample(sample)?;
        let t = self.time_sample(sample)?;
        let (n_train, n_test) = self.rows();
        let eval_every = self.cfg.train.eval_every.max(1) as f64;
        Ok(t.train_seconds_per_row() * n_train as f64
            + t.test_seconds_per_row() * n_test as f64 / eval_every)
    }

    /// Times one forward and backward pass over the first `sample` train rows (for a stream, a
    /// batch of `sample` rows at the current step) and one forward pass over the first `sample`
    /// test rows. Leaves the parameters and optimizer untouched (the gradient buffers are
    /// overwritten).
    pub fn time_sample(&mut self, sample: usize) -> Result<SampleTiming> {
        let (n_train, _) = self.rows();
        match &self.train {
            TrainRows::Split(rows) => rows.write(0..sample.min(rows.len()), &mut self.pass),
            TrainRows::Stream(stream) => {
                let task = self
                    .cfg
                    .task
                    .sequence()
                    .expect("a stream is a sequence task");
                SequenceStream::at(task, sample.min(n_train).max(1), stream.step())
                    .next_batch(&mut self.pass);
            }
        }
        let train_rows = self.pass.len();
        let started = Instant::now();
        self.engine.loss_and_grads(
            &self.params,
            &self.trainable,
            scored(&self.pass, &self.cfg),
            &mut self.grads,
        )?;
        let train_seconds = started.elapsed().as_secs_f64();
        self.test
            .write(0..sample.min(self.test.len()), &mut self.pass);
        let test_rows = self.pass.len();
        let started = Instant::now();
        self.engine
            .evaluate(&self.params, scored(&self.pass, &self.cfg))?;
        Ok(SampleTiming {
            train_rows,
            train_seconds,
            test_rows,
            test_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Largest singular value of the output layer's weight now (warm-started power iteration).
    pub fn output_spectral_norm(&mut self) -> f64 {
        let (slot, rows, cols) = self.output_weight;
        spectral_norm(&self.params[slot], rows, cols, &mut self.spectral_vector)
    }

    /// Loss and accuracy on the test set (for a stream, the evaluation set) with the current
    /// parameters, in passes of at most [`TrainConfig::eval_pass_rows`] rows.
    ///
    /// [`TrainConfig::eval_pass_rows`]: crate::config::TrainConfig::eval_pass_rows
    pub fn evaluate_test(&mut self) -> Result<BatchStats> {
        self.evaluate_rows(false)
    }

    /// Loss and accuracy on the whole train split without a step (for a stream, on its next batch).
    pub fn evaluate_train(&mut self) -> Result<BatchStats> {
        self.evaluate_rows(true)
    }

    /// Scores the test rows, or the train rows, in passes of `train.eval_pass_rows()`.
    fn evaluate_rows(&mut self, train: bool) -> Result<BatchStats> {
        let rows = match (&mut self.train, train) {
            (_, false) => &self.test,
            (TrainRows::Split(rows), true) => &*rows,
            (TrainRows::Stream(stream), true) => {
                stream.next_batch(&mut self.pass);
                return self
                    .engine
                    .evaluate(&self.params, scored(&self.pass, &self.cfg));
            }
        };
        let pass = self.cfg.train.eval_pass_rows();
        let mut stats = BatchStats::default();
        for lo in (0..rows.len()).step_by(pass) {
            let hi = (lo + pass).min(rows.len());
            rows.write(lo..hi, &mut self.pass);
            let part = self
                .engine
                .evaluate(&self.params, scored(&self.pass, &self.cfg))?;
            stats = stats.merged(part);
        }
        Ok(stats)
    }

    /// The metrics row of the current epoch from its train and test scores.
    fn metrics_row(
        &mut self,
        train: BatchStats,
        test: BatchStats,
        lr: f64,
        elapsed_s: f64,
    ) -> MetricsRow {
        MetricsRow {
            epoch: self.epoch,
            train_loss: train.loss,
            train_acc: train.accuracy(),
            test_loss: test.loss,
            test_acc: test.accuracy(),
            lr,
            weight_norm_sq: self.params.sum_of_squares(),
            elapsed_s,
            output_spectral_norm: self.output_spectral_norm(),
        }
    }

    fn stop_reached(&self, row: &MetricsRow) -> bool {
        let t = &self.cfg.train;
        (t.stop_at_test_acc > 0.0 && row.test_acc >= t.stop_at_test_acc)
            || (t.stop_at_test_loss > 0.0 && row.test_loss <= t.stop_at_test_loss)
    }

    fn checkpoint(&self, elapsed_s: f64) -> Result<()> {
        if let Some(dir) = &self.run_dir {
            let c = Checkpoint {
                epoch: self.epoch,
                params: self.params.clone(),
                optimizer: self.optimizer.clone(),
                grokfast: self.grokfast.clone(),
                elapsed_s,
                spectral_vector: self.spectral_vector.clone(),
            };
            c.save(&dir.checkpoint_dir(), &self.cfg.run_id())?;
        }
        Ok(())
    }

    /// Trains until `train.epochs` or an early-stop target, calling `on_eval` after each evaluation,
    /// then writes `final.safetensors`.
    pub fn run(&mut self, on_eval: &mut dyn FnMut(&MetricsRow)) -> Result<Outcome> {
        let outcome = self.run_until(self.cfg.train.epochs, on_eval)?;
        self.write_final()?;
        Ok(outcome)
    }

    /// Writes `final.safetensors` (the current parameters, epoch and run identity) when the trainer
    /// has a run directory.
    fn write_final(&self) -> Result<()> {
        if let Some(dir) = &self.run_dir {
            let meta = [
                ("epoch".to_string(), self.epoch.to_string()),
                ("format".to_string(), "pt".to_string()),
                (crate::run::RUN_ID_KEY.to_string(), self.cfg.run_id()),
            ];
            self.params
                .save(&dir.final_path(), meta.into_iter().collect())?;
        }
        Ok(())
    }

    /// Trains up to epoch `until` (at most `train.epochs`), evaluating and checkpointing on the
    /// config's schedule; the run can be continued later with [`Trainer::run`] or `resume`.
    pub fn run_until(
        &mut self,
        until: usize,
        on_eval: &mut dyn FnMut(&MetricsRow),
    ) -> Result<Outcome> {
        let start = Instant::now();
        let total = self.cfg.train.epochs;
        let mut stopped_early = self
            .history
            .last()
            .is_some_and(|r| r.epoch == self.epoch && self.stop_reached(r));
        while self.epoch < total.min(until) && !stopped_early {
            let (train, lr) = self.train_epoch()?;
            let e = self.epoch;
            let elapsed_s = self.elapsed_before + start.elapsed().as_secs_f64();
            if e.is_multiple_of(self.cfg.train.eval_every) || e == total || e == 1 {
                let test = self.evaluate_test()?;
                if !test.loss.is_finite() {
                    return Err(GrokError::Diverged(format!(
                        "the test loss became {} at {} {e}; the settings that can cause it: {}",
                        test.loss,
                        self.cfg.task.unit(),
                        self.cfg.train.divergence_suspects().join(", ")
                    )));
                }
                let row = self.metrics_row(train, test, lr, elapsed_s);
                if let Some(dir) = &self.run_dir {
                    metrics::append(&dir.metrics_path(), &row)?;
                }
                self.history.push(row);
                on_eval(&row);
                stopped_early = self.stop_reached(&row);
            }
            if super::interrupt::requested() && e < total && !stopped_early {
                self.checkpoint(elapsed_s)?;
                self.elapsed_before += start.elapsed().as_secs_f64();
                return Err(GrokError::Interrupted(format!(
                    "stopped at {} {e} of {total} with a checkpoint written",
                    self.cfg.task.unit()
                )));
            }
            if e.is_multiple_of(self.cfg.train.checkpoint_every) || e == total || stopped_early {
                self.checkpoint(elapsed_s)?;
            }
        }
        self.elapsed_before += start.elapsed().as_secs_f64();
        Ok(Outcome {
            epochs: self.epoch,
            stopped_early,
            last: self.history.last().copied(),
        })
    }
}

/// Refuses a resume from `resume_epoch` that would lose more than a crash can: the metrics rows and
/// `final.safetensors` written after the newest loadable checkpoint are rebuilt identically only when
/// they cover at most one checkpoint interval (a crash between two checkpoints); anything more means
/// checkpoints were deleted, damaged or no longer fit the config, and resuming would overwrite history.
fn check_resume_keeps_history(
    dir: &RunDir,
    cfg: &RunConfig,
    resume_epoch: usize,
    recorded: &[MetricsRow],
    skipped: &[String],
) -> Result<()> {
    let metrics_file = dir.metrics_path();
    if recorded.windows(2).any(|w| w[0].epoch >= w[1].epoch) {
        return Err(GrokError::file(
            metrics_file,
            "has epochs out of order or repeated; restore it from a copy, or train a new run with --out elsewhere",
        ));
    }
    // Every evaluation up to the resume point must be there: the checkpoints cannot rebuild them.
    let every = cfg.train.eval_every;
    let due = (1..=resume_epoch.min(1)).chain((every..=resume_epoch).step_by(every));
    let missing: Vec<usize> = due
        .filter(|e| recorded.binary_search_by_key(e, |r| r.epoch).is_err())
        .collect();
    if let (Some(first), Some(end)) = (missing.first(), missing.last()) {
        return Err(GrokError::file(
            metrics_file,
            format!(
                "lacks {} evaluation(s) between epochs {first} and {end} that the checkpoints cannot \
                 rebuild (deleted, truncated or garbled); restore it from a copy, or train a new run \
                 with --out elsewhere",
                missing.len()
            ),
        ));
    }
    let last = recorded.last().map_or(0, |r| r.epoch);
    let finished = dir.final_path().exists() && dir.final_epoch() != Some(resume_epoch);
    if last <= resume_epoch + cfg.train.checkpoint_every && !finished {
        return Ok(());
    }
    let from = match resume_epoch {
        0 => "from scratch".to_string(),
        e => format!("from epoch {e}"),
    };
    let why = if skipped.is_empty() {
        String::new()
    } else {
        format!(" Checkpoints that did not load: {}.", skipped.join("; "))
    };
    Err(GrokError::file(
        dir.checkpoint_dir(),
        format!(
            "resuming would restart {from} and overwrite the run's history (metrics up to epoch {last}{}).{why} \
             Restore the missing checkpoints (or the config they were written with), or train a new run \
             with --out elsewhere.",
            if dir.final_path().exists() { " and final.safetensors" } else { "" }
        ),
    ))
}

/// Seconds of one training pass (forward and backward) and one evaluation pass over samples.
#[derive(Debug, Clone, Copy)]
pub struct SampleTiming {
    /// Rows in the training pass.
    pub train_rows: usize,
    /// Its seconds.
    pub train_seconds: f64,
    /// Rows in the evaluation pass.
    pub test_rows: usize,
    /// Its seconds.
    pub test_seconds: f64,
}

impl SampleTiming {
    /// Forward and backward seconds per train row.
    pub fn train_seconds_per_row(&self) -> f64 {
        self.train_seconds / self.train_rows.max(1) as f64
    }

    /// Forward seconds per test row.
    pub fn test_seconds_per_row(&self) -> f64 {
        self.test_seconds / self.test_rows.max(1) as f64
    }
}
