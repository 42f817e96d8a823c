//! One model abstraction over the families: [`ModelConfig`] says which family a run is and delegates
//! everything about it to that family's [`Family`] implementation; [`HookedModel`] is a built model's forward pass with hook points. Engines, the
//! trainer, checkpoints, the interpretability tools and the analysis take these, never a family's
//! strings.

use candle_core::Tensor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{GrokError, Result};
use crate::linalg::Matrix;
use crate::model::bitnet::BitNetConfig;
use crate::model::family::{tagged, Family, ModelWithVars};
use crate::model::hooks::{HookTree, Hooks};
use crate::model::mlp::MlpConfig;
use crate::model::params::{ParamSpec, Params, Slot};
use crate::model::transformer::{LogitPositions, TransformerConfig};
use crate::rng::TorchGenerator;

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

/// Declares [`ModelConfig`] over the registered families, with the delegation and serde that need
/// one arm per family: adding a family is one line in the invocation below.
macro_rules! families {
    ($($(#[$doc:meta])* $variant:ident($config:ty) = $name:literal,)+) => {
        /// Which family a model is, with its architecture and init.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ModelConfig {
            $($(#[$doc])* $variant($config),)+
        }

        /// Every family's `model.family` name, the first the default.
        pub const FAMILY_NAMES: &[&str] = &[$($name),+];

        impl ModelConfig {
            /// The family behind this config: every question about the architecture goes to it.
            pub fn family(&self) -> &dyn Family {
                match self {
                    $(ModelConfig::$variant(c) => c,)+
                }
            }

            /// The family, to change.
            pub fn family_mut(&mut self) -> &mut dyn Family {
                match self {
                    $(ModelConfig::$variant(c) => c,)+
                }
            }

            /// The config of family `family` from its fields (without `family`).
            fn from_family_fields(
                family: &str,
                fields: serde_json::Value,
            ) -> std::result::Result<Self, String> {
                let parsed = match family {
                    $($name => serde_json::from_value(fields).map(ModelConfig::$variant),)+
                    other => {
                        return Err(format!("unknown model family `{other}`: {}", families_text()))
                    }
                };
                parsed.map_err(|e| e.to_string())
            }
        }

        impl Serialize for ModelConfig {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let name = self.family_name();
                match self {
                    $(ModelConfig::$variant(c) => tagged(c, name).serialize(s),)+
                }
            }
        }
    };
}

families! {
    /// TransformerLens's `HookedTransformer` (seeds 000, 001, 003, 004).
    Transformer(TransformerConfig) = "transformer",
    /// Seed 002's MLP on concatenated token embeddings.
    Mlp(MlpConfig) = "mlp",
    /// Seed 004's binarized or ternary BitNet transformer.
    BitNet(BitNetConfig) = "bitnet",
}

/// What `model.family` accepts, for messages.
fn families_text() -> String {
    let quoted: Vec<String> = FAMILY_NAMES.iter().map(|n| format!("\"{n}\"")).collect();
    format!("one of {} (the first is the default)", quoted.join(", "))
}

impl ModelConfig {
    /// The family's name as `model.family` writes it.
    pub fn family_name(&self) -> &'static str {
        self.family().name()
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
        self.family().param_specs()
    }

    /// Seed of the weight init.
    pub fn seed(&self) -> u64 {
        self.family().seed()
    }

    /// Input vocabulary size.
    pub fn d_vocab(&self) -> usize {
        self.family().sizes().0
    }

    /// Output vocabulary size.
    pub fn d_vocab_out(&self) -> usize {
        self.family().sizes().1
    }

    /// Context length (tokens per row the model reads at most; the MLP reads exactly this many).
    pub fn n_ctx(&self) -> usize {
        self.family().sizes().2
    }

    /// Fills the vocabulary, output vocabulary and context where they are 0 from a task with
    /// `vocab` tokens, `n_answers` possible answers and rows of `seq_len` tokens.
    pub fn fill_from_task(&mut self, vocab: usize, n_answers: usize, seq_len: usize) {
        self.family_mut().fill_from_task(vocab, n_answers, seq_len)
    }

    /// Checks every field (after [`ModelConfig::fill_from_task`]).
    pub fn validate(&self) -> Result<()> {
        self.family().validate()
    }

    /// Checks `tokens` as `[batch, pos]` rows for this model; returns `pos`.
    pub fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        self.family().check_tokens(tokens, batch)
    }

    /// The output layer's weight and its shape `(rows, cols)` (`W_U`, or the MLP's last Linear):
    /// the matrix whose spectral norm the training metrics track.
    pub fn output_weight(&self) -> (Slot, usize, usize) {
        self.family().output_weight()
    }

    /// One line describing the architecture, for summaries and reports.
    pub fn describe(&self) -> String {
        self.family().describe()
    }

    /// FLOPs of one forward pass over `batch` rows as the Python reference computes it (every
    /// matmul at every position).
    pub fn reference_flops(&self, batch: usize) -> f64 {
        self.family().reference_flops(batch)
    }

    /// The initial values, in slot order, that the family's PyTorch reference draws from `gen`.
    pub fn torch_init(&self, gen: &mut TorchGenerator) -> Vec<Vec<f32>> {
        self.family().torch_init(gen)
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
        self.family().activation_floats_per_row()
    }

    /// The token embedding, `[d_vocab, width]` row-major: `embed.W_E`, or the MLP's `net.0.weight`.
    pub fn embedding(&self, params: &Params) -> Matrix {
        let (slot, width) = self.family().embedding();
        Matrix::new(self.d_vocab(), width, params[slot].to_vec())
            .expect("the embedding has d_vocab rows")
    }

    /// Every hook point of the family's forward pass, with its axes.
    pub fn hooks(&self) -> HookTree {
        self.family().hooks()
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
        self.family().neuron_logit_map(params)
    }

    /// Attention layers (whose patterns the analysis summarises): 0 for the MLP.
    pub fn attention_layers(&self) -> usize {
        self.hooks()
            .blocks
            .iter()
            .filter(|b| b.attn.is_some())
            .count()
    }

    /// Attention heads per layer (0 for the MLP).
    pub fn n_heads(&self) -> usize {
        self.family().n_heads()
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
        self.family().build_with_vars(params, &trainable)
    }

    /// `model_config.json`: `HookedTransformerConfig(**json)` keys for a transformer; the family's
    /// fields plus `"family"` otherwise.
    pub fn to_json(&self) -> serde_json::Value {
        self.family().to_json()
    }

    /// Reads `model_config.json` (see [`ModelConfig::to_json`]); a file without `family` is a
    /// `HookedTransformerConfig`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        match v.get("family").and_then(|f| f.as_str()) {
            None | Some("transformer") => Ok(ModelConfig::Transformer(
                TransformerConfig::from_transformer_lens_json(v)?,
            )),
            Some(family) => {
                let mut body = v.clone();
                body.as_object_mut().map(|o| o.remove("family"));
                Self::from_family_fields(family, body)
                    .map_err(|e| GrokError::config("model_config", family, e))
            }
        }
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    /// `[model]` with `family = "transformer"` (the default, so configs written before families
    /// existed still load), `"mlp"` or `"bitnet"`, and that family's fields.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let family = match v.as_object_mut().and_then(|o| o.remove("family")) {
            None => "transformer".to_string(),
            Some(serde_json::Value::String(f)) => f,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "family = {other}: {}",
                    families_text()
                )))
            }
        };
        Self::from_family_fields(&family, v).map_err(D::Error::custom)
    }
}
