//! MLP neurons over all p² inputs (seed 000, "Analyse Neurons" and "Neuron Clusters"), and the
//! neuron-to-logit map W_logit = W_out·W_U in the Fourier basis ("Read Off the Neuron-Logit Weights").

use crate::analysis::fourier::{col_norms, FourierBasis};
use crate::linalg::Matrix;

/// Seed 000's cut: a neuron belongs to frequency k's cluster when k explains more than this fraction
/// of its (non-constant) variance.
pub const CLUSTER_THRESHOLD: f32 = 0.85;

/// Neurons grouped by the frequency that explains them.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronCluster {
    /// The frequency k.
    pub freq: usize,
    /// Neuron indices, ascending.
    pub neurons: Vec<usize>,
}

/// How each neuron's activation over the (a, b) grid splits over frequencies.
#[derive(Debug, Clone)]
pub struct NeuronFourier {
    /// `n_freqs × d_mlp`: entry (k−1, n) is the fraction of neuron n's variance explained by frequency
    /// k, i.e. by the 2-D components {Constant, Sin k, Cos k}² other than Constant⊗Constant.
    pub frac_explained: Matrix,
    /// Per neuron, its best frequency and the fraction that frequency explains.
    pub dominant: Vec<(usize, f32)>,
    /// Clusters (best fraction above [`CLUSTER_THRESHOLD`]) by ascending frequency.
    pub clusters: Vec<NeuronCluster>,
}

impl NeuronFourier {
    /// Fraction of neurons that fall in some cluster.
    pub fn clustered_fraction(&self) -> f64 {
        let n: usize = self.clusters.iter().map(|c| c.neurons.len()).sum();
        n as f64 / self.dominant.len().max(1) as f64
    }

    /// The frequencies that have a cluster, ascending.
    pub fn cluster_freqs(&self) -> Vec<usize> {
        self.clusters.iter().map(|c| c.freq).collect()
    }

