//! Training hyper-parameters and schedule.

use serde::{Deserialize, Serialize};

use crate::engine::{EngineKind, LossKind};
use crate::error::{GrokError, Result};
use crate::optim::interventions::GrokfastKind;

/// Every training knob, with the grokking defaults of the TransformerLens demo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    #[serde(default = "default_adam_eps")]
    pub adam_eps: f64,
    /// Number of epochs (passes over the train set).
    pub epochs: usize,
    /// Rows per step; 0 means the whole train set (full batch).
    #[serde(default)]
    pub batch_size: usize,
    /// Rows per forward/backward pass: a step's batch is split into micro-batches of this many rows
    /// whose gradients are summed, row-weighted, into the batch's mean gradient (bounded memory for
    /// large full-batch steps, as seed 000 sums 2¹⁶-row batches); 0 means the whole batch in one pass.
    #[serde(default)]
    pub micro_batch: usize,
    /// Linear warm-up length in steps: lr·min(1, step/warmup_steps), step counted from 0 as torch's
    /// `LambdaLR` does; 0 means a constant learning rate.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Global gradient-norm clip (torch's `clip_grad_norm_`); 0 disables it.
    #[serde(default)]
    pub grad_clip: f64,
    /// Glob patterns (`*` matches any run of characters) of parameter names that are not trained; a
    /// single pattern may be given as a string (`--set train.freeze=*.b_*`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub freeze: Vec<String>,
    /// Evaluate train and test metrics every this many epochs.
    pub eval_every: usize,
    /// Save a checkpoint every this many epochs.
    pub checkpoint_every: usize,
    /// Stop once the test loss is at or below this value; 0 disables.
    #[serde(default)]
    pub stop_at_test_loss: f64,
    /// Stop once the test accuracy is at or above this value; 0 disables.
    #[serde(default)]
    pub stop_at_test_acc: f64,
    /// Seed of the minibatch order (each epoch uses its own stream of it, so resuming needs no RNG file).
    #[serde(default)]
    pub seed: u64,
    /// Forward/backward implementation.
    #[serde(default)]
    pub engine: EngineKind,
    /// Worker threads for the fast engine; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
    /// Grokfast gradient filter (Lee et al. 2024): `none`, `ema` or `ma`.
    #[serde(default)]
    pub grokfast: GrokfastKind,
    /// Grokfast-EMA's α.
    #[serde(default = "default_grokfast_alpha")]
    pub grokfast_alpha: f64,
    /// Grokfast-MA's window of gradients.
    #[serde(default = "default_grokfast_window")]
    pub grokfast_window: usize,
    /// Grokfast's λ; 0 takes the filter's published value when the config is resolved (EMA 2, MA 5).
    #[serde(default)]
    pub grokfast_lambda: f64,
    /// ⊥Grad (Prieto et al. 2025): per tensor, the gradient's component along the weights is removed
    /// and the rest rescaled to the gradient's norm before the optimizer step.
    #[serde(default)]
    pub orthogonal_grad: bool,
    /// The training loss: `cross_entropy` or `stablemax` (Prieto et al. 2025); metrics record it.
    #[serde(default)]
    pub loss: LossKind,
    /// Fixed weight norm (Omnigrok, Liu et al. 2023): the initial trainable weights are scaled by this
    /// α and their total norm is projected back to that value after every step; 0 disables.
    #[serde(default)]
    pub weight_norm_scale: f64,
}

fn default_grokfast_alpha() -> f64 {
    0.98
}

fn default_grokfast_window() -> usize {
    100
}

/// A list of strings, or one string standing for a list of one.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Without `micro_batch`, evaluation sets larger than this are evaluated in passes of this many rows.
pub const EVAL_CHUNK_ROWS: usize = 65_536;

/// More epochs than any run could finish (a full-batch epoch of the smallest preset takes ~1 ms).
const MAX_EPOCHS: usize = 1_000_000_000;

fn default_adam_eps() -> f64 {
    1e-8
}

impl TrainConfig {
    /// The TransformerLens grokking demo: lr 1e-3, wd 1, betas (0.9, 0.98), full batch, biases frozen.
    pub fn grokking_demo() -> Self {
        TrainConfig {
            lr: 1e-3,
            weight_decay: 1.0,
            beta1: 0.9,
            beta2: 0.98,
            adam_eps: 1e-8,
            epochs: 25_000,
            batch_size: 0,
            micro_batch: 0,
            warmup_steps: 0,
            grad_clip: 0.0,
            freeze: vec!["*.b_*".into()],
            eval_every: 10,
            checkpoint_every: 100,
            stop_at_test_loss: 0.0,
            stop_at_test_acc: 0.0,
            seed: 0,
            engine: EngineKind::Auto,
            threads: 0,
            grokfast: GrokfastKind::None,
            grokfast_alpha: default_grokfast_alpha(),
            grokfast_window: default_grokfast_window(),
            grokfast_lambda: 0.0,
            orthogonal_grad: false,
            loss: LossKind::CrossEntropy,
            weight_norm_scale: 0.0,
        }
    }

    /// Fills what the config leaves to defaults that depend on other settings (Grokfast's λ).
    pub fn resolve(&mut self) {
        if self.grokfast_lambda == 0.0 {
            self.grokfast_lambda = self.grokfast.default_lambda();
        }
    }

    /// Rows per evaluation pass: `micro_batch` when set (the memory budget it names), else
    /// [`EVAL_CHUNK_ROWS`].
    pub fn eval_pass_rows(&self) -> usize {
        match self.micro_batch {
            0 => EVAL_CHUNK_ROWS,
            m => m,
        }
    }

