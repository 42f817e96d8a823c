//! Seed 004's BitNet transformer as a [`Family`].

use crate::error::Result;
use crate::linalg::Matrix;
use crate::model::bitnet::{quant, BitNetConfig, BitNetModel};
use crate::model::family::{fill, tagged, Family, ModelWithVars};
use crate::model::hooks::HookTree;
use crate::model::params::{ParamSpec, Params, Slot};
use crate::rng::TorchGenerator;

impl Family for BitNetConfig {
    fn name(&self) -> &'static str {
        "bitnet"
    }

    fn describe(&self) -> String {
        format!(
            "BitNet ({:?} weights): {} layer(s), d_model {}, {} heads × {}, d_mlp {}, ReLU",
            self.quant,
            self.n_layers,
            self.d_model,
            self.n_heads,
            self.d_head(),
            self.d_mlp
        )
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        self.tree().specs
    }

    fn hooks(&self) -> HookTree {
        BitNetConfig::hooks(self)
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn sizes(&self) -> (usize, usize, usize) {
        (self.d_vocab, self.d_vocab_out, self.n_ctx)
    }

    fn fill_from_task(&mut self, vocab: usize, n_answers: usize, seq_len: usize) {
        fill(&mut self.d_vocab, vocab);
        fill(&mut self.d_vocab_out, n_answers);
        fill(&mut self.n_ctx, seq_len);
    }

    fn validate(&self) -> Result<()> {
        BitNetConfig::validate(self)
    }

    fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        BitNetConfig::check_tokens(self, tokens, batch)
    }

    fn torch_init(&self, gen: &mut TorchGenerator) -> Vec<Vec<f32>> {
        BitNetConfig::torch_init(self, gen)
    }

    fn build_with_vars(
        &self,
        params: &Params,
        trainable: &dyn Fn(Slot) -> bool,
    ) -> Result<ModelWithVars> {
        let (m, v) = BitNetModel::with_vars(self, params, trainable)?;
        Ok((Box::new(m), v))
    }

    fn reference_flops(&self, batch: usize) -> f64 {
        BitNetConfig::forward_flops(self, batch)
    }

    fn activation_floats_per_row(&self) -> f64 {
        let f = |x: usize| x as f64;
        let (s, dm, heads) = (f(self.n_ctx), f(self.d_model), f(self.n_heads));
        let attn = 4.0 * s * dm + heads * s * dm + 2.0 * heads * s * s;
        let block = 5.0 * s * dm + attn + 2.0 * s * f(self.d_mlp);
        s * dm + f(self.n_layers) * block + s * (dm + 1.0) + s * f(self.d_vocab_out)
    }

    fn output_weight(&self) -> (Slot, usize, usize) {
        (self.tree().unembed, self.d_vocab_out, self.d_model)
    }

    fn embedding(&self) -> (Slot, usize) {
        (self.tree().embed, self.d_model)
    }

    /// The feed-forward output as used (quantized), through γ and the unembedding; the RMSNorm's
    /// division by ‖x‖ is a positive per-row factor and is left out.
    fn neuron_logit_map(&self, params: &Params) -> Option<(Matrix, &'static str)> {
        let tree = self.tree();
        let last = tree.blocks.last()?;
        let w_out = quant::effective(&params[last.ff_out], self.quant, self.weight_scale);
        let w_out = Matrix::new(self.d_model, self.d_mlp, w_out).ok()?;
        let gamma = &params[tree.gamma];
        let w_u = Matrix::new(
            self.d_vocab_out,
            self.d_model,
            params[tree.unembed].to_vec(),
        )
        .ok()?;
        let mut w_u_t = w_u.t();
        for (row, &g) in w_u_t.data.chunks_mut(self.d_vocab_out).zip(gamma) {
            row.iter_mut().for_each(|v| *v *= g);
        }
        Some((w_out.t().matmul(&w_u_t).ok()?, "W_outᵀ·diag(γ)·W_Uᵀ"))
    }

    fn n_heads(&self) -> usize {
        self.n_heads
    }

    fn to_json(&self) -> serde_json::Value {
        tagged(self, "bitnet")
    }
}