    /// Cluster sizes as `freq: neurons`, comma-separated (empty without clusters).
    pub fn cluster_sizes(&self) -> String {
        self.clusters
            .iter()
            .map(|c| format!("{}: {}", c.freq, c.neurons.len()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How the neurons use frequency `freq`: cluster size, how many neurons have it as their best
    /// frequency, and the mean fraction it explains for those.
    pub fn usage(&self, freq: usize) -> FrequencyUse {
        let best: Vec<f32> = self
            .dominant
            .iter()
            .filter(|d| d.0 == freq)
            .map(|d| d.1)
            .collect();
        FrequencyUse {
            freq,
            clustered: self
                .clusters
                .iter()
                .find(|c| c.freq == freq)
                .map_or(0, |c| c.neurons.len()),
            best_for: best.len(),
            // An empty f32 sum is −0.0; no neuron means a mean fraction of 0.
            mean_fraction: if best.is_empty() {
                0.0
            } else {
                best.iter().sum::<f32>() / best.len() as f32
            },
        }
    }

    /// Where the embedding's key frequencies and the clusters' frequencies differ, one sentence per
    /// frequency; empty when they agree.
    pub fn disagreements(&self, key_freqs: &[usize]) -> Vec<String> {
        let clustered = self.cluster_freqs();
        let mut out = Vec::new();
        for &k in key_freqs.iter().filter(|k| !clustered.contains(k)) {
            let u = self.usage(k);
            if u.best_for == 0 {
                out.push(format!(
                    "key frequency {k} has no cluster and is no neuron's best frequency: it stands out in the embedding but the neurons do not read it"
                ));
                continue;
            }
            out.push(format!(
                "key frequency {k} has no cluster: it is the best frequency of {} neurons, which it explains {:.0}% of on average (cluster cut {CLUSTER_THRESHOLD}) — a circuit still forming or mixed",
                u.best_for,
                100.0 * u.mean_fraction
            ));
        }
        for c in self
            .clusters
            .iter()
            .filter(|c| !key_freqs.contains(&c.freq))
        {
            out.push(format!(
                "frequency {} has a cluster of {} neurons but does not stand out in the embedding",
                c.freq,
                c.neurons.len()
            ));
        }
        out
    }
}

/// How the neurons use one frequency ([`NeuronFourier::usage`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrequencyUse {
    /// The frequency.
    pub freq: usize,
    /// Neurons in its cluster.
    pub clustered: usize,
    /// Neurons whose best frequency it is (clustered or not).
    pub best_for: usize,
    /// Mean fraction of variance it explains for those neurons.
    pub mean_fraction: f32,
}

/// One neuron's activations as a `p × p` map (rows a, columns b) from `acts` (`p² × d_mlp`, row a·p+b).
pub fn neuron_map(acts: &Matrix, p: usize, neuron: usize) -> Matrix {
    Matrix::new(p, p, (0..p * p).map(|i| acts.at(i, neuron)).collect()).expect("p² rows")
}

/// The 2-D Fourier transform of every neuron: `d_mlp` matrices `p × p` (rows: component of a,
/// columns: component of b), computed as two batched matrix products.
pub fn neuron_fourier_maps(basis: &FourierBasis, acts: &Matrix) -> Vec<Matrix> {
    let p = basis.p();
    let d_mlp = acts.cols;
    // [neuron, a, b] rows (neuron, a) × columns b, then · Bᵀ over b.
    let by_neuron = acts.t();
    let stacked = Matrix::new(d_mlp * p, p, by_neuron.data).expect("d_mlp·p rows of p");
    let over_b = basis.transform_rows(&stacked);
    over_b
        .data
        .chunks_exact(p * p)
        .map(|m| basis.transform(&Matrix::new(p, p, m.to_vec()).expect("p × p")))
        .collect()
}

/// Frequency fractions and clusters of the neurons whose activations over the grid are `acts`
/// (`p² × d_mlp`, row a·p + b), with seed 000's rule and [`CLUSTER_THRESHOLD`].
pub fn neuron_fourier(basis: &FourierBasis, acts: &Matrix) -> NeuronFourier {
    let d_mlp = acts.cols;
    let n_freqs = basis.n_freqs();
    let maps = neuron_fourier_maps(basis, acts);
    let mut frac = vec![0.0f32; n_freqs * d_mlp];
    for (n, f) in maps.iter().enumerate() {
        let sq = |i: usize, j: usize| (f.at(i, j) as f64).powi(2);
        let total: f64 = (0..f.rows)
            .flat_map(|i| (0..f.cols).map(move |j| (i, j)))
            .filter(|&ij| ij != (0, 0))
            .map(|(i, j)| sq(i, j))
            .sum();
        for k in 1..=n_freqs {
            let mut idx = vec![0];
            idx.extend(basis.components(k));
            let part: f64 = idx
                .iter()
                .flat_map(|&i| idx.iter().map(move |&j| (i, j)))
                .filter(|&ij| ij != (0, 0))
                .map(|(i, j)| sq(i, j))
                .sum();
            frac[(k - 1) * d_mlp + n] = (part / total.max(f64::MIN_POSITIVE)) as f32;
        }
    }
    let frac_explained = Matrix::new(n_freqs, d_mlp, frac).expect("n_freqs × d_mlp");
    let dominant: Vec<(usize, f32)> = (0..d_mlp)
        .map(|n| {
            (1..=n_freqs)
                .map(|k| (k, frac_explained.at(k - 1, n)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((0, 0.0))
        })
        .collect();
    let mut clusters: Vec<NeuronCluster> = Vec::new();
    for (n, &(k, f)) in dominant.iter().enumerate() {
        if f <= CLUSTER_THRESHOLD {
            continue;
        }
        match clusters.iter_mut().find(|c| c.freq == k) {
            Some(c) => c.neurons.push(n),
            None => clusters.push(NeuronCluster {
                freq: k,
                neurons: vec![n],
            }),
        }
    }
    clusters.sort_by_key(|c| c.freq);
    NeuronFourier {
        frac_explained,
        dominant,
        clusters,
    }
}

/// Norm of each Fourier component (over output classes) of W_logit's rows `neurons` (all when empty):
/// seed 000's "W_logit in the Fourier Basis". `w_logit` is `d_mlp × p`.
pub fn logit_fourier_norms(basis: &FourierBasis, w_logit: &Matrix, neurons: &[usize]) -> Vec<f32> {
    let rows = if neurons.is_empty() {
        w_logit.clone()
    } else {
        w_logit.select_rows(neurons)
    };
    col_norms(&basis.transform_rows(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Activations of 6 neurons over Z_p²: four pure frequencies (with a bias), one mixture, one noise.
    fn planted(p: usize) -> Matrix {
        let w = 2.0 * std::f32::consts::PI / p as f32;
        let mut data = Vec::new();
        for a in 0..p {
            for b in 0..p {
                let (a, b) = (a as f32, b as f32);
                data.extend([
                    1.0 + (w * 3.0 * (a + b)).cos(),
                    (w * 3.0 * a).sin() * (w * 3.0 * b).cos(),
                    0.5 + (w * 7.0 * (a + b)).sin(),
                    (w * 7.0 * a).cos() + (w * 7.0 * b).cos(),
                    (w * 2.0 * a).cos() + (w * 5.0 * b).cos(),
                    (((a * 13.0 + b * 7.0) as usize % 11) as f32) / 11.0,
                ]);
            }
        }
        Matrix::new(p * p, 6, data).unwrap()
    }

    #[test]
    fn clusters_pure_frequency_neurons_only() {
        let p = 17;
        let basis = FourierBasis::new(p);
        let nf = neuron_fourier(&basis, &planted(p));
        assert_eq!(nf.frac_explained.rows, 8);
        assert!((nf.frac_explained.at(2, 0) - 1.0).abs() < 1e-4);
        assert_eq!(
            nf.clusters,
            [
                NeuronCluster {
                    freq: 3,
                    neurons: vec![0, 1]
                },
                NeuronCluster {
                    freq: 7,
                    neurons: vec![2, 3]
                },
            ]
        );
        // The mixture splits its variance over frequencies 2 and 5.
        assert!((nf.frac_explained.at(1, 4) - 0.5).abs() < 1e-3);
        assert!((nf.frac_explained.at(4, 4) - 0.5).abs() < 1e-3);
        assert!((nf.clustered_fraction() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(nf.cluster_freqs(), [3, 7]);
        assert!(nf.disagreements(&[3, 7]).is_empty());
        let u = nf.usage(7);
        assert_eq!((u.clustered, u.best_for), (2, 2));
        assert!((u.mean_fraction - 1.0).abs() < 1e-4);
        let unused = nf.usage(9);
        assert_eq!(
            (unused.best_for, unused.mean_fraction.to_bits()),
            (0, 0f32.to_bits())
        );
        let d = nf.disagreements(&[3, 7, 9]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("no neuron's best frequency"), "{d:?}");
        let d = nf.disagreements(&[2, 3]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("key frequency 2 has no cluster") && d[1].starts_with("frequency 7")
        );
    }

    #[test]
    fn neuron_maps_and_their_transforms_agree() {
        let p = 11;
        let basis = FourierBasis::new(p);
        let acts = planted(p);
        let maps = neuron_fourier_maps(&basis, &acts);
        let direct = basis.transform_2d(&neuron_map(&acts, p, 4));
        assert!(maps[4]
            .data
            .iter()
            .zip(&direct.data)
            .all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn logit_norms_pick_the_output_frequency() {
        let p = 13;
        let basis = FourierBasis::new(p);
        // Two neurons whose logit rows are Cos 5 and Sin 5 of the output class.
        let row = |i| basis.row(i).to_vec();
        let (s5, c5) = (basis.components(5)[0], basis.cos_index(5));
        let w = Matrix::new(2, p, [row(s5), row(c5)].concat()).unwrap();
        let norms = logit_fourier_norms(&basis, &w, &[]);
        for (i, n) in norms.iter().enumerate() {
            assert!((n - if i == s5 || i == c5 { 1.0 } else { 0.0 }).abs() < 1e-5);
        }
        assert!(logit_fourier_norms(&basis, &w, &[1])[s5] < 1e-5);
    }
}