    /// The settings that can make training diverge, with their values and what to try, most likely
    /// first: a weight-norm scale far from 1, the learning rate, an unset or loose gradient clip,
    /// Grokfast's amplification.
    pub fn divergence_suspects(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.weight_norm_scale > 0.0 && !(0.01..=100.0).contains(&self.weight_norm_scale) {
            out.push(format!(
                "train.weight_norm_scale = {} (scales the initial weights; try 1 to 10)",
                self.weight_norm_scale
            ));
        }
        out.push(format!("train.lr = {} (lower it)", self.lr));
        if self.grad_clip == 0.0 {
            out.push("train.grad_clip = 0 (unset; try 1.0)".to_string());
        }
        if self.grokfast != GrokfastKind::None {
            out.push(format!(
                "train.grokfast_lambda = {} (amplifies the slow gradient; lower it)",
                self.grokfast_lambda
            ));
        }
        out
    }

    /// Rows per optimizer step over a train set of `n_train` rows (all of them for full batch).
    pub fn batch_rows(&self, n_train: usize) -> usize {
        match self.batch_size {
            0 => n_train,
            b => b.min(n_train),
        }
    }

    /// Checks ranges, naming the field.
    pub fn validate(&self) -> Result<()> {
        let pos = |f: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(GrokError::config(f, v, "must be a finite number > 0"))
            }
        };
        pos("train.lr", self.lr)?;
        pos("train.adam_eps", self.adam_eps)?;
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(GrokError::config(
                "train.weight_decay",
                self.weight_decay,
                "must be >= 0",
            ));
        }
        if self.lr * self.weight_decay >= 1.0 {
            return Err(GrokError::config(
                "train.weight_decay",
                self.weight_decay,
                format!(
                    "lr·weight_decay must be < 1 (it is {}), or every step flips the weights' sign",
                    self.lr * self.weight_decay
                ),
            ));
        }
        for (f, b) in [("train.beta1", self.beta1), ("train.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(GrokError::config(f, b, "must be in [0, 1)"));
            }
        }
        for (f, v) in [
            ("train.epochs", self.epochs),
            ("train.eval_every", self.eval_every),
            ("train.checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                return Err(GrokError::config(f, v, "must be at least 1"));
            }
        }
        if self.epochs > MAX_EPOCHS {
            return Err(GrokError::config(
                "train.epochs",
                self.epochs,
                format!("must be at most {MAX_EPOCHS}"),
            ));
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(GrokError::config(
                "train.grad_clip",
                self.grad_clip,
                "must be >= 0 (0 disables clipping)",
            ));
        }
        if !(0.0..=1.0).contains(&self.stop_at_test_acc) {
            return Err(GrokError::config(
                "train.stop_at_test_acc",
                self.stop_at_test_acc,
                "must be in [0, 1] (0 disables)",
            ));
        }
        if !(self.stop_at_test_loss >= 0.0 && self.stop_at_test_loss.is_finite()) {
            return Err(GrokError::config(
                "train.stop_at_test_loss",
                self.stop_at_test_loss,
                "must be >= 0 (0 disables)",
            ));
        }
        if !(0.0..1.0).contains(&self.grokfast_alpha) {
            return Err(GrokError::config(
                "train.grokfast_alpha",
                self.grokfast_alpha,
                "must be in [0, 1)",
            ));
        }
        if self.grokfast_window == 0 {
            return Err(GrokError::config(
                "train.grokfast_window",
                0,
                "must be at least 1",
            ));
        }
        if !(self.grokfast_lambda >= 0.0 && self.grokfast_lambda.is_finite()) {
            return Err(GrokError::config(
                "train.grokfast_lambda",
                self.grokfast_lambda,
                "must be a finite number >= 0 (0 takes the filter's published value)",
            ));
        }
        if !(self.weight_norm_scale >= 0.0 && self.weight_norm_scale.is_finite()) {
            return Err(GrokError::config(
                "train.weight_norm_scale",
                self.weight_norm_scale,
                "must be a finite number >= 0 (0 disables the fixed weight norm)",
            ));
        }
        if self.threads > 256 {
            return Err(GrokError::config(
                "train.threads",
                self.threads,
                "must be in [0, 256] (0 = one per core)",
            ));
        }
        Ok(())
    }

    /// Learning rate at optimizer step `step` (counted from 0).
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * (step as f64 / self.warmup_steps as f64).min(1.0)
        }
    }

    /// Whether the parameter `name` is frozen by a `freeze` pattern.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.freeze.iter().any(|pat| glob_match(pat, name))
    }
}

/// Matches `name` against `pattern`, where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_freezes_biases_only() {
        let t = TrainConfig::grokking_demo();
        assert!(t.is_frozen("blocks.0.attn.b_Q"));
        assert!(t.is_frozen("unembed.b_U"));
        assert!(!t.is_frozen("embed.W_E"));
        assert!(!t.is_frozen("blocks.0.mlp.W_in"));
        assert!(glob_match("blocks.*.attn.W_*", "blocks.3.attn.W_O"));
        assert!(!glob_match("blocks.*.attn.W_*", "blocks.3.mlp.W_in"));
    }

    #[test]
    fn warmup_is_linear_then_flat() {
        let t = TrainConfig {
            warmup_steps: 10,
            ..TrainConfig::grokking_demo()
        };
        assert_eq!(t.lr_at(0), 0.0);
        assert!((t.lr_at(5) - 5e-4).abs() < 1e-12);
        assert_eq!(t.lr_at(10), 1e-3);
        assert_eq!(t.lr_at(1000), 1e-3);
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let e = TrainConfig {
            beta2: 1.0,
            ..TrainConfig::grokking_demo()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("train.beta2"), "{e}");
        let e = TrainConfig {
            lr: -1.0,
            ..TrainConfig::grokking_demo()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("train.lr"), "{e}");
    }
}
