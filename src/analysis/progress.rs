//! Progress measures over training (Nanda et al. 2023, "Progress measures for grokking via mechanistic
//! interpretability"), and the phase boundaries read off them.
//!
//! For a checkpoint with last-position logits `L[(a, b), c]` over the whole grid and the final model's
//! key frequencies K, let `u_k` and `v_k` be the unit vectors cos(2πk(a ± b)/p) and sin(2πk(a ± b)/p)
//! over the p² grid (+ for `add`, − for `sub`). The key-frequency part of the logits is, for each
//! output c, the projection of `L[·, c]` onto span{u_k, v_k : k ∈ K}.
//! - **Restricted loss**: the loss, over every example of the task (train and test), of logits that
//!   keep only each output's mean over the grid plus the key-frequency part. Falls once the Fourier
//!   circuit exists, before the test loss does.
//! - **Excluded loss**: the loss on the *train* set of the logits with the key-frequency part removed.
//!   Rises during circuit formation, as the model comes to rely on the circuit rather than memorisation.
//! - **Gini coefficients** of the Fourier component norms of W_E (over inputs) and of
//!   W_L = W_out·W_U (over outputs): how sparse in frequency the weights are.
//! - **Total sum of squared weights**, and train/test loss and accuracy from `metrics.csv`.
//!
//! The two losses are defined for `add` and `sub`, whose answer is a function of a ± b; other
//! operations get `None`.
//!
//! Phase boundaries, from the metrics (every evaluated epoch):
//! - **End of memorisation**: the first epoch at which train accuracy reaches 99 %.
//! - From there, let `L_peak` be the highest test loss at or after that epoch (before the final
//!   minimum) and `L_min` the lowest test loss of the run. If the test loss never falls by a factor
//!   of 10 from `L_peak`, the run did not grok and the later boundaries are absent.
//! - **End of circuit formation** (start of cleanup): the first epoch after the peak at which
//!   ln(test loss) has covered 10 % of the way from ln L_peak to ln L_min.
//! - **End of cleanup**: the first epoch at which it has covered 90 % of the way.

use crate::analysis::fourier::{col_norms, row_norms, FourierBasis};
use crate::analysis::stats::gini;
use crate::linalg::Matrix;
use crate::model::{ModelConfig, Params};
use crate::run::{MetricsRow, GROKKED_ACCURACY};
use crate::tasks::{ModularTask, Operation};

/// Progress measures of one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressPoint {
    /// Completed epochs.
    pub epoch: usize,
    /// Restricted loss (key-frequency part only), over all examples; `None` for other operations.
    pub restricted_loss: Option<f64>,
    /// Excluded loss (key-frequency part removed), on the train set; `None` for other operations.
    pub excluded_loss: Option<f64>,
    /// Gini coefficient of W_E's Fourier component norms.
    pub gini_embed: f64,
    /// Gini coefficient of W_L = W_out·W_U's Fourier component norms (`None` without an MLP).
    pub gini_logit: Option<f64>,
    /// Σ of squared parameters.
    pub weight_norm_sq: f64,
}

/// The key-frequency directions over the grid for a task, and which rows the losses read.
pub struct KeyDirections {
    /// Unit vectors over the p² grid, two per key frequency (cos then sin).
    directions: Vec<Vec<f32>>,
    /// Grid row and label of every example of the task.
    all: Vec<(usize, u32)>,
    /// Grid row and label of every train example.
    train: Vec<(usize, u32)>,
}

impl KeyDirections {
    /// Directions for `key_freqs` of `task`; `None` when the operation is not a function of a ± b.
    pub fn new(task: &ModularTask, key_freqs: &[usize], train_rows: &[usize]) -> Option<Self> {
        let sign: i64 = match task.op {
            Operation::Add => 1,
            Operation::Sub => -1,
            _ => return None,
        };
        let p = task.p;
        let mut directions = Vec::new();
        for &k in key_freqs {
            let phase = |i: usize| {
                let (a, b) = ((i / p) as i64, (i % p) as i64);
                let s = (a + sign * b).rem_euclid(p as i64);
                2.0 * std::f64::consts::PI * (k as i64 * s) as f64 / p as f64
            };
            for f in [f64::cos, f64::sin] {
                let v: Vec<f64> = (0..p * p).map(|i| f(phase(i))).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm > 1e-9 {
                    directions.push(v.iter().map(|x| (x / norm) as f32).collect());
                }
            }
        }
        let all = task.grid_examples();
        let train = train_rows.iter().map(|&r| all[r]).collect();
        Some(KeyDirections {
            directions,
            all,
            train,
        })
    }

