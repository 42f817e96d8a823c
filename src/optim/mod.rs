//! The optimizer: AdamW exactly as `torch.optim.AdamW` computes it: decoupled weight decay, bias correction, eps outside
//! the square root, and global-norm gradient clipping. Frozen parameters are skipped entirely, as torch skips parameters without a gradient.

pub mod interventions;

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

    crate::linalg::kernels::simd_dispatch! {
        /// One update of every parameter whose `trainable[i]` is true, at learning rate `lr`.
        pub fn step / step_avx2 / step_avx512 => step_body(
            &mut self,
            params: &mut Params,
            grads: &Params,
            trainable: &[bool],
            lr: f64,
        )
    }

    #[inline(always)]
    fn step_body(&mut self, params: &mut Params, grads: &Params, trainable: &[bool], lr: f64) {
        self.step += 1;
        let (b1, b2) = self.cfg.betas;
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = (lr / bias1) as f32;
        let decay = (1.0 - lr * self.cfg.weight_decay) as f32;
        let (w1, w2) = ((1.0 - b1) as f32, (1.0 - b2) as f32);
        let (b2f, eps, bias2_sqrt) = (b2 as f32, self.cfg.eps as f32, bias2_sqrt as f32);
        let moments = self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut());
        for (((p, g), (m, v)), &train) in params
            .iter_mut()
            .zip(grads.iter())
            .zip(moments)
            .zip(trainable)
        {
            if !train {
                continue;
            }
            for (((x, &g), m), v) in p
                .data
                .iter_mut()
                .zip(&g.data)
                .zip(m.data.iter_mut())
                .zip(v.data.iter_mut())
            {
                *x *= decay;
                *m += w1 * (g - *m);
                *v = *v * b2f + w2 * g * g;
                let denom = v.sqrt() / bias2_sqrt + eps;
                *x -= step_size * *m / denom;
            }
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
