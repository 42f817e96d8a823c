//! What a model family is: one trait each family implements in its own folder (transformer/, mlp/,
//! bitnet/). [`crate::model::ModelConfig`] holds one of them (an enum only because serde needs
//! one) and delegates every question to it, so a new family is one new module plus its
//! registration in that enum.

use candle_core::Var;

use crate::error::Result;
use crate::linalg::Matrix;
use crate::model::hooks::HookTree;
use crate::model::params::{ParamSpec, Params, Slot};
use crate::model::HookedModel;
use crate::rng::TorchGenerator;

/// A built model with the [`Var`]s of its trainable parameters.
pub type ModelWithVars = (Box<dyn HookedModel>, Vec<(Slot, Var)>);

/// One model family's config: everything the layers above ask of an architecture.
pub trait Family {
    /// The family's name as `model.family` writes it.
    fn name(&self) -> &'static str;

    /// One line describing the architecture, for summaries and reports.
    fn describe(&self) -> String;

    /// Every parameter with its external name, shape and init, in state_dict order.
    fn param_specs(&self) -> Vec<ParamSpec>;

    /// Every hook point of the forward pass, with its axes.
    fn hooks(&self) -> HookTree;

    /// Seed of the weight init.
    fn seed(&self) -> u64;

    /// `(d_vocab, d_vocab_out, n_ctx)`: input vocabulary, outputs, tokens per row at most.
    fn sizes(&self) -> (usize, usize, usize);

    /// Fills the vocabulary, outputs and context where they are 0 from a task with `vocab` tokens,
    /// `n_answers` possible answers and rows of `seq_len` tokens.
    fn fill_from_task(&mut self, vocab: usize, n_answers: usize, seq_len: usize);

    /// Checks every field (after [`Family::fill_from_task`]).
    fn validate(&self) -> Result<()>;

    /// Checks `tokens` as `[batch, pos]` rows for this model; returns `pos`.
    fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize>;

    /// The initial values, in slot order, that the family's PyTorch reference draws from `gen`.
    fn torch_init(&self, gen: &mut TorchGenerator) -> Vec<Vec<f32>>;

    /// The model built on `params`, with the slots `trainable` accepts as [`Var`]s.
    fn build_with_vars(
        &self,
        params: &Params,
        trainable: &dyn Fn(Slot) -> bool,
    ) -> Result<ModelWithVars>;

    /// FLOPs (2 per multiply-add) of one forward pass over `batch` rows as the Python reference
    /// computes it: every matmul at every position (the fast engine's own count is
    /// `engine::fast::FastPlan::forward_flops`).
    fn reference_flops(&self, batch: usize) -> f64;

    /// f32 values one input row produces across every hook point.
    fn activation_floats_per_row(&self) -> f64;

    /// The output layer's weight and its shape `(rows, cols)`: the matrix whose spectral norm the
    /// training metrics track.
    fn output_weight(&self) -> (Slot, usize, usize);

    /// The token embedding's slot and width (`[d_vocab, width]`).
    fn embedding(&self) -> (Slot, usize);

    /// How the neurons the analysis reads write to the logits, `[neurons, d_vocab_out]`, and its
    /// name; `None` without neurons.
    fn neuron_logit_map(&self, params: &Params) -> Option<(Matrix, &'static str)>;

    /// Attention heads per layer (0 without attention).
    fn n_heads(&self) -> usize;

    /// `model_config.json` for this family.
    fn to_json(&self) -> serde_json::Value;
}

/// `c` as a JSON object with `family` first.
pub fn tagged<T: serde::Serialize>(c: &T, family: &str) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("family".into(), family.into());
    if let serde_json::Value::Object(fields) = serde_json::to_value(c).expect("config serialises") {
        map.extend(fields);
    }
    serde_json::Value::Object(map)
}

/// Sets `v` to `with` where it is still 0 (unresolved).
pub fn fill(v: &mut usize, with: usize) {
    if *v == 0 {
        *v = with;
    }
}
