//! `metrics.csv`: one row per evaluation, appended as training goes and truncated on resume.

use std::io::Write;
use std::path::Path;

use crate::error::{GrokError, Result};
use crate::tensor_io::write_bytes_atomic;

/// The columns of `metrics.csv`, in the order they are written; the reader finds each by its
/// header name, so files whose columns are in another order read the same.
pub const COLUMNS: [&str; 9] = [
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "weight_norm_sq",
    "elapsed_s",
    "output_spectral_norm",
];

/// Columns a file may lack: written only by later versions (read as NaN when absent).
const OPTIONAL: [&str; 1] = ["output_spectral_norm"];

/// The header line of `metrics.csv` (no newline).
pub fn header() -> String {
    COLUMNS.join(",")
}

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

    /// The row's value of column `name` (one of [`COLUMNS`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "epoch" => self.epoch as f64,
            "train_loss" => self.train_loss,
            "train_acc" => self.train_acc,
            "test_loss" => self.test_loss,
            "test_acc" => self.test_acc,
            "lr" => self.lr,
            "weight_norm_sq" => self.weight_norm_sq,
            "elapsed_s" => self.elapsed_s,
            "output_spectral_norm" => self.output_spectral_norm,
            _ => return None,
        })
    }
}

/// Where each of [`COLUMNS`] sits in a file, from its header line.
struct Layout {
    /// Field index of each column; `None` for an absent optional one.
    at: [Option<usize>; COLUMNS.len()],
    /// Fields per line.
    width: usize,
}

impl Layout {
    /// Reads a header, refusing unknown, repeated or missing (required) columns by name.
    fn of(header: &str) -> std::result::Result<Self, String> {
        let names: Vec<&str> = header.trim().split(',').collect();
        let mut at = [None; COLUMNS.len()];
        for (i, n) in names.iter().enumerate() {
            let Some(c) = COLUMNS.iter().position(|c| c == n) else {
                return Err(format!(
                    "unknown column {n:?} in the header (a metrics.csv has {})",
                    COLUMNS.join(", ")
                ));
            };
            if at[c].replace(i).is_some() {
                return Err(format!("column {n:?} appears twice in the header"));
            }
        }
        if let Some(c) =
            (0..COLUMNS.len()).find(|&c| at[c].is_none() && !OPTIONAL.contains(&COLUMNS[c]))
        {
            return Err(format!("the header lacks column {:?}", COLUMNS[c]));
        }
        Ok(Layout {
            at,
            width: names.len(),
        })
    }

    /// Parses one line; `None` for a partial or malformed one.
    fn row(&self, line: &str) -> Option<MetricsRow> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != self.width {
            return None;
        }
        let field = |name: &str| {
            let c = COLUMNS
                .iter()
                .position(|c| *c == name)
                .expect("a known column");
            self.at[c].map(|i| f[i])
        };
        let n = |name: &str| match field(name) {
            Some(v) => v.parse::<f64>().ok(),
            None => Some(f64::NAN),
        };
        Some(MetricsRow {
            epoch: field("epoch")?.parse().ok()?,
            train_loss: n("train_loss")?,
            train_acc: n("train_acc")?,
            test_loss: n("test_loss")?,
            test_acc: n("test_acc")?,
            lr: n("lr")?,
            weight_norm_sq: n("weight_norm_sq")?,
            elapsed_s: n("elapsed_s")?,
            output_spectral_norm: n("output_spectral_norm")?,
        })
    }
}

/// Reads every complete row of a metrics file (a partial last line from a crash is dropped).
pub fn read(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GrokError::file(path, format!("cannot read: {e}")))?;
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    let Some(head) = complete.lines().next() else {
        return Ok(Vec::new());
    };
    let layout = Layout::of(head).map_err(|why| {
        GrokError::file(
            path,
            format!("{why}; restore the file, or remove the run to train it again"),
        )
    })?;
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
        let row = layout.row(line).ok_or_else(|| bad("not a metrics row"))?;
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
    let mut s = header();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize) -> MetricsRow {
        MetricsRow {
            epoch,
            train_loss: 0.5,
            train_acc: 0.25,
            test_loss: 1.5,
            test_acc: 0.125,
            lr: 1e-3,
            weight_norm_sq: 42.0,
            elapsed_s: 1.5,
            output_spectral_norm: 2.0,
        }
    }

    /// Columns are found by header name: a file with them in another order, or without the optional
    /// one, reads the same values; unknown, repeated or missing columns are refused by name.
    #[test]
    fn rows_are_read_by_header_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        write_all(&path, &[row(1), row(2)]).unwrap();
        assert_eq!(read(&path).unwrap(), [row(1), row(2)]);
        // Reversed columns.
        let reversed = |line: &str| line.split(',').rev().collect::<Vec<_>>().join(",");
        let text = format!("{}\n{}\n", reversed(&header()), reversed(&row(3).to_csv()));
        std::fs::write(&path, text).unwrap();
        assert_eq!(read(&path).unwrap(), [row(3)]);
        // An older file without output_spectral_norm.
        let old = format!(
            "{}\n{}\n",
            COLUMNS[..8].join(","),
            "4,0.5,0.25,1.5,0.125,0.001,42,1.500"
        );
        std::fs::write(&path, old).unwrap();
        let r = read(&path).unwrap()[0];
        assert_eq!((r.epoch, r.test_loss), (4, 1.5));
        assert!(r.output_spectral_norm.is_nan());
        for (head, needle) in [
            (format!("{},bogus", header()), "unknown column \"bogus\""),
            (format!("{},lr", header()), "\"lr\" appears twice"),
            (COLUMNS[1..].join(","), "lacks column \"epoch\""),
        ] {
            std::fs::write(&path, format!("{head}\n")).unwrap();
            let e = read(&path).err().unwrap().to_string();
            assert!(e.contains(needle) && e.contains("metrics.csv"), "{e}");
        }
    }
}