    /// `(restricted loss, excluded loss)` of grid logits `logits` (`p² × p`).
    pub fn losses(&self, logits: &Matrix) -> (f64, f64) {
        let (n, c) = (logits.rows, logits.cols);
        // Key-frequency part: Σ_d d · (dᵀ L).
        let mut key_part = vec![0.0f32; n * c];
        for d in &self.directions {
            let mut coef = vec![0.0f64; c];
            for (i, &w) in d.iter().enumerate() {
                let row = &logits.data[i * c..(i + 1) * c];
                for (acc, &l) in coef.iter_mut().zip(row) {
                    *acc += w as f64 * l as f64;
                }
            }
            for (i, &w) in d.iter().enumerate() {
                for (out, &k) in key_part[i * c..(i + 1) * c].iter_mut().zip(&coef) {
                    *out += w * k as f32;
                }
            }
        }
        let mean: Vec<f32> = (0..c)
            .map(|j| ((0..n).map(|i| logits.at(i, j) as f64).sum::<f64>() / n as f64) as f32)
            .collect();
        let restricted = |i: usize, j: usize| mean[j] + key_part[i * c + j];
        let excluded = |i: usize, j: usize| logits.at(i, j) - key_part[i * c + j];
        (
            mean_cross_entropy(&self.all, c, restricted),
            mean_cross_entropy(&self.train, c, excluded),
        )
    }
}

/// Mean −log softmax(logit(row, ·))[label] over `(row, label)` pairs, in f64.
fn mean_cross_entropy(rows: &[(usize, u32)], c: usize, logit: impl Fn(usize, usize) -> f32) -> f64 {
    let total: f64 = rows
        .iter()
        .map(|&(i, y)| {
            let vals: Vec<f64> = (0..c).map(|j| logit(i, j) as f64).collect();
            let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + vals.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - vals[y as usize]
        })
        .sum();
    total / rows.len().max(1) as f64
}

/// Gini coefficients of the Fourier norms of the embedding's number rows, and of the neuron-to-logit
/// map over the p answers (`W_out·W_U` of the last block, or the MLP's output weight).
pub fn weight_ginis(
    basis: &FourierBasis,
    cfg: &ModelConfig,
    params: &Params,
) -> (f64, Option<f64>) {
    let p = basis.p();
    let w_e = cfg
        .embedding(params)
        .select_rows(&(0..p).collect::<Vec<_>>());
    let g_e = gini(&row_norms(&basis.transform(&w_e)));
    let g_l = w_logit(cfg, params, p).map(|w_l| gini(&col_norms(&basis.transform_rows(&w_l))));
    (g_e, g_l)
}

/// The neuron-to-logit map over the first `p` (answer) columns, `neurons × p`; `None` without
/// neurons.
pub fn w_logit(cfg: &ModelConfig, params: &Params, p: usize) -> Option<Matrix> {
    cfg.neuron_logit_map(params).map(|(m, _)| m.first_cols(p))
}

/// Epochs at which the three phases end; `None` where the run did not get there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases {
    /// End of memorisation: first epoch with train accuracy ≥ 99 %.
    pub memorisation_end: Option<usize>,
    /// End of circuit formation: test loss 10 % of the (log) way down from its peak to its minimum.
    pub circuit_formation_end: Option<usize>,
    /// End of cleanup: 90 % of the way down.
    pub cleanup_end: Option<usize>,
}

