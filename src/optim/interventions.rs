//! Interventions that change when grokking happens, applied around the optimizer step:
//! Grokfast's gradient filters (Lee et al. 2024), ⊥Grad (Prieto et al. 2025) and a fixed total weight
//! norm (Omnigrok, Liu et al. 2023). StableMax, the fourth, is a loss ([`crate::engine::LossKind`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::model::Params;

/// Which Grokfast filter amplifies the slow component of the gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrokfastKind {
    /// No filter.
    #[default]
    None,
    /// μ ← αμ + (1 − α)g (μ starts at the first gradient), then g ← g + λμ.
    Ema,
    /// g ← g + λ·mean(last w gradients, this one included), once w gradients have been seen.
    Ma,
}

impl GrokfastKind {
    /// The published λ: 2.0 for EMA, 5.0 for MA.
    pub fn default_lambda(self) -> f64 {
        match self {
            GrokfastKind::None => 0.0,
            GrokfastKind::Ema => 2.0,
            GrokfastKind::Ma => 5.0,
        }
    }
}

/// A Grokfast filter and its state over the trainable parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Grokfast {
    /// The filter.
    pub kind: GrokfastKind,
    /// EMA's α.
    pub alpha: f64,
    /// MA's window w.
    pub window: usize,
    /// λ.
    pub lambda: f64,
    /// EMA: μ (absent before the first gradient).
    pub ema: Option<Params>,
    /// MA: the last w gradients (trainable slots), oldest first.
    pub history: VecDeque<Params>,
    /// MA: their running sum.
    pub sum: Option<Params>,
}

impl Grokfast {
    /// A filter with no state yet.
    pub fn new(kind: GrokfastKind, alpha: f64, window: usize, lambda: f64) -> Self {
        Grokfast {
            kind,
            alpha,
            window,
            lambda,
            ema: None,
            history: VecDeque::new(),
            sum: None,
        }
    }

    /// Filters `grads` in place (trainable slots only) and updates the state.
    pub fn apply(&mut self, grads: &mut Params, trainable: &[bool]) {
        let lambda = self.lambda as f32;
        match self.kind {
            GrokfastKind::None => {}
            GrokfastKind::Ema => {
                let (a, b) = (self.alpha as f32, (1.0 - self.alpha) as f32);
                let mu = self.ema.get_or_insert_with(|| grads.clone());
                for ((m, g), _) in mu
                    .iter_mut()
                    .zip(grads.iter_mut())
                    .zip(trainable)
                    .filter(|(_, &on)| on)
                {
                    for (m, g) in m.data.iter_mut().zip(g.data.iter_mut()) {
                        *m = a * *m + b * *g;
                        *g += lambda * *m;
                    }
                }
            }
            GrokfastKind::Ma => {
                // The window's sum is kept as it changes (the gradient entering added, the one
                // leaving subtracted), in the order a resume replays from the checkpointed state.
                let sum = self.sum.get_or_insert_with(|| grads.zeros_like());
                let mut entering = match self.history.len() == self.window {
                    true => self.history.pop_front().expect("a full window"),
                    false => grads.zeros_like(),
                };
                for (((s, leaving), g), _) in sum
                    .iter_mut()
                    .zip(entering.iter_mut())
                    .zip(grads.iter())
                    .zip(trainable)
                    .filter(|(_, &on)| on)
                {
                    for ((s, l), &g) in s.data.iter_mut().zip(leaving.data.iter_mut()).zip(&g.data)
                    {
                        *s += g - *l;
                        *l = g;
                    }
                }
                self.history.push_back(entering);
                if self.history.len() < self.window {
                    return;
                }
                let scale = lambda / self.window as f32;
                for ((g, s), _) in grads
                    .iter_mut()
                    .zip(sum.iter())
                    .zip(trainable)
                    .filter(|(_, &on)| on)
                {
                    for (g, &s) in g.data.iter_mut().zip(&s.data) {
                        *g += scale * s;
                    }
                }
            }
        }
    }
}

/// ⊥Grad: per trainable tensor, removes from g its component along the weights w,
/// g⊥ = g − (w·g)/(w·w + 1e-30)·w, and rescales g⊥ to ‖g‖ (Prieto et al. 2025's ⊥AdamW/⊥SGD step).
pub fn orthogonalise(grads: &mut Params, params: &Params, trainable: &[bool]) {
    for ((g, w), _) in grads
        .iter_mut()
        .zip(params.iter())
        .zip(trainable)
        .filter(|(_, &on)| on)
    {
        let (mut wg, mut ww, mut gg) = (0.0f64, 0.0f64, 0.0f64);
        for (&w, &g) in w.data.iter().zip(&g.data) {
            wg += w as f64 * g as f64;
            ww += w as f64 * w as f64;
            gg += g as f64 * g as f64;
        }
        let proj = wg / (ww + 1e-30);
        let mut oo = 0.0f64;
        for (g, &w) in g.data.iter_mut().zip(&w.data) {
            *g = (*g as f64 - proj * w as f64) as f32;
            oo += *g as f64 * *g as f64;
        }
        let scale = (gg.sqrt() / (oo.sqrt() + 1e-30)) as f32;
        g.data.iter_mut().for_each(|g| *g *= scale);
    }
}

/// The L2 norm of every trainable parameter together.
pub fn total_norm(params: &Params, trainable: &[bool]) -> f64 {
    params
        .iter()
        .zip(trainable)
        .filter(|(_, &on)| on)
        .flat_map(|(p, _)| p.data.iter())
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt()
}

