//! One model abstraction over the families: [`ModelConfig`] says which family a run is and everything
//! needed to build it; [`HookedModel`] is a built model's forward pass with hook points. Engines, the
//! trainer, checkpoints, the interpretability tools and the analysis take these, never a family's
//! strings.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{GrokError, Result};
use crate::linalg::Matrix;
use crate::model::bitnet::{quant, BitNetConfig, BitNetModel};
use crate::model::hooks::Hooks;
use crate::model::mlp::{LinearSlots, MlpConfig, MlpModel};
use crate::model::params::{Init, ParamSpec, Params, Slot};
use crate::model::transformer::{HookedTransformer, LogitPositions, TransformerConfig};
use crate::rng::TorchGenerator;
use crate::tasks::Target;

/// A built model: its forward pass and its hook points.
pub trait HookedModel {
    /// Every hook point the forward pass passes through, in order, with its axes.
    fn hook_tree(&self) -> &crate::model::hooks::HookTree;

    /// Every hook point's name, in forward order.
    fn hook_names(&self) -> Vec<String> {
        self.hook_tree().names()
    }

    /// Number of layers that shorthands such as `("post", -1)` count (blocks, or hidden layers).
    fn n_layers(&self) -> usize;

    /// Token ids `[batch, pos]` as a candle tensor, checked against the vocabulary and context.
    fn tokens_tensor(&self, tokens: &[u32], batch: usize) -> Result<Tensor>;

    /// Logits `[batch, pos, d_vocab_out]` of `tokens` (`pos` = 1 for families with one output per
    /// row), every hook point passing through `hooks`.
    fn forward(&self, tokens: &Tensor, at: LogitPositions, hooks: &mut dyn Hooks)
        -> Result<Tensor>;
}

/// Which family a model is, with its architecture and init.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// TransformerLens's `HookedTransformer` (seeds 000, 001, 003, 004).
    Transformer(TransformerConfig),
    /// Seed 002's MLP on concatenated token embeddings.
    Mlp(MlpConfig),
    /// Seed 004's binarized or ternary BitNet transformer.
    BitNet(BitNetConfig),
}

/// A built model with the [`Var`]s of its trainable parameters.
pub type ModelWithVars = (Box<dyn HookedModel>, Vec<(Slot, Var)>);