/// Phase boundaries from the metrics rows, by the rules in this module's documentation.
pub fn phases(rows: &[MetricsRow]) -> Phases {
    let Some(mem) = rows.iter().position(|r| r.train_acc >= GROKKED_ACCURACY) else {
        return Phases::default();
    };
    let mut out = Phases {
        memorisation_end: Some(rows[mem].epoch),
        ..Phases::default()
    };
    let ln = |r: &MetricsRow| r.test_loss.max(1e-300).ln();
    let after = &rows[mem..];
    let (min_i, min_ln) =
        after
            .iter()
            .map(ln)
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |best, (i, v)| if v < best.1 { (i, v) } else { best },
            );
    let (peak_i, peak_ln) =
        after[..=min_i]
            .iter()
            .map(ln)
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            });
    let drop = peak_ln - min_ln;
    if drop < 10f64.ln() {
        return out;
    }
    let first_below = |frac: f64| {
        after[peak_i..]
            .iter()
            .find(|r| ln(r) <= peak_ln - frac * drop)
            .map(|r| r.epoch)
    };
    out.circuit_formation_end = first_below(0.1);
    out.cleanup_end = first_below(0.9);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize, train_acc: f64, test_loss: f64) -> MetricsRow {
        MetricsRow {
            epoch,
            train_loss: 0.0,
            train_acc,
            test_loss,
            test_acc: 0.0,
            lr: 1e-3,
            weight_norm_sq: 0.0,
            elapsed_s: 0.0,
            output_spectral_norm: f64::NAN,
        }
    }

    #[test]
    fn phases_follow_the_documented_rules() {
        // Memorise by epoch 30, test loss peaks at e^3, then falls to e^-7 between epochs 60 and 100.
        let mut rows = vec![row(0, 0.0, 4.0), row(10, 0.5, 5.0), row(20, 0.9, 8.0)];
        rows.push(row(30, 1.0, 3f64.exp()));
        rows.push(row(40, 1.0, 3f64.exp()));
        for (i, ln) in [2.5, 1.9, 0.0, -4.0, -6.0, -7.0, -7.0].iter().enumerate() {
            rows.push(row(50 + 10 * i, 1.0, f64::exp(*ln)));
        }
        let ph = phases(&rows);
        assert_eq!(ph.memorisation_end, Some(30));
        // 10 % of the way from 3 to -7 is ln = 2.0 (epoch 60 at 1.9); 90 % is -6.0 (epoch 90).
        assert_eq!(ph.circuit_formation_end, Some(60));
        assert_eq!(ph.cleanup_end, Some(90));

        // Memorised but never generalised: only the first boundary.
        let flat: Vec<_> = (0..10)
            .map(|i| row(i * 10, 1.0, 5.0 - 0.1 * i as f64))
            .collect();
        assert_eq!(
            phases(&flat),
            Phases {
                memorisation_end: Some(0),
                ..Phases::default()
            }
        );
        assert_eq!(phases(&[row(0, 0.2, 4.0)]), Phases::default());
    }

    /// Logits that are exactly a key-frequency function of a+b−c, plus a non-key distraction.
    #[test]
    fn restricted_and_excluded_losses_on_constructed_logits() {
        let task = ModularTask {
            p: 13,
            train_frac: 0.5,
            ..ModularTask::grokking_demo()
        };
        let p = task.p;
        let w = 2.0 * std::f64::consts::PI / p as f64;
        let logit = |a: usize, b: usize, c: usize, distract: f64| {
            let s = (a + b) as f64 - c as f64;
            (4.0 * ((w * 3.0 * s).cos() + (w * 5.0 * s).cos())
                + distract * (w * 2.0 * (a as f64 - b as f64 + c as f64)).sin()) as f32
        };
        let grid = |distract: f64| {
            Matrix::new(
                p * p,
                p,
                (0..p * p * p)
                    .map(|i| logit(i / (p * p), (i / p) % p, i % p, distract))
                    .collect(),
            )
            .unwrap()
        };
        let train = task.split(crate::rng::RngKind::Chacha).train;
        let keys = KeyDirections::new(&task, &[3, 5], &train).unwrap();
        let clean = grid(0.0);
        let (restricted, excluded) = keys.losses(&clean);
        // The key part is the whole signal: restricted = full loss; excluded logits are constant.
        let full = mean_cross_entropy(&keys.all, p, |i, j| clean.at(i, j));
        assert!((restricted - full).abs() < 1e-5, "{restricted} vs {full}");
        assert!((excluded - (p as f64).ln()).abs() < 1e-4, "{excluded}");
        // A non-key distraction does not survive the restriction.
        let (restricted_d, _) = keys.losses(&grid(3.0));
        assert!((restricted_d - full).abs() < 1e-4);
        // Operations that are not a function of a ± b have no such directions.
        let mul = ModularTask {
            op: Operation::Mul,
            ..task
        };
        assert!(KeyDirections::new(&mul, &[3], &train).is_none());
    }
}
