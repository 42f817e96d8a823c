//! The transformer as a [`Family`].

use crate::error::Result;
use crate::linalg::Matrix;
use crate::model::family::{fill, Family, ModelWithVars};
use crate::model::hooks::HookTree;
use crate::model::params::{Init, ParamSpec, Params, Slot};
use crate::model::transformer::{HookedTransformer, TransformerConfig};
use crate::rng::TorchGenerator;

impl Family for TransformerConfig {
    fn name(&self) -> &'static str {
        "transformer"
    }

    fn describe(&self) -> String {
        format!(
            "transformer: {} layer(s), d_model {}, {} heads × {}, d_mlp {}, {:?}",
            self.n_layers, self.d_model, self.n_heads, self.d_head, self.d_mlp, self.act_fn
        )
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        self.tree().specs
    }

    fn hooks(&self) -> HookTree {
        TransformerConfig::hooks(self)
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
        TransformerConfig::validate(self)
    }

    fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        TransformerConfig::check_tokens(self, tokens, batch)
    }

    /// TransformerLens's init: `normal_(0, init_std)` per `W_*` in `named_parameters()` order,
    /// biases 0, LN weights 1; a `W_pos` held at zero is drawn and then zeroed, as seed 003 does.
    fn torch_init(&self, gen: &mut TorchGenerator) -> Vec<Vec<f32>> {
        self.param_specs()
            .iter()
            .map(|s| {
                let n = s.shape.iter().product();
                if let Init::Normal { std } = s.init {
                    return gen.normal(n, 0.0, std);
                }
                if s.fixed {
                    // TransformerLens draws it like every `W_*` before it is held at its constant.
                    gen.normal(n, 0.0, self.init_std());
                }
                vec![s.init.constant().expect("a constant init"); n]
            })
            .collect()
    }

    fn build_with_vars(
        &self,
        params: &Params,
        trainable: &dyn Fn(Slot) -> bool,
    ) -> Result<ModelWithVars> {
        let (m, v) = HookedTransformer::with_vars(self, params, trainable)?;
        Ok((Box::new(m), v))
    }

    fn reference_flops(&self, batch: usize) -> f64 {
        self.forward_flops_full(batch)
    }

    fn activation_floats_per_row(&self) -> f64 {
        let f = |x: usize| x as f64;
        let (s, dm, heads, dh) = (
            f(self.n_ctx),
            f(self.d_model),
            f(self.n_heads),
            f(self.d_head),
        );
        let norm = if self.normalization_type.is_some() {
            2.0 * s * (dm + 1.0)
        } else {
            0.0
        };
        let attn = 4.0 * s * heads * dh + heads * s * dm + 2.0 * heads * s * s;
        let mlp = if self.attn_only {
            0.0
        } else {
            2.0 * s * f(self.d_mlp) + 2.0 * s * dm + norm
        };
        let block = 3.0 * s * dm + attn + mlp + norm;
        2.0 * s * dm + f(self.n_layers) * block + norm + s * f(self.d_vocab_out)
    }

    fn output_weight(&self) -> (Slot, usize, usize) {
        (self.tree().unembed_w, self.d_model, self.d_vocab_out)
    }

    fn embedding(&self) -> (Slot, usize) {
        (self.tree().embed, self.d_model)
    }

    /// The last block's `W_out·W_U`.
    fn neuron_logit_map(&self, params: &Params) -> Option<(Matrix, &'static str)> {
        let tree = self.tree();
        let mlp = tree.last_block().mlp?;
        let w_out = Matrix::new(self.d_mlp, self.d_model, params[mlp.w_out].to_vec()).ok()?;
        let w_u = Matrix::new(
            self.d_model,
            self.d_vocab_out,
            params[tree.unembed_w].to_vec(),
        )
        .ok()?;
        Some((w_out.matmul(&w_u).ok()?, "W_out·W_U"))
    }

    fn n_heads(&self) -> usize {
        self.n_heads
    }

    /// `HookedTransformerConfig(**json)` keys.
    fn to_json(&self) -> serde_json::Value {
        self.to_transformer_lens_json()
    }
}