impl ModelConfig {
    /// The family's name as `model.family` writes it.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Transformer(_) => "transformer",
            ModelConfig::Mlp(_) => "mlp",
            ModelConfig::BitNet(_) => "bitnet",
        }
    }

    /// The transformer config, if this is one.
    pub fn transformer(&self) -> Option<&TransformerConfig> {
        match self {
            ModelConfig::Transformer(c) => Some(c),
            _ => None,
        }
    }

    /// The MLP config, if this is one.
    pub fn mlp(&self) -> Option<&MlpConfig> {
        match self {
            ModelConfig::Mlp(c) => Some(c),
            _ => None,
        }
    }

    /// The BitNet config, if this is one.
    pub fn bitnet(&self) -> Option<&BitNetConfig> {
        match self {
            ModelConfig::BitNet(c) => Some(c),
            _ => None,
        }
    }

    /// Every parameter with its external name, shape and init, in state_dict order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        match self {
            ModelConfig::Transformer(c) => c.param_specs(),
            ModelConfig::Mlp(c) => c.tree().specs,
            ModelConfig::BitNet(c) => c.tree().specs,
        }
    }

    /// Seed of the weight init.
    pub fn seed(&self) -> u64 {
        match self {
            ModelConfig::Transformer(c) => c.seed,
            ModelConfig::Mlp(c) => c.seed,
            ModelConfig::BitNet(c) => c.seed,
        }
    }

    /// Input vocabulary size.
    pub fn d_vocab(&self) -> usize {
        match self {
            ModelConfig::Transformer(c) => c.d_vocab,
            ModelConfig::Mlp(c) => c.d_vocab,
            ModelConfig::BitNet(c) => c.d_vocab,
        }
    }

    /// Output vocabulary size.
    pub fn d_vocab_out(&self) -> usize {
        match self {
            ModelConfig::Transformer(c) => c.d_vocab_out,
            ModelConfig::Mlp(c) => c.d_vocab_out,
            ModelConfig::BitNet(c) => c.d_vocab_out,
        }
    }

    /// Context length (tokens per row the model reads at most; the MLP reads exactly this many).
    pub fn n_ctx(&self) -> usize {
        match self {
            ModelConfig::Transformer(c) => c.n_ctx,
            ModelConfig::Mlp(c) => c.n_ctx,
            ModelConfig::BitNet(c) => c.n_ctx,
        }
    }

    /// Fills the vocabulary, output vocabulary and context where they are 0 from a task with
    /// `vocab` tokens, `n_answers` possible answers and rows of `seq_len` tokens.
    pub fn fill_from_task(&mut self, vocab: usize, n_answers: usize, seq_len: usize) {
        let fill = |v: &mut usize, with: usize| {
            if *v == 0 {
                *v = with;
            }
        };
        match self {
            ModelConfig::Transformer(c) => {
                fill(&mut c.d_vocab, vocab);
                fill(&mut c.d_vocab_out, n_answers);
                fill(&mut c.n_ctx, seq_len);
            }
            ModelConfig::Mlp(c) => {
                fill(&mut c.d_vocab, vocab);
                fill(&mut c.d_vocab_out, c.d_vocab);
                fill(&mut c.n_ctx, seq_len);
            }
            ModelConfig::BitNet(c) => {
                fill(&mut c.d_vocab, vocab);
                fill(&mut c.d_vocab_out, n_answers);
                fill(&mut c.n_ctx, seq_len);
            }
        }
    }

    /// Checks every field (after [`ModelConfig::fill_from_task`]).
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Transformer(c) => c.validate(),
            ModelConfig::Mlp(c) => c.validate(),
            ModelConfig::BitNet(c) => c.validate(),
        }
    }

    /// Checks `tokens` as `[batch, pos]` rows for this model; returns `pos`.
    pub fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        match self {
            ModelConfig::Transformer(c) => c.check_tokens(tokens, batch),
            ModelConfig::Mlp(c) => c.check_tokens(tokens, batch),
            ModelConfig::BitNet(c) => c.check_tokens(tokens, batch),
        }
    }

    /// The output layer's weight and its shape `(rows, cols)` (`W_U`, or the MLP's last Linear):
    /// the matrix whose spectral norm the training metrics track.
    pub fn output_weight(&self) -> (Slot, usize, usize) {
        match self {
            ModelConfig::Transformer(c) => (c.tree().unembed_w, c.d_model, c.d_vocab_out),
            ModelConfig::Mlp(c) => (c.tree().out.weight, c.d_vocab_out, c.d_hidden),
            ModelConfig::BitNet(c) => (c.tree().unembed, c.d_vocab_out, c.d_model),
        }
    }

    /// One line describing the architecture, for summaries and reports.
    pub fn describe(&self) -> String {
        match self {
            ModelConfig::Transformer(m) => format!(
                "transformer: {} layer(s), d_model {}, {} heads × {}, d_mlp {}, {:?}",
                m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp, m.act_fn
            ),
            ModelConfig::Mlp(m) => format!(
                "MLP: {} token embeddings of {} concatenated, {} hidden layer(s) of {}, {:?}, {} outputs",
                m.n_ctx, m.d_embed, m.n_hidden, m.d_hidden, m.act_fn, m.d_vocab_out
            ),
            ModelConfig::BitNet(m) => format!(
                "BitNet ({:?} weights): {} layer(s), d_model {}, {} heads × {}, d_mlp {}, ReLU",
                m.quant,
                m.n_layers,
                m.d_model,
                m.n_heads,
                m.d_head(),
                m.d_mlp
            ),
        }
    }

    /// FLOPs of one forward pass over `batch` rows: as computed by the fast engine for a loss at
    /// `fast`'s positions when given (for the transformer with a last-position loss: last block at
    /// the last position only; block 0's Q/K/V looked up without LayerNorm), as the reference
    /// computes it (every position) otherwise.
    pub fn forward_flops(&self, batch: usize, fast: Option<Target>) -> f64 {
        let per_position = fast == Some(Target::PreviousToken);
        match (self, fast) {
            (ModelConfig::Transformer(m), Some(_)) => m.forward_flops_fast(batch, per_position),
            (ModelConfig::Transformer(m), None) => m.forward_flops_full(batch),
            (ModelConfig::Mlp(m), Some(_)) => m.forward_flops_fast(batch),
            (ModelConfig::Mlp(m), None) => m.forward_flops(batch),
            (ModelConfig::BitNet(m), Some(_)) => m.forward_flops_fast(batch, per_position),
            (ModelConfig::BitNet(m), None) => m.forward_flops(batch),
        }
    }

    /// The initial values, in slot order, that the family's PyTorch reference draws from `gen`:
    /// for the transformer TransformerLens's init (`normal_(0, init_std)` per `W_*` in
    /// `named_parameters()` order, biases 0, LN weights 1; a `W_pos` held at zero is drawn and then
    /// zeroed, as seed 003 does); for the MLP seed 002's (`nn.Embedding` N(0, 1) and every
    /// `nn.Linear`'s construction draws in order, then `kaiming_normal_` on each Linear weight,
    /// biases zeroed).
    pub fn torch_init(&self, gen: &mut TorchGenerator) -> Vec<Vec<f32>> {
        let specs = self.param_specs();
        let zeros = |slot: Slot| vec![0.0; specs[slot.index()].shape.iter().product()];
        match self {
            ModelConfig::Transformer(c) => specs
                .iter()
                .map(|s| {
                    let n = s.shape.iter().product();
                    if let Init::Normal { std } = s.init {
                        return gen.normal(n, 0.0, std);
                    }
                    if s.fixed {
                        // TransformerLens draws it like every `W_*` before it is held at its constant.
                        gen.normal(n, 0.0, c.init_std());
                    }
                    vec![s.init.constant().expect("a constant init"); n]
                })
                .collect(),
            ModelConfig::Mlp(c) => {
                let tree = c.tree();
                let mut values = vec![Vec::new(); specs.len()];
                values[tree.embed.index()] = gen.normal(c.d_vocab * c.d_embed, 0.0, 1.0);
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
                    values[l.bias.index()] = zeros(l.bias);
                }
                values
            }
            ModelConfig::BitNet(c) => c.torch_init(gen),
        }
    }

    /// Number of parameters (as f64, so absurd configs do not overflow).
    pub fn n_params(&self) -> f64 {
        self.param_specs()
            .iter()
            .map(|s| s.shape.iter().map(|&d| d as f64).product::<f64>())
            .sum()
    }

    /// f32 values one input row produces across every hook point (what a full activation cache
    /// holds per row, and the order of what a forward pass keeps for its backward pass).
    pub fn activation_floats_per_row(&self) -> f64 {
        match self {
            ModelConfig::Transformer(m) => {
                let f = |x: usize| x as f64;
                let (s, dm, heads, dh) = (f(m.n_ctx), f(m.d_model), f(m.n_heads), f(m.d_head));
                let norm = if m.normalization_type.is_some() {
                    2.0 * s * (dm + 1.0)
                } else {
                    0.0
                };
                let attn = 4.0 * s * heads * dh + heads * s * dm + 2.0 * heads * s * s;
                let mlp = if m.attn_only {
                    0.0
                } else {
                    2.0 * s * f(m.d_mlp) + 2.0 * s * dm + norm
                };
                let block = 3.0 * s * dm + attn + mlp + norm;
                2.0 * s * dm + f(m.n_layers) * block + norm + s * f(m.d_vocab_out)
            }
            ModelConfig::Mlp(m) => {
                (m.n_ctx * m.d_embed + 2 * m.n_hidden * m.d_hidden + m.d_vocab_out) as f64
            }
            ModelConfig::BitNet(m) => {
                let f = |x: usize| x as f64;
                let (s, dm, heads) = (f(m.n_ctx), f(m.d_model), f(m.n_heads));
                let attn = 4.0 * s * dm + heads * s * dm + 2.0 * heads * s * s;
                let block = 5.0 * s * dm + attn + 2.0 * s * f(m.d_mlp);
                s * dm + f(m.n_layers) * block + s * (dm + 1.0) + s * f(m.d_vocab_out)
            }
        }
    }

    /// The token embedding, `[d_vocab, width]` row-major: `embed.W_E`, or the MLP's `net.0.weight`.
    pub fn embedding(&self, params: &Params) -> Matrix {
        let (slot, width) = match self {
            ModelConfig::Transformer(c) => (c.tree().embed, c.d_model),
            ModelConfig::Mlp(c) => (c.tree().embed, c.d_embed),
            ModelConfig::BitNet(c) => (c.tree().embed, c.d_model),
        };
        Matrix::new(self.d_vocab(), width, params[slot].to_vec())
            .expect("the embedding has d_vocab rows")
    }

    /// Every hook point of the family's forward pass, with its axes.
    pub fn hooks(&self) -> crate::model::hooks::HookTree {
        match self {
            ModelConfig::Transformer(c) => c.hooks(),
            ModelConfig::Mlp(c) => c.hooks(),
            ModelConfig::BitNet(c) => c.hooks(),
        }
    }

    /// The hook point holding the neurons the analysis reads: the last block's `mlp.hook_post`, or
    /// the MLP's last hidden layer; `None` for attention-only transformers.
    pub fn neuron_hook(&self) -> Option<String> {
        let tree = self.hooks();
        let post = tree.last_block().mlp?.post;
        Some(tree.name(post).to_string())
    }

    /// Each attention layer's `hook_pattern`, in order (none for the MLP).
    pub fn pattern_hooks(&self) -> Vec<String> {
        let tree = self.hooks();
        tree.blocks
            .iter()
            .filter_map(|b| b.attn)
            .map(|a| tree.name(a.pattern).to_string())
            .collect()
    }

    /// How those neurons write to the logits, `[neurons, d_vocab_out]`, and its name: the last
    /// block's `W_out·W_U`, or the transpose of the MLP's output weight.
    pub fn neuron_logit_map(&self, params: &Params) -> Option<(Matrix, &'static str)> {
        match self {
            ModelConfig::Transformer(c) => {
                let tree = c.tree();
                let mlp = tree.last_block().mlp?;
                let w_out = Matrix::new(c.d_mlp, c.d_model, params[mlp.w_out].to_vec()).ok()?;
                let w_u =
                    Matrix::new(c.d_model, c.d_vocab_out, params[tree.unembed_w].to_vec()).ok()?;
                Some((w_out.matmul(&w_u).ok()?, "W_out·W_U"))
            }
            ModelConfig::Mlp(c) => {
                let w = params[c.tree().out.weight].to_vec();
                let w = Matrix::new(c.d_vocab_out, c.d_hidden, w).ok()?;
                Some((w.t(), "W_outᵀ (the output Linear)"))
            }
            ModelConfig::BitNet(c) => {
                // The feed-forward output as used (quantized), through γ and the unembedding; the
                // RMSNorm's division by ‖x‖ is a positive per-row factor and is left out.
                let tree = c.tree();
                let last = tree.blocks.last()?;
                let w_out = quant::effective(&params[last.ff_out], c.quant, c.weight_scale);
                let w_out = Matrix::new(c.d_model, c.d_mlp, w_out).ok()?;
                let gamma = &params[tree.gamma];
                let w_u =
                    Matrix::new(c.d_vocab_out, c.d_model, params[tree.unembed].to_vec()).ok()?;
                let mut w_u_t = w_u.t();
                for (row, &g) in w_u_t.data.chunks_mut(c.d_vocab_out).zip(gamma) {
                    row.iter_mut().for_each(|v| *v *= g);
                }
                Some((w_out.t().matmul(&w_u_t).ok()?, "W_outᵀ·diag(γ)·W_Uᵀ"))
            }
        }
    }

    /// Attention layers (whose patterns the analysis summarises): 0 for the MLP.
    pub fn attention_layers(&self) -> usize {
        match self {
            ModelConfig::Transformer(c) => c.n_layers,
            ModelConfig::BitNet(c) => c.n_layers,
            ModelConfig::Mlp(_) => 0,
        }
    }

    /// Attention heads per layer (0 for the MLP).
    pub fn n_heads(&self) -> usize {
        match self {
            ModelConfig::Transformer(c) => c.n_heads,
            ModelConfig::BitNet(c) => c.n_heads,
            ModelConfig::Mlp(_) => 0,
        }
    }

    /// The model built on `params` (constant tensors).
    pub fn build(&self, params: &Params) -> Result<Box<dyn HookedModel>> {
        Ok(self.build_with_vars(params, |_| false)?.0)
    }

    /// The model built on `params`, with the slots `trainable` accepts as [`Var`]s.
    pub fn build_with_vars(
        &self,
        params: &Params,
        trainable: impl Fn(Slot) -> bool,
    ) -> Result<ModelWithVars> {
        Ok(match self {
            ModelConfig::Transformer(c) => {
                let (m, v) = HookedTransformer::with_vars(c, params, trainable)?;
                (Box::new(m), v)
            }
            ModelConfig::Mlp(c) => {
                let (m, v) = MlpModel::with_vars(c, params, trainable)?;
                (Box::new(m), v)
            }
            ModelConfig::BitNet(c) => {
                let (m, v) = BitNetModel::with_vars(c, params, trainable)?;
                (Box::new(m), v)
            }
        })
    }

    /// `model_config.json`: `HookedTransformerConfig(**json)` keys for a transformer; the MLP's
    /// fields plus `"family": "mlp"` otherwise.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ModelConfig::Transformer(c) => c.to_transformer_lens_json(),
            ModelConfig::Mlp(c) => tagged(c, "mlp"),
            ModelConfig::BitNet(c) => tagged(c, "bitnet"),
        }
    }

    /// Reads `model_config.json` (see [`ModelConfig::to_json`]); a file without `family` is a
    /// `HookedTransformerConfig`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        match v.get("family").and_then(|f| f.as_str()) {
            None | Some("transformer") => Ok(ModelConfig::Transformer(
                TransformerConfig::from_transformer_lens_json(v)?,
            )),
            Some(family @ ("mlp" | "bitnet")) => {
                let mut body = v.clone();
                body.as_object_mut().map(|o| o.remove("family"));
                let parsed = if family == "mlp" {
                    serde_json::from_value(body).map(ModelConfig::Mlp)
                } else {
                    serde_json::from_value(body).map(ModelConfig::BitNet)
                };
                parsed.map_err(|e| GrokError::config("model_config", family, e.to_string()))
            }
            Some(other) => Err(GrokError::config("family", other, FAMILIES)),
        }
    }
}

