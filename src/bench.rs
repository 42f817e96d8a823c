//! `groklens bench`: per-epoch timings of a preset (per million rows where an epoch is too long to
//! time whole) and the machine's f32 matmul peak.

use std::time::Instant;

use crate::config::RunConfig;
use crate::error::Result;
use crate::interp::Interp;
use crate::train::Trainer;

/// Measured figures for one config on this machine.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Engine that computed the passes.
    pub engine: &'static str,
    /// Worker threads used by the engine.
    pub threads: usize,
    /// Median ms of one epoch of train steps (forward, backward, AdamW per minibatch).
    pub train_step_ms: f64,
    /// Optimizer steps per epoch.
    pub steps: usize,
    /// Rows per step.
    pub batch: usize,
    /// Median ms of one forward pass over the whole test set.
    pub test_forward_ms: f64,
    /// FLOPs of one epoch as the Python reference computes it (TransformerLens at every position;
    /// the plain PyTorch MLP), a train step counted as 3 forwards, plus the test forward.
    pub epoch_flops_full: f64,
    /// FLOPs the fast engine actually performs for one epoch (same counting).
    pub epoch_flops_performed: f64,
    /// The part of [`Self::epoch_flops_performed`] in the epoch's train steps.
    pub train_flops_performed: f64,
    /// f32 matmul peak of this machine in GFLOP/s (512³, one thread and the run's threads).
    pub matmul_peak_gflops: (f64, f64),
}

impl BenchReport {
    /// ms per epoch = train step + test forward.
    pub fn epoch_ms(&self) -> f64 {
        self.train_step_ms + self.test_forward_ms
    }

    /// Performed GFLOP per epoch divided by the measured time: how busy the arithmetic units are.
    pub fn effective_gflops(&self) -> f64 {
        self.epoch_flops_performed / (self.epoch_ms() * 1e6)
    }

    /// Reference-equivalent GFLOP per epoch divided by the measured time.
    pub fn equivalent_gflops(&self) -> f64 {
        self.epoch_flops_full / (self.epoch_ms() * 1e6)
    }

    /// Performed GFLOP/s of the train steps and of the test forward, each over its own time.
    pub fn pass_gflops(&self) -> (f64, f64) {
        let test = self.epoch_flops_performed - self.train_flops_performed;
        (
            self.train_flops_performed / (self.train_step_ms * 1e6),
            test / (self.test_forward_ms * 1e6),
        )
    }

