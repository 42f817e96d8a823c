//! Seed 002's MLP as a [`Family`].

use crate::error::Result;
use crate::linalg::Matrix;
use crate::model::family::{fill, tagged, Family, ModelWithVars};
use crate::model::hooks::HookTree;
use crate::model::mlp::{LinearSlots, MlpConfig, MlpModel};
use crate::model::params::{ParamSpec, Params, Slot};
use crate::rng::TorchGenerator;

impl Family for MlpConfig {
    fn name(&self) -> &'static str {
        "mlp"
    }

    fn describe(&self) -> String {
        format!(
            "MLP: {} token embeddings of {} concatenated, {} hidden layer(s) of {}, {:?}, {} outputs",
            self.n_ctx, self.d_embed, self.n_hidden, self.d_hidden, self.act_fn, self.d_vocab_out
        )
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        self.tree().specs
    }

    fn hooks(&self) -> HookTree {
        MlpConfig::hooks(self)
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn sizes(&self) -> (usize, usize, usize) {
        (self.d_vocab, self.d_vocab_out, self.n_ctx)
    }

    /// The MLP predicts a token, so its outputs default to its input vocabulary.
    fn fill_from_task(&mut self, vocab: usize, _n_answers: usize, seq_len: usize) {
        fill(&mut self.d_vocab, vocab);
        fill(&mut self.d_vocab_out, self.d_vocab);
        fill(&mut self.n_ctx, seq_len);
    }

    fn validate(&self) -> Result<()> {
        MlpConfig::validate(self)
    }

    fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        MlpConfig::check_tokens(self, tokens, batch)
    }

    /// Seed 002's: `nn.Embedding` N(0, 1) and every `nn.Linear`'s construction draws in order,
    /// then `kaiming_normal_` on each Linear weight, biases zeroed.
    fn torch_init(&self, gen: &mut TorchGenerator) -> Vec<Vec<f32>> {
        let specs = self.param_specs();
        let tree = self.tree();
        let mut values = vec![Vec::new(); specs.len()];
        values[tree.embed.index()] = gen.normal(self.d_vocab * self.d_embed, 0.0, 1.0);
        let linears: Vec<&LinearSlots> = tree.hidden.iter().chain([&tree.out]).collect();
        let fans = |l: &LinearSlots| {
            let shape = &specs[l.weight.index()].shape;
            (shape[1], shape[0])
        };
        for &l in &linears {
            let (fan_in, fan_out) = fans(l);
            gen.linear(fan_in, fan_out);
        }
        for &l in &linears {
            let (fan_in, fan_out) = fans(l);
            values[l.weight.index()] = gen.kaiming_normal_relu(fan_out, fan_in);
            values[l.bias.index()] = vec![0.0; specs[l.bias.index()].shape.iter().product()];
        }
        values
    }

    fn build_with_vars(
        &self,
        params: &Params,
        trainable: &dyn Fn(Slot) -> bool,
    ) -> Result<ModelWithVars> {
        let (m, v) = MlpModel::with_vars(self, params, trainable)?;
        Ok((Box::new(m), v))
    }

    fn reference_flops(&self, batch: usize) -> f64 {
        MlpConfig::forward_flops(self, batch)
    }

    fn activation_floats_per_row(&self) -> f64 {
        (self.n_ctx * self.d_embed + 2 * self.n_hidden * self.d_hidden + self.d_vocab_out) as f64
    }

    fn output_weight(&self) -> (Slot, usize, usize) {
        (self.tree().out.weight, self.d_vocab_out, self.d_hidden)
    }

    fn embedding(&self) -> (Slot, usize) {
        (self.tree().embed, self.d_embed)
    }

    /// The transpose of the output Linear's weight.
    fn neuron_logit_map(&self, params: &Params) -> Option<(Matrix, &'static str)> {
        let w = params[self.tree().out.weight].to_vec();
        let w = Matrix::new(self.d_vocab_out, self.d_hidden, w).ok()?;
        Some((w.t(), "W_outᵀ (the output Linear)"))
    }

    fn n_heads(&self) -> usize {
        0
    }

    fn to_json(&self) -> serde_json::Value {
        tagged(self, "mlp")
    }
}
