//! `metrics.csv`: one row per evaluation, appended as training goes and truncated on resume.

use std::io::Write;
use std::path::Path;

use crate::error::{GrokError, Result};
use crate::tensor_io::write_bytes_atomic;

/// Header of `metrics.csv`.
pub const HEADER: &str =
    "epoch,train_loss,train_acc,test_loss,test_acc,lr,weight_norm_sq,elapsed_s,output_spectral_norm";

/// One evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsRow {
    /// Completed epochs.
    pub epoch: usize,
    /// Mean train loss of the epoch's forward passes (before each step's update).
    pub train_loss: f64,
    /// Train accuracy, same passes.
    pub train_acc: f64,
    /// Test loss after the epoch.
    pub test_loss: f64,
    /// Test accuracy after the epoch.
    pub test_acc: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Sum of squares of all parameters after the epoch.
    pub weight_norm_sq: f64,
    /// Wall-clock seconds of training so far (across resumes).
    pub elapsed_s: f64,
    /// Largest singular value of the output layer's weight (`W_U`, or the MLP's last Linear), as
    /// seed 002 plots it; NaN in rows written before this column existed.
    pub output_spectral_norm: f64,
}

impl MetricsRow {
    /// The CSV line (no newline); floats in shortest round-trip form.
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{:.3},{}",
            self.epoch,
            self.train_loss,
            self.train_acc,
            self.test_loss,
            self.test_acc,
            self.lr,
            self.weight_norm_sq,
            self.elapsed_s,
            self.output_spectral_norm
        )
    }

    /// Parses a CSV line (9 fields, or the 8 of files written before `output_spectral_norm`);
    /// `None` for a partial or malformed line.
    pub fn from_csv(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != 8 && f.len() != 9 {
            return None;
        }
        let n = |i: usize| f[i].parse::<f64>().ok();
        Some(MetricsRow {
            epoch: f[0].parse().ok()?,
            train_loss: n(1)?,
            train_acc: n(2)?,
            test_loss: n(3)?,
            test_acc: n(4)?,
            lr: n(5)?,
            weight_norm_sq: n(6)?,
            elapsed_s: n(7)?,
            output_spectral_norm: if f.len() == 9 { n(8)? } else { f64::NAN },
        })
    }
}

/// Reads every complete row of a metrics file (a partial last line from a crash is dropped).
pub fn read(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GrokError::file(path, format!("cannot read: {e}")))?;
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    let mut rows = Vec::new();
    for (i, line) in complete.lines().enumerate().skip(1) {
        let bad = |why: &str| {
            GrokError::file(
                path,
                format!(
                    "line {}: {why} ({line:?}); restore the file, or remove the run to train it again",
                    i + 1
                ),
            )
        };
        let row = MetricsRow::from_csv(line).ok_or_else(|| bad("not a metrics row"))?;
        let values = [
            row.train_loss,
            row.train_acc,
            row.test_loss,
            row.test_acc,
            row.lr,
            row.weight_norm_sq,
            row.elapsed_s,
        ];
        if values.iter().any(|v| v.is_nan()) {
            return Err(bad("holds NaN, which training never records"));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Replaces the file with `rows`, atomically.
pub fn write_all(path: &Path, rows: &[MetricsRow]) -> Result<()> {
    let mut s = String::from(HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.to_csv());
        s.push('\n');
    }
    write_bytes_atomic(path, s.as_bytes())
}

/// Appends one row and flushes it.
pub fn append(path: &Path, row: &MetricsRow) -> Result<()> {
    let io = |e: std::io::Error| GrokError::file(path, format!("cannot append: {e}"));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{}", row.to_csv()).map_err(io)
}

/// Accuracy at which a run counts as grokked (train: memorised; test: generalised), as the seeds plot it.
pub const GROKKED_ACCURACY: f64 = 0.99;

/// The first evaluated epoch at which test accuracy reached `threshold`, if any.
pub fn grokking_epoch(history: &[MetricsRow], threshold: f64) -> Option<usize> {
    history
        .iter()
        .find(|r| r.test_acc >= threshold)
        .map(|r| r.epoch)
}