/// Scales the trainable parameters so their total norm is `norm` (Omnigrok's projection back onto
/// the sphere after each step).
pub fn project_norm(params: &mut Params, trainable: &[bool], norm: f64) {
    let now = total_norm(params, trainable);
    if now > 0.0 {
        scale(params, trainable, norm / now);
    }
}

/// Multiplies the trainable parameters by `factor`.
pub fn scale(params: &mut Params, trainable: &[bool], factor: f64) {
    let f = factor as f32;
    for (p, _) in params.iter_mut().zip(trainable).filter(|(_, &on)| on) {
        p.data.iter_mut().for_each(|x| *x *= f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, TransformerConfig};
    use crate::rng::RngKind;

    fn setup() -> (Params, Vec<bool>) {
        let cfg = ModelConfig::Transformer(TransformerConfig {
            d_model: 8,
            n_heads: 2,
            d_head: 4,
            d_mlp: 16,
            d_vocab: 6,
            d_vocab_out: 5,
            n_ctx: 3,
            ..TransformerConfig::grokking_demo()
        });
        let params = Params::init(&cfg, RngKind::Chacha);
        let trainable = (0..params.len()).map(|i| i % 3 != 1).collect();
        (params, trainable)
    }

    /// A gradient whose every entry is `f(slot, index)`.
    fn grads_of(like: &Params, f: impl Fn(usize, usize) -> f32) -> Params {
        let mut g = like.zeros_like();
        for (s, p) in g.iter_mut().enumerate() {
            for (i, x) in p.data.iter_mut().enumerate() {
                *x = f(s, i);
            }
        }
        g
    }

    #[test]
    fn grokfast_ema_follows_its_update_rule() {
        let (params, trainable) = setup();
        let mut f = Grokfast::new(GrokfastKind::Ema, 0.9, 100, 2.0);
        let raw: Vec<Params> = (0..3)
            .map(|t| grads_of(&params, |s, i| (t as f32 + 1.0) * ((s + i) as f32).sin()))
            .collect();
        // By hand: μ₁ = g₁, μ_t = 0.9μ + 0.1g_t; filtered g_t + 2μ_t; frozen slots untouched.
        let mut mu: Option<Vec<f32>> = None;
        for g in &raw {
            let mut out = g.clone();
            f.apply(&mut out, &trainable);
            for (s, ((o, r), &on)) in out.iter().zip(g.iter()).zip(&trainable).enumerate() {
                if !on {
                    assert_eq!(o.data, r.data, "frozen slot {s} changed");
                }
            }
            let flat: Vec<f32> = g.iter().flat_map(|p| p.data.clone()).collect();
            let m = match mu {
                None => flat.clone(),
                Some(m) => m
                    .iter()
                    .zip(&flat)
                    .map(|(m, g)| 0.9 * m + 0.1 * g)
                    .collect(),
            };
            let got: Vec<f32> = out.iter().flat_map(|p| p.data.clone()).collect();
            let mut k = 0;
            for (p, &on) in g.iter().zip(&trainable) {
                for &x in &p.data {
                    if on {
                        assert!((got[k] - (x + 2.0 * m[k])).abs() < 1e-5);
                    }
                    k += 1;
                }
            }
            mu = Some(m);
        }
    }

    #[test]
    fn grokfast_ma_waits_for_a_full_window_then_adds_its_mean() {
        let (params, trainable) = setup();
        let mut f = Grokfast::new(GrokfastKind::Ma, 0.98, 3, 5.0);
        let g = |t: usize| grads_of(&params, move |s, i| (t * 7 + s + i) as f32 * 0.01);
        for t in 0..2 {
            let mut out = g(t);
            f.apply(&mut out, &trainable);
            assert_eq!(out, g(t), "window not full at step {t}");
        }
        for t in 2..5 {
            let mut out = g(t);
            f.apply(&mut out, &trainable);
            let slot = trainable.iter().position(|&on| on).unwrap();
            let mean = (t - 2..=t)
                .map(|u| g(u).iter().nth(slot).unwrap().data[1])
                .sum::<f32>()
                / 3.0;
            let want = g(t).iter().nth(slot).unwrap().data[1] + 5.0 * mean;
            let got = out.iter().nth(slot).unwrap().data[1];
            assert!((got - want).abs() < 1e-5, "step {t}: {got} vs {want}");
        }
    }

    #[test]
    fn orthogonal_grad_removes_the_weight_direction_and_keeps_the_norm() {
        let (params, trainable) = setup();
        let g = grads_of(&params, |s, i| ((s * 31 + i) as f32 * 0.37).cos());
        let mut out = g.clone();
        orthogonalise(&mut out, &params, &trainable);
        for (((o, r), w), &on) in out.iter().zip(g.iter()).zip(params.iter()).zip(&trainable) {
            if !on {
                assert_eq!(o.data, r.data);
                continue;
            }
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            let w_norm = dot(&w.data, &w.data).sqrt();
            if w_norm > 0.0 {
                assert!(
                    dot(&o.data, &w.data).abs() < 1e-4 * w_norm,
                    "not orthogonal"
                );
            }
            let (n_out, n_in) = (dot(&o.data, &o.data).sqrt(), dot(&r.data, &r.data).sqrt());
            assert!(
                (n_out - n_in).abs() < 1e-4 * n_in.max(1.0),
                "{n_out} vs {n_in}"
            );
        }
    }

    #[test]
    fn the_weight_norm_projection_restores_the_norm() {
        let (mut params, trainable) = setup();
        let before = total_norm(&params, &trainable);
        scale(&mut params, &trainable, 3.0);
        assert!((total_norm(&params, &trainable) - 3.0 * before).abs() < 1e-3 * before);
        project_norm(&mut params, &trainable, before);
        assert!((total_norm(&params, &trainable) - before).abs() < 1e-4 * before);
    }
}
