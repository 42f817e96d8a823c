//! What only quantized (BitNet) runs have: the share of each BitLinear weight at −1 / 0 / +1 over the
//! checkpoints, how many quantized values flip between consecutive checkpoints (when the discrete
//! circuit stops changing, against the grokking phases), and the first FFN matrix's levels read
//! through the embedding's Fourier directions (seed 004 plots `sign(W_in)` and sees no pattern; seen
//! through the key frequencies, each neuron's row picks out one of them).

use crate::analysis::fourier::FourierBasis;
use crate::linalg::Matrix;
use crate::model::bitnet::{quant, quant::level_counts, BitNetConfig};
use crate::model::Params;

/// The discrete circuit counts as settled at the first checkpoint by which this fraction of all
/// quantized weights hold the level they end the run with, for good (no later flip).
pub const SETTLED_FRACTION: f64 = 0.9;

/// Level counts and flips of every BitLinear weight over the checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTrajectory {
    /// One label per BitLinear weight, `blocks.{l}.{role}` (e.g. `blocks.0.W_in`).
    pub matrices: Vec<String>,
    /// Elements of each weight.
    pub sizes: Vec<usize>,
    /// Epoch of each checkpoint, in order.
    pub epochs: Vec<usize>,
    /// `[checkpoint][matrix]`: elements at −1, 0 and +1.
    pub counts: Vec<Vec<[usize; 3]>>,
    /// `[checkpoint][matrix]`: elements whose level differs from the previous checkpoint's (all zero
    /// at the first).
    pub flips: Vec<Vec<usize>>,
    /// `[checkpoint][matrix]`: elements whose level differs from the analysed (final) model's.
    pub from_final: Vec<Vec<usize>>,
    /// The previous checkpoint's levels, to count the next one's flips.
    last_levels: Vec<Vec<i8>>,
    /// `[matrix][element]`: index of the last checkpoint at which the element changed level.
    last_change: Vec<Vec<u32>>,
    /// The analysed model's levels.
    final_levels: Vec<Vec<i8>>,
}

fn levels(cfg: &BitNetConfig, params: &Params) -> Vec<Vec<i8>> {
    cfg.quantized_weights(params)
        .into_iter()
        .map(|(_, _, q)| q.levels)
        .collect()
}

/// Elements that differ, matrix by matrix.
fn differences(a: &[Vec<i8>], b: &[Vec<i8>]) -> Vec<usize> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).filter(|(u, v)| u != v).count())
        .collect()
}

impl QuantizedTrajectory {
    /// An empty trajectory for the BitLinear weights of `cfg`, measuring distances to the analysed
    /// model `final_params`.
    pub fn new(cfg: &BitNetConfig, final_params: &Params) -> Self {
        let tree = cfg.tree();
        let (matrices, sizes) = tree
            .bit_linears()
            .map(|(l, role, slot)| {
                (
                    crate::model::bitnet::BitNetTree::linear_label(l, role),
                    tree.specs[slot.index()].shape.iter().product::<usize>(),
                )
            })
            .unzip();
        QuantizedTrajectory {
            matrices,
            sizes,
            epochs: Vec::new(),
            counts: Vec::new(),
            flips: Vec::new(),
            from_final: Vec::new(),
            last_levels: Vec::new(),
            last_change: Vec::new(),
            final_levels: levels(cfg, final_params),
        }
    }

    /// Adds the checkpoint of `epoch` (checkpoints must come in epoch order).
    pub fn push(&mut self, epoch: usize, cfg: &BitNetConfig, params: &Params) {
        let levels = levels(cfg, params);
        let index = self.epochs.len() as u32;
        let flips = if self.last_levels.is_empty() {
            self.last_change = levels.iter().map(|l| vec![0; l.len()]).collect();
            vec![0; levels.len()]
        } else {
            for ((now, before), changed) in levels
                .iter()
                .zip(&self.last_levels)
                .zip(&mut self.last_change)
            {
                for ((a, b), c) in now.iter().zip(before).zip(changed.iter_mut()) {
                    if a != b {
                        *c = index;
                    }
                }
            }
            differences(&levels, &self.last_levels)
        };
        self.from_final
            .push(differences(&levels, &self.final_levels));
        self.epochs.push(epoch);
        self.counts
            .push(levels.iter().map(|l| level_counts(l)).collect());
        self.flips.push(flips);
        self.last_levels = levels;
    }

