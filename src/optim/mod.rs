//! The optimizer: AdamW exactly as `torch.optim.AdamW` computes it: decoupled weight decay, bias correction, eps outside
//! the square root, and global-norm gradient clipping. Frozen parameters are skipped entirely, as torch skips parameters without a gradient.

pub mod interventions;

use crate::linalg::team::{with_team, Item, ITEM_VALUES};
use crate::model::Params;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Weight decay coefficient (decoupled: p ← p·(1 − lr·wd)).
    pub weight_decay: f64,
    /// β₁ and β₂.
    pub betas: (f64, f64),
    /// Added to √v̂.
    pub eps: f64,
}

/// Optimizer state: first and second moments per parameter and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    /// Hyper-parameters.
    pub cfg: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    /// First moments (`exp_avg`).
    pub exp_avg: Params,
    /// Second moments (`exp_avg_sq`).
    pub exp_avg_sq: Params,
}

impl AdamW {
    /// Fresh state for `params`.
    pub fn new(cfg: AdamWConfig, params: &Params) -> Self {
        AdamW {
            cfg,
            step: 0,
            exp_avg: params.zeros_like(),
            exp_avg_sq: params.zeros_like(),
        }
    }

    /// One update of every parameter whose `trainable[i]` is true, at learning rate `lr`.
    pub fn step(&mut self, params: &mut Params, grads: &Params, trainable: &[bool], lr: f64) {
        self.step_on(1, params, grads, trainable, lr);
    }

    /// [`AdamW::step`] on `threads` threads (each parameter's update is independent of the
    /// others', so the result is the same on any number).
    pub fn step_on(
        &mut self,
        threads: usize,
        params: &mut Params,
        grads: &Params,
        trainable: &[bool],
        lr: f64,
    ) {
        self.step += 1;
        let (b1, b2) = self.cfg.betas;
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let k = Update {
            step_size: (lr / bias1) as f32,
            decay: (1.0 - lr * self.cfg.weight_decay) as f32,
            w1: (1.0 - b1) as f32,
            w2: (1.0 - b2) as f32,
            b2: b2 as f32,
            eps: self.cfg.eps as f32,
            bias2_sqrt: bias2_sqrt as f32,
        };
        let moments = self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut());
        let mut pieces = Vec::new();
        for (((p, g), (m, v)), &train) in params
            .iter_mut()
            .zip(grads.iter())
            .zip(moments)
            .zip(trainable)
        {
            if !train {
                continue;
            }
            let slices = p
                .data
                .chunks_mut(ITEM_VALUES)
                .zip(g.data.chunks(ITEM_VALUES));
            let moments = m
                .data
                .chunks_mut(ITEM_VALUES)
                .zip(v.data.chunks_mut(ITEM_VALUES));
            for ((x, g), (m, v)) in slices.zip(moments) {
                pieces.push(Piece { x, g, m, v, k });
            }
        }
        // A team only where the update is long enough to repay waking one.
        let threads = if pieces.len() > 1 { threads } else { 1 };
        with_team(threads, |team| {
            let items = pieces
                .into_iter()
                .map(|mut piece| Box::new(move || piece.run()) as Item);
            team.phase(items.collect());
        });
    }
}

/// One step's constants, in f32.
#[derive(Clone, Copy)]
struct Update {
    step_size: f32,
    decay: f32,
    w1: f32,
    w2: f32,
    b2: f32,
    eps: f32,
    bias2_sqrt: f32,
}

/// A range of one parameter, its gradient and its moments.
struct Piece<'a> {
    x: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    k: Update,
}

impl Piece<'_> {
    crate::linalg::kernels::simd_dispatch! {
        /// The update of this range, on this CPU's best build.
        fn run / run_avx2 / run_avx512 => run_body(&mut self)
    }

    #[inline(always)]
    fn run_body(&mut self) {
        let k = self.k;
        let values = self.x.iter_mut().zip(self.g.iter());
        let moments = self.m.iter_mut().zip(self.v.iter_mut());
        for ((x, &g), (m, v)) in values.zip(moments) {
            *x *= k.decay;
            *m += k.w1 * (g - *m);
            *v = *v * k.b2 + k.w2 * g * g;
            let denom = v.sqrt() / k.bias2_sqrt + k.eps;
            *x -= k.step_size * *m / denom;
        }
    }
}

/// Scales trainable gradients so their global L2 norm is at most `max_norm` (torch's `clip_grad_norm_`).
pub fn clip_grad_norm(grads: &mut Params, trainable: &[bool], max_norm: f64) -> f64 {
    let norm = grads
        .iter()
        .zip(trainable)
        .filter(|(_, &t)| t)
        .flat_map(|(g, _)| g.data.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (g, _) in grads.iter_mut().zip(trainable).filter(|(_, &t)| t) {
            g.data.iter_mut().for_each(|x| *x *= coef as f32);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MlpConfig, ModelConfig};
    use crate::rng::RngKind;

    /// The update split over threads (seed 002's MLP: tensors of up to 65 536 values, several
    /// items each) gives the serial update's bits, and leaves frozen tensors alone.
    #[test]
    fn step_on_threads_equals_the_serial_step() {
        let cfg = ModelConfig::Mlp(MlpConfig {
            d_vocab: 99,
            d_vocab_out: 99,
            n_ctx: 4,
            ..MlpConfig::seed_002()
        });
        let params = Params::init(&cfg, RngKind::Torch);
        let trainable: Vec<bool> = (0..params.len()).map(|i| i != 1).collect();
        let mut grads = params.zeros_like();
        for (s, p) in grads.iter_mut().enumerate() {
            for (i, x) in p.data.iter_mut().enumerate() {
                *x = ((i * 7 + s * 13) % 101) as f32 * 1e-3 - 0.05;
            }
        }
        let adam = AdamWConfig {
            weight_decay: 0.01,
            betas: (0.9, 0.98),
            eps: 1e-8,
        };
        let (mut serial, mut split) = (params.clone(), params.clone());
        let (mut a, mut b) = (AdamW::new(adam, &params), AdamW::new(adam, &params));
        for _ in 0..3 {
            a.step(&mut serial, &grads, &trainable, 1e-3);
            b.step_on(3, &mut split, &grads, &trainable, 1e-3);
        }
        assert_eq!(a, b, "moments and step count");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for ((s, p), orig) in serial.iter().zip(split.iter()).zip(params.iter()) {
            assert_eq!(bits(&s.data), bits(&p.data), "{}", s.name);
            // Only the frozen tensor (slot 1) keeps its initial values.
            assert_eq!(
                s.data == orig.data,
                s.name == params.iter().nth(1).unwrap().name,
                "{}",
                s.name
            );
        }
    }
}