    /// ms the train steps' performed FLOPs take at the measured matmul peak: their f32 floor.
    pub fn train_floor_ms(&self) -> f64 {
        self.train_flops_performed / (self.matmul_peak_gflops.1 * 1e6)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `iters` full-batch train steps and test forwards of `cfg` after a short warm-up.
pub fn bench(cfg: &RunConfig, iters: usize) -> Result<BenchReport> {
    let mut t = Trainer::new(cfg.clone())?;
    t.train_epoch()?;
    t.evaluate_test()?;
    let (mut train_ms, mut test_ms) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        t.train_epoch()?;
        train_ms.push(s.elapsed().as_secs_f64() * 1e3);
        let s = Instant::now();
        t.evaluate_test()?;
        test_ms.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let (n_train, n_test) = t.rows();
    let fast = t.engine_name() == "fast";
    let batch = cfg.train.batch_rows(n_train);
    let steps: Vec<usize> = (0..n_train)
        .step_by(batch)
        .map(|s| batch.min(n_train - s))
        .collect();
    // A train step is counted as three forwards (forward, backward to activations and to weights).
    let train = |fast: bool| {
        steps
            .iter()
            .map(|&rows| 3.0 * forward_flops(cfg, fast, rows))
            .sum::<f64>()
    };
    let epoch = |fast: bool| train(fast) + forward_flops(cfg, fast, n_test);
    let threads = crate::engine::thread_count(cfg.train.threads);
    Ok(BenchReport {
        engine: t.engine_name(),
        threads,
        train_step_ms: median(train_ms),
        test_forward_ms: median(test_ms),
        steps: steps.len(),
        batch,
        epoch_flops_full: epoch(false),
        epoch_flops_performed: epoch(fast),
        train_flops_performed: train(fast),
        matmul_peak_gflops: matmul_peaks(threads),
    })
}

/// FLOPs of one forward pass over `rows`: as the fast engine's plan performs them when `fast` (the
/// fast engine ran), as the Python reference computes them otherwise.
fn forward_flops(cfg: &RunConfig, fast: bool, rows: usize) -> f64 {
    let target = cfg.task.target();
    match crate::engine::fast::plan(&cfg.model, target) {
        Ok(plan) if fast => plan.forward_flops(rows, target),
        _ => cfg.model.reference_flops(rows),
    }
}

/// Train sets above this many rows are timed per million rows on micro-batch samples
/// ([`bench_rows`]) rather than as whole epochs.
pub const WHOLE_EPOCH_ROWS: usize = 1 << 17;

/// Measured figures per million rows for a task whose epoch is too long to time whole.
#[derive(Debug, Clone)]
pub struct RowsBenchReport {
    /// Engine that computed the passes.
    pub engine: &'static str,
    /// Worker threads used by the engine.
    pub threads: usize,
    /// Rows per timed pass (the config's micro-batch).
    pub pass_rows: usize,
    /// Median ms of forward + backward per million train rows.
    pub train_ms_per_million: f64,
    /// Median ms of the forward pass per million test rows.
    pub test_ms_per_million: f64,
    /// Train and test rows of one epoch.
    pub rows: (usize, usize),
    /// FLOPs per million rows of forward + backward (3 forwards), reference-equivalent and performed.
    pub train_flops_per_million: (f64, f64),
    /// f32 matmul peak of this machine in GFLOP/s (one thread and the run's threads).
    pub matmul_peak_gflops: (f64, f64),
}

impl RowsBenchReport {
    /// Estimated seconds of one epoch: every train row forward and backward, every test row forward.
    pub fn epoch_seconds(&self) -> f64 {
        let (train, test) = self.rows;
        (self.train_ms_per_million * train as f64 + self.test_ms_per_million * test as f64) / 1e9
    }

    /// Performed and reference-equivalent GFLOP/s of the training passes.
    pub fn train_gflops(&self) -> (f64, f64) {
        let (full, performed) = self.train_flops_per_million;
        let seconds = self.train_ms_per_million / 1e3;
        (performed / seconds / 1e9, full / seconds / 1e9)
    }
}

/// Times `iters` forward + backward passes and forward passes over one micro-batch (the config's
/// `train.micro_batch`, else 8 192 rows) after a warm-up, scaled to a million rows.
pub fn bench_rows(cfg: &RunConfig, iters: usize) -> Result<RowsBenchReport> {
    let mut t = Trainer::new(cfg.clone())?;
    let pass = match cfg.train.micro_batch {
        0 => 8192,
        rows => rows,
    };
    t.time_sample(pass)?;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut pass_rows = pass;
    for _ in 0..iters.max(1) {
        let s = t.time_sample(pass)?;
        train.push(s.train_seconds_per_row() * 1e9);
        test.push(s.test_seconds_per_row() * 1e9);
        pass_rows = s.train_rows;
    }
    let million = 1_000_000;
    let fast = t.engine_name() == "fast";
    let threads = crate::engine::thread_count(cfg.train.threads);
    Ok(RowsBenchReport {
        engine: t.engine_name(),
        threads,
        pass_rows,
        train_ms_per_million: median(train),
        test_ms_per_million: median(test),
        rows: t.rows(),
        train_flops_per_million: (
            3.0 * forward_flops(cfg, false, million),
            3.0 * forward_flops(cfg, fast, million),
        ),
        matmul_peak_gflops: matmul_peaks(threads),
    })
}

/// Median seconds of `run_with_cache` over every input of `cfg`'s task with every hook point recorded.
pub fn run_with_cache_seconds(cfg: &RunConfig, iters: usize) -> Result<(f64, usize, usize)> {
    let model = cfg
        .model
        .build(&crate::model::Params::init(&cfg.model, cfg.rng))?;
    let data = match cfg.task.modular() {
        Some(t) => t.dataset(),
        None => {
            return Err(crate::error::GrokError::config(
                "task.kind",
                cfg.task.kind(),
                "the run_with_cache benchmark runs every input of a modular task",
            ))
        }
    };
    let tokens = model.tokens_tensor(&data.tokens, data.len())?;
    let mut times = Vec::new();
    let mut recorded = 0;
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        let (_, cache) = model.run_with_cache(&tokens, &crate::interp::Names::All)?;
        times.push(s.elapsed().as_secs_f64());
        recorded = cache.len();
    }
    Ok((median(times), data.len(), recorded))
}

/// Products [`matmul_peak`] times at least. Each takes about a millisecond, so on a shared host some
/// of them must miss the neighbours' bursts for the peak (the denominator of every "share of the
/// matmul peak") to be the machine's; five were too few (shares above 100 % were printed).
const PEAK_REPEATS: usize = 25;

/// The least time [`matmul_peak`] spends: 25 products of a millisecond could all fall inside one
/// burst of a neighbour's work (a Zen 4 host printed a 2-thread peak at half its usual figure, and a
/// share of 112 %), so the products go on until this much time has passed.
const PEAK_SPAN: std::time::Duration = std::time::Duration::from_millis(300);

/// [`matmul_peak`] on one thread and on the run's `threads` (the same figure twice for one thread):
/// the run's GFLOP/s are a share of the second, so it must be measured on the threads they ran on
/// (it was measured on every core, and a 1-thread run read "33 % of the peak" at 64 % of its own).
pub fn matmul_peaks(threads: usize) -> (f64, f64) {
    let one = matmul_peak(1);
    (
        one,
        if threads > 1 {
            matmul_peak(threads)
        } else {
            one
        },
    )
}

/// Best GFLOP/s of 512×512×512 f32 matmuls with `threads` threads (the `gemm` crate), over at least
/// [`PEAK_REPEATS`] products and [`PEAK_SPAN`].
pub fn matmul_peak(threads: usize) -> f64 {
    let n = 512;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut best = f64::MAX;
    let start = Instant::now();
    let mut done = 0;
    while done < PEAK_REPEATS || (start.elapsed() < PEAK_SPAN && done < 50 * PEAK_REPEATS) {
        done += 1;
        let s = Instant::now();
        // SAFETY: the three buffers are n×n, row-major, with the strides given.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
        best = best.min(s.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::matmul_peaks;

    /// A 1-thread run's shares are of the 1-thread peak: the run's figure is that measurement
    /// itself, not one taken on every core.
    #[test]
    fn a_one_thread_run_is_measured_against_the_one_thread_peak() {
        let (one, run) = matmul_peaks(1);
        assert!(one > 0.0);
        assert_eq!(one.to_bits(), run.to_bits());
    }
}