    /// Total quantized weights.
    pub fn total_weights(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Fraction of matrix `m`'s weights at `level` (−1, 0 or +1) at every checkpoint.
    pub fn level_fraction(&self, m: usize, level: i8) -> Vec<f32> {
        let slot = (level + 1) as usize;
        self.counts
            .iter()
            .map(|c| c[m][slot] as f32 / self.sizes[m] as f32)
            .collect()
    }

    /// Whether any matrix ever has a weight at exactly 0 (always for ternary runs, almost never for
    /// binary ones, where only a latent exactly at the mean quantizes to 0).
    pub fn has_zeros(&self) -> bool {
        self.counts.iter().flatten().any(|c| c[1] > 0)
    }

    /// Flips of all matrices together since the previous checkpoint, per checkpoint.
    pub fn total_flips(&self) -> Vec<usize> {
        self.flips.iter().map(|f| f.iter().sum()).collect()
    }

    /// Weights of all matrices together at a different level than in the analysed model, per
    /// checkpoint.
    pub fn total_from_final(&self) -> Vec<usize> {
        self.from_final.iter().map(|f| f.iter().sum()).collect()
    }

    /// Per checkpoint, the fraction of all quantized weights that already hold the level they have
    /// at the last checkpoint and never leave it again.
    pub fn fixed_for_good(&self) -> Vec<f32> {
        let mut settled_at = vec![0usize; self.epochs.len()];
        for &i in self.last_change.iter().flatten() {
            settled_at[i as usize] += 1;
        }
        let total = self.total_weights().max(1) as f32;
        settled_at
            .iter()
            .scan(0, |sum, &n| {
                *sum += n;
                Some(*sum as f32 / total)
            })
            .collect()
    }

    /// The first checkpoint epoch by which [`SETTLED_FRACTION`] of the weights hold their final
    /// level for good. `None` when that happens only at the last checkpoint (where every weight is
    /// final by definition): the circuit was still changing when the run ended.
    pub fn settled_epoch(&self) -> Option<usize> {
        let fixed = self.fixed_for_good();
        let before_last = &fixed[..fixed.len().saturating_sub(1)];
        let i = before_last
            .iter()
            .position(|&f| f >= SETTLED_FRACTION as f32)?;
        Some(self.epochs[i])
    }
}

/// A matrix of quantized levels (`rows × cols`, each −1, 0 or +1) read through the embedding's Fourier
/// directions: for each row (a neuron), how its levels weigh each frequency of the input number.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelsThroughFrequencies {
    /// The levels as f32, rows reordered as `order`.
    pub levels: Matrix,
    /// `n_freqs × rows`: the share of each reordered row's squared norm on frequency k (row k − 1),
    /// the constant term left out; each column sums to 1.
    pub freq_share: Matrix,
    /// Original row index of each displayed row: grouped by the frequency they weigh most, largest
    /// share first.
    pub order: Vec<usize>,
    /// The frequency each displayed row weighs most.
    pub best_freq: Vec<usize>,
    /// Mean share of the key frequencies over rows whose best frequency is a key frequency.
    pub key_share: f64,
    /// Rows whose best frequency is a key frequency.
    pub key_rows: usize,
}