/// What `model.family` accepts.
const FAMILIES: &str = "one of \"transformer\" (default), \"mlp\", \"bitnet\"";

/// `c` as a JSON object with `family` first.
fn tagged<T: Serialize>(c: &T, family: &str) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("family".into(), family.into());
    if let serde_json::Value::Object(fields) = serde_json::to_value(c).expect("config serialises") {
        map.extend(fields);
    }
    serde_json::Value::Object(map)
}

impl Serialize for ModelConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ModelConfig::Transformer(c) => tagged(c, "transformer").serialize(s),
            ModelConfig::Mlp(c) => tagged(c, "mlp").serialize(s),
            ModelConfig::BitNet(c) => tagged(c, "bitnet").serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    /// `[model]` with `family = "transformer"` (the default, so configs written before families
    /// existed still load) or `family = "mlp"`, and that family's fields.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let family = match v.as_object_mut().and_then(|o| o.remove("family")) {
            None => "transformer".to_string(),
            Some(serde_json::Value::String(f)) => f,
            Some(other) => return Err(D::Error::custom(format!("family = {other}: {FAMILIES}"))),
        };
        match family.as_str() {
            "transformer" => serde_json::from_value(v)
                .map(ModelConfig::Transformer)
                .map_err(D::Error::custom),
            "mlp" => serde_json::from_value(v)
                .map(ModelConfig::Mlp)
                .map_err(D::Error::custom),
            "bitnet" => serde_json::from_value(v)
                .map(ModelConfig::BitNet)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "unknown model family `{other}`: {FAMILIES}"
            ))),
        }
    }
}
