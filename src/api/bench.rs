//! `groklens bench`: times a preset's training on this machine and says how close it runs to the
//! measured f32 matmul peak.

use super::build_config;
use crate::bench::{self, WHOLE_EPOCH_ROWS};
use crate::error::{GrokError, Result};
use crate::linalg::kernels::simd_build;

/// `gflops` as a share of the measured matmul `peak` on the same threads, for the figures' margins.
fn share(gflops: f64, peak: f64) -> String {
    if peak > 0.0 && gflops.is_finite() {
        let share = 100.0 * gflops / peak;
        let busy = if share > 100.0 {
            ": above it, so the peak was measured while the host was busy; run again"
        } else {
            ""
        };
        format!("{share:.0} % of the matmul peak{busy}")
    } else {
        "no matmul peak measured".into()
    }
}

/// How far `ms` is from `floor_ms`, the same FLOPs at the matmul peak.
fn floor(ms: f64, floor_ms: f64) -> String {
    if floor_ms > 0.0 && floor_ms.is_finite() {
        format!("{:.2}× its f32 floor of {floor_ms:.2} ms", ms / floor_ms)
    } else {
        "no f32 floor without a peak".into()
    }
}

/// Times preset `preset` (with `sets`), the median of `iters` passes, and returns the figures as
/// text: whole epochs where they are short enough, figures per million rows otherwise.
pub fn bench_preset(preset: &str, sets: &[String], iters: usize) -> Result<String> {
    if iters == 0 {
        return Err(GrokError::Usage(
            "--iters must be at least 1 (the median of no timings is undefined)".into(),
        ));
    }
    let cfg = build_config(Some(preset), None, sets)?;
    let (n_train, _) = cfg.task.split_sizes(cfg.train.batch_size);
    if n_train > WHOLE_EPOCH_ROWS {
        return rows_text(preset, &cfg, iters);
    }
    let r = bench::bench(&cfg, iters)?;
    let mut out = format!(
        "preset {preset}: engine {}, {} build, {} thread(s), median of {iters}\n",
        r.engine,
        simd_build().name(),
        r.threads
    );
    let peak = r.matmul_peak_gflops.1;
    let (train, test) = r.pass_gflops();
    out += &format!(
        "  train steps ({} × {} rows) {:7.2} ms  ({train:.1} GFLOP/s: {}; {})\n",
        r.steps,
        r.batch,
        r.train_step_ms,
        share(train, peak),
        floor(r.train_step_ms, r.train_floor_ms())
    );
    out += &format!(
        "  test-set forward         {:8.2} ms  ({test:.1} GFLOP/s: {})\n",
        r.test_forward_ms,
        share(test, peak)
    );
    out += &format!(
        "  epoch                    {:8.2} ms  ({:.1} epochs/s)\n",
        r.epoch_ms(),
        1e3 / r.epoch_ms()
    );
    out += &format!(
        "  effective                {:8.1} GFLOP/s  ({}; {:.2} GFLOP/epoch performed)\n",
        r.effective_gflops(),
        share(r.effective_gflops(), peak),
        r.epoch_flops_performed / 1e9
    );
    out += &format!(
        "  reference-equivalent     {:8.1} GFLOP/s  ({:.2} GFLOP/epoch as the Python reference computes it)\n",
        r.equivalent_gflops(),
        r.epoch_flops_full / 1e9
    );
    if cfg.task.modular().is_some() {
        let (secs, rows, hooks) = bench::run_with_cache_seconds(&cfg, 5)?;
        out += &format!(
            "  run_with_cache           {:8.1} ms  ({rows} inputs, {hooks} hook points, candle path)\n",
            secs * 1e3
        );
    }
    out += &peak_line(r.matmul_peak_gflops, r.threads);
    Ok(out)
}

/// `bench` for a task whose epoch is too long to time whole: figures per million rows.
fn rows_text(preset: &str, cfg: &crate::RunConfig, iters: usize) -> Result<String> {
    let r = bench::bench_rows(cfg, iters)?;
    let (performed, equivalent) = r.train_gflops();
    Ok([
        format!(
            "preset {preset}: engine {}, {} build, {} thread(s), median of {iters} passes of {} rows",
            r.engine,
            simd_build().name(),
            r.threads,
            r.pass_rows
        ),
        format!(
            "  train forward+backward   {:8.1} ms per million rows",
            r.train_ms_per_million
        ),
        format!(
            "  test forward             {:8.1} ms per million rows",
            r.test_ms_per_million
        ),
        format!(
            "  train effective          {performed:8.1} GFLOP/s  ({}; reference-equivalent {equivalent:.1} GFLOP/s)",
            share(performed, r.matmul_peak_gflops.1)
        ),
        format!(
            "  epoch estimate           {:8.1} s  ({} train rows forward+backward, {} test rows forward)",
            r.epoch_seconds(),
            r.rows.0,
            r.rows.1
        ),
        peak_line(r.matmul_peak_gflops, r.threads),
    ]
    .join("\n"))
}

/// The matmul peak on one thread and, for a run on more, on the run's `threads` (what its shares
/// are of).
fn peak_line((one, run): (f64, f64), threads: usize) -> String {
    let line = format!("  f32 matmul peak (512^3)  {one:8.1} GFLOP/s 1 thread");
    if threads > 1 {
        return format!("{line}, {run:.1} GFLOP/s {threads} threads");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{floor, peak_line, share};

    /// The train steps' distance from their floor is their time over the floor's.
    #[test]
    fn the_floor_is_the_same_work_at_the_peak() {
        assert_eq!(floor(63.0, 42.0), "1.50× its f32 floor of 42.00 ms");
        assert_eq!(floor(63.0, 0.0), "no f32 floor without a peak");
    }

    /// A 1-thread run's peak is the 1-thread figure alone (it printed the every-core figure as
    /// "1 threads"); a run on more threads shows both.
    #[test]
    fn the_peak_line_names_the_threads_it_was_measured_on() {
        assert_eq!(
            peak_line((110.0, 110.0), 1),
            "  f32 matmul peak (512^3)     110.0 GFLOP/s 1 thread"
        );
        assert_eq!(
            peak_line((110.0, 215.5), 2),
            "  f32 matmul peak (512^3)     110.0 GFLOP/s 1 thread, 215.5 GFLOP/s 2 threads"
        );
    }

    /// A share above the measured peak says the peak is suspect instead of passing as a figure.
    #[test]
    fn a_share_above_the_peak_is_flagged() {
        assert_eq!(share(150.0, 200.0), "75 % of the matmul peak");
        let above = share(224.0, 200.0);
        assert!(
            above.starts_with("112 % of the matmul peak: above it"),
            "{above}"
        );
        assert!(above.contains("run again"), "{above}");
        assert_eq!(share(150.0, 0.0), "no matmul peak measured");
    }
}