/// Reads `levels` (`rows × d_model`, row i = what neuron i reads from the residual stream) through
/// `embed_fourier` (`p × d_model`: B · W_E over the numbers, one Fourier component per row):
/// `(B·W_E) · levelsᵀ` gives, per neuron, the coefficient of each input component.
pub fn levels_through_frequencies(
    basis: &FourierBasis,
    embed_fourier: &Matrix,
    levels: &Matrix,
    key_freqs: &[usize],
) -> crate::error::Result<LevelsThroughFrequencies> {
    let coeffs = embed_fourier.matmul(&levels.t())?; // p × rows
    let n_freqs = basis.n_freqs();
    let rows = levels.rows;
    // share[k][r]: squared coefficients of frequency k+1 over all non-constant ones.
    let mut share = vec![vec![0f64; rows]; n_freqs];
    for r in 0..rows {
        let mut total = 0.0;
        for k in 1..=n_freqs {
            let e: f64 = basis
                .components(k)
                .iter()
                .map(|&i| f64::from(coeffs.at(i, r)).powi(2))
                .sum();
            share[k - 1][r] = e;
            total += e;
        }
        for s in share.iter_mut() {
            s[r] = if total > 0.0 { s[r] / total } else { 0.0 };
        }
    }
    let best = |r: usize| -> (usize, f64) {
        (0..n_freqs)
            .map(|k| (k + 1, share[k][r]))
            .fold((1, -1.0), |b, c| if c.1 > b.1 { c } else { b })
    };
    let mut order: Vec<usize> = (0..rows).collect();
    order.sort_by(|&a, &b| {
        let (fa, sa) = best(a);
        let (fb, sb) = best(b);
        fa.cmp(&fb).then(sb.total_cmp(&sa))
    });
    let best_freq: Vec<usize> = order.iter().map(|&r| best(r).0).collect();
    let (mut key_total, mut key_rows) = (0.0, 0);
    for &r in &order {
        if key_freqs.contains(&best(r).0) {
            key_rows += 1;
            key_total += key_freqs.iter().map(|&k| share[k - 1][r]).sum::<f64>();
        }
    }
    let freq_share = Matrix::new(
        n_freqs,
        rows,
        share
            .iter()
            .flat_map(|s| order.iter().map(move |&r| s[r] as f32))
            .collect(),
    )?;
    let reordered = Matrix::new(
        rows,
        levels.cols,
        order
            .iter()
            .flat_map(|&r| levels.data[r * levels.cols..(r + 1) * levels.cols].to_vec())
            .collect(),
    )?;
    Ok(LevelsThroughFrequencies {
        levels: reordered,
        freq_share,
        order,
        best_freq,
        key_share: if key_rows > 0 {
            key_total / key_rows as f64
        } else {
            0.0
        },
        key_rows,
    })
}

/// Everything the report shows about a quantized run.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedAnalysis {
    /// Levels and flips over the checkpoints.
    pub trajectory: QuantizedTrajectory,
    /// The first block's first FFN matrix (`W_in`, `d_mlp × d_model`) of the analysed model, through
    /// the key frequencies.
    pub first_ffn: LevelsThroughFrequencies,
}

/// The first FFN matrix's levels of `params` as a `d_mlp × d_model` matrix.
pub fn first_ffn_levels(cfg: &BitNetConfig, params: &Params) -> Matrix {
    let tree = cfg.tree();
    let slot = tree.blocks[0].ff_in;
    let shape = &tree.specs[slot.index()].shape;
    let q = quant::quantize(&quant::centre(&params[slot]), cfg.quant, cfg.weight_scale);
    Matrix {
        rows: shape[0],
        cols: shape[1],
        data: q.levels.iter().map(|&l| f32::from(l)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_once_nine_tenths_hold_their_final_level_for_good() {
        let t = QuantizedTrajectory {
            matrices: vec!["blocks.0.W_Q".into()],
            sizes: vec![10],
            epochs: vec![0, 100, 200, 300],
            counts: Vec::new(),
            flips: Vec::new(),
            from_final: Vec::new(),
            last_levels: Vec::new(),
            // Five weights never change, three last change at checkpoint 1, one at 2, one at 3.
            last_change: vec![vec![0, 0, 0, 0, 0, 1, 1, 1, 2, 3]],
            final_levels: Vec::new(),
        };
        assert_eq!(t.fixed_for_good(), vec![0.5, 0.8, 0.9, 1.0]);
        assert_eq!(t.settled_epoch(), Some(200));
        let still_changing = QuantizedTrajectory {
            last_change: vec![vec![0, 0, 0, 0, 0, 1, 1, 3, 3, 3]],
            ..t
        };
        assert_eq!(still_changing.settled_epoch(), None, "90% only at the end");
    }

    #[test]
    fn pushing_checkpoints_counts_levels_and_flips() {
        use crate::model::bitnet::quant::Quant;
        use crate::model::{ModelConfig, Params};
        use crate::rng::RngKind;
        let mut cfg = BitNetConfig::seed_004(Quant::Ternary);
        (
            cfg.d_model,
            cfg.n_heads,
            cfg.d_mlp,
            cfg.d_vocab,
            cfg.d_vocab_out,
        ) = (8, 2, 16, 6, 5);
        let model = ModelConfig::BitNet(cfg.clone());
        let mut params = Params::init(&model, RngKind::Torch);
        let mut t = QuantizedTrajectory::new(&cfg, &params);
        t.push(0, &cfg, &params);
        let slot = cfg.tree().blocks[0].ff_in;
        // Negating a latent matrix negates its centred values: every nonzero level flips.
        for w in params[slot].iter_mut() {
            *w = -*w;
        }
        t.push(100, &cfg, &params);
        assert_eq!(t.matrices[4], "blocks.0.W_in");
        assert_eq!(t.sizes, vec![64, 64, 64, 64, 128, 128]);
        let [neg, zero, pos] = t.counts[0][4];
        assert_eq!(neg + zero + pos, 128);
        assert_eq!(t.counts[1][4], [pos, zero, neg]);
        assert_eq!(t.flips[0], vec![0; 6]);
        assert_eq!(t.flips[1], vec![0, 0, 0, 0, neg + pos, 0]);
        assert_eq!(
            t.from_final, t.flips,
            "distances to the first (here the final) model"
        );
        // Every flipped weight changed at checkpoint 1; the zeros of W_in and all other weights
        // never changed.
        let fixed = t.fixed_for_good();
        let total = t.total_weights() as f32;
        assert_eq!(fixed, vec![(total - (neg + pos) as f32) / total, 1.0]);
        assert_eq!(t.settled_epoch(), (fixed[0] >= 0.9).then_some(0));
        assert!(t.has_zeros());
        let f = t.level_fraction(4, 1);
        assert_eq!(f, vec![pos as f32 / 128.0, neg as f32 / 128.0]);
    }

    #[test]
    fn a_row_built_from_one_frequency_is_read_as_that_frequency() {
        let p = 13;
        let basis = FourierBasis::new(p);
        // The embedding maps number x to its Fourier coefficients (W_E = Bᵀ), so B·W_E = identity.
        let embed_fourier = basis.transform(&basis.matrix().t());
        // Neuron 0 reads Cos 3 and Sin 3, neuron 1 reads Cos 5, neuron 2 reads Sin 2 only negatively.
        let mut levels = Matrix::new(3, p, vec![0.0; 3 * p]).unwrap();
        levels.data[basis.cos_index(3)] = 1.0;
        levels.data[basis.cos_index(3) - 1] = -1.0;
        levels.data[p + basis.cos_index(5)] = 1.0;
        levels.data[2 * p + basis.cos_index(2) - 1] = -1.0;
        let t = levels_through_frequencies(&basis, &embed_fourier, &levels, &[3, 5]).unwrap();
        assert_eq!(t.order, vec![2, 0, 1]);
        assert_eq!(t.best_freq, vec![2, 3, 5]);
        assert_eq!(t.key_rows, 2);
        assert!((t.key_share - 1.0).abs() < 1e-5, "{}", t.key_share);
        for col in 0..3 {
            let sum: f32 = (0..basis.n_freqs()).map(|k| t.freq_share.at(k, col)).sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
        assert!((t.freq_share.at(1, 0) - 1.0).abs() < 1e-5); // displayed row 0 = neuron 2 on freq 2
        assert_eq!(&t.levels.data[..p], &levels.data[2 * p..]);
    }
}
