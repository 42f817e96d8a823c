//! The model configuration, mirroring TransformerLens's `HookedTransformerConfig` for what these models use.

use serde::{Deserialize, Serialize};

use crate::error::{GrokError, Result};
use crate::model::hooks::{axes, hook_tree, BlockHooks, HookPoint, HookTree};
use crate::model::params::ParamSpec;
use crate::model::params::Scope;
use crate::model::transformer::tree::TransformerTree;
use crate::model::{check_at_most, check_positive, check_rows};

/// MLP activation function, under TransformerLens's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    /// max(0, x).
    Relu,
    /// Exact GELU, x·Φ(x) with the error function (TransformerLens `"gelu"`).
    Gelu,
    /// The tanh approximation of GELU (TransformerLens `"gelu_new"`).
    GeluNew,
}

/// Normalization before attention, MLP and unembedding (TransformerLens `normalization_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalization {
    /// LayerNorm with learned weight `w` and bias `b`.
    LN,
    /// LayerNorm without the affine map (what `fold_ln` produces).
    LNPre,
}

/// How positions are embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PositionalEmbedding {
    /// A learned `W_pos [n_ctx, d_model]` added to the token embedding.
    #[default]
    Standard,
    /// No positional information: `W_pos` is kept at zero and frozen (seed 003's `deactivate_position`),
    /// so the state dict still loads into a standard TransformerLens model.
    None,
}

/// Architecture and init of a `HookedTransformer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads per block.
    pub n_heads: usize,
    /// Width of each head.
    pub d_head: usize,
    /// Hidden width of the MLP (ignored when `attn_only`).
    pub d_mlp: usize,
    /// MLP activation.
    pub act_fn: ActFn,
    /// Normalization; `None` for the grokking models.
    #[serde(default, with = "normalization_serde")]
    pub normalization_type: Option<Normalization>,
    /// Input vocabulary size; 0 means "derive from the task".
    #[serde(default)]
    pub d_vocab: usize,
    /// Output vocabulary size; 0 means "derive from the task".
    #[serde(default)]
    pub d_vocab_out: usize,
    /// Context length; 0 means "derive from the task".
    #[serde(default)]
    pub n_ctx: usize,
    /// Positional embedding kind.
    #[serde(default)]
    pub positional_embedding_type: PositionalEmbedding,
    /// Blocks without MLPs.
    #[serde(default)]
    pub attn_only: bool,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Seed of the weight init.
    #[serde(default)]
    pub seed: u64,
    /// Standard deviation of every `W_*` at init; 0 means TransformerLens's default 0.8/√d_model.
    #[serde(default)]
    pub initializer_range: f64,
}

fn default_eps() -> f64 {
    1e-5
}

mod normalization_serde {
    //! TOML has no null, so `None` is written as the string "none"; JSON null is accepted too.
    use super::Normalization;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Normalization>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            None => "none",
            Some(Normalization::LN) => "LN",
            Some(Normalization::LNPre) => "LNPre",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Normalization>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref() {
            None | Some("none") | Some("None") => Ok(None),
            Some("LN") => Ok(Some(Normalization::LN)),
            Some("LNPre") => Ok(Some(Normalization::LNPre)),
            Some(other) => Err(serde::de::Error::custom(format!(
                "unknown normalization_type `{other}`: expected \"none\", \"LN\" or \"LNPre\""
            ))),
        }
    }
}

impl TransformerConfig {
    /// The TransformerLens grokking-demo architecture (seed 004) for a vocabulary derived from the task.
    pub fn grokking_demo() -> Self {
        TransformerConfig {
            n_layers: 1,
            d_model: 128,
            n_heads: 4,
            d_head: 32,
            d_mlp: 512,
            act_fn: ActFn::Relu,
            normalization_type: None,
            d_vocab: 0,
            d_vocab_out: 0,
            n_ctx: 0,
            positional_embedding_type: PositionalEmbedding::Standard,
            attn_only: false,
            eps: 1e-5,
            seed: 999,
            initializer_range: 0.0,
        }
    }

    /// Standard deviation of `W_*` at init.
    pub fn init_std(&self) -> f64 {
        if self.initializer_range > 0.0 {
            self.initializer_range
        } else {
            0.8 / (self.d_model as f64).sqrt()
        }
    }

    /// Checks every field; `d_vocab`, `d_vocab_out` and `n_ctx` must already be resolved (non-zero).
    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("model.n_layers", self.n_layers),
            ("model.d_model", self.d_model),
            ("model.n_heads", self.n_heads),
            ("model.d_head", self.d_head),
            ("model.d_vocab", self.d_vocab),
            ("model.d_vocab_out", self.d_vocab_out),
            ("model.n_ctx", self.n_ctx),
        ])?;
        if !self.attn_only && self.d_mlp == 0 {
            return Err(GrokError::config(
                "model.d_mlp",
                0,
                "must be at least 1 unless model.attn_only = true",
            ));
        }
        check_at_most(&[
            ("model.d_model", self.d_model, 1 << 16),
            ("model.d_mlp", self.d_mlp, 1 << 16),
            ("model.d_vocab", self.d_vocab, 1 << 16),
        ])?;
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return Err(GrokError::config(
                "model.eps",
                self.eps,
                "must be in (0, 1)",
            ));
        }
        if !(self.initializer_range >= 0.0 && self.initializer_range.is_finite()) {
            return Err(GrokError::config(
                "model.initializer_range",
                self.initializer_range,
                "must be >= 0 (0 = TransformerLens default 0.8/sqrt(d_model))",
            ));
        }
        Ok(())
    }

    /// Checks that `tokens` form `[batch, pos]` with `1 <= pos <= n_ctx` and ids below `d_vocab`;
    /// returns `pos`.
    pub fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        check_rows(tokens, batch, self.n_ctx, self.d_vocab)
    }

    /// Every hook point the forward pass passes through, in order, with its axes
    /// (`attn.hook_result` included; it is computed only when asked for).
    pub fn hooks(&self) -> HookTree {
        let norm = |s: &mut Scope<'_, HookPoint>, name: &str| {
            self.normalization_type
                .is_some()
                .then(|| HookTree::declare_norm(&mut s.pp(name)))
        };
        hook_tree(|root| {
            let embed = root.hook("hook_embed", axes::RESID);
            let pos_embed = Some(root.hook("hook_pos_embed", axes::RESID));
            let blocks = (0..self.n_layers)
                .map(|l| {
                    let mut blocks = root.pp("blocks");
                    let mut b = blocks.pp(l);
                    let resid_pre = Some(b.hook("hook_resid_pre", axes::RESID));
                    let ln1 = norm(&mut b, "ln1");
                    let attn = Some(HookTree::declare_attn(&mut b.pp("attn")));
                    let attn_out = Some(b.hook("hook_attn_out", axes::RESID));
                    let mut block = BlockHooks {
                        resid_pre,
                        ln1,
                        attn,
                        attn_out,
                        ..BlockHooks::default()
                    };
                    if !self.attn_only {
                        block.resid_mid = Some(b.hook("hook_resid_mid", axes::RESID));
                        block.ln2 = norm(&mut b, "ln2");
                        block.mlp = Some(HookTree::declare_mlp(&mut b.pp("mlp"), axes::NEURONS));
                        block.mlp_out = Some(b.hook("hook_mlp_out", axes::RESID));
                    }
                    block.resid_post = Some(b.hook("hook_resid_post", axes::RESID));
                    block
                })
                .collect();
            let ln_final = norm(root, "ln_final");
            (embed, pos_embed, blocks, ln_final)
        })
    }

    /// The typed parameter tree (TransformerLens state_dict names, shapes, init).
    pub fn tree(&self) -> TransformerTree {
        TransformerTree::new(self)
    }

    /// Every parameter in TransformerLens's state_dict order, with shapes and init.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        self.tree().specs
    }

    /// The keys a Python user passes to `HookedTransformerConfig(**cfg)` to get the same model.
    pub fn to_transformer_lens_json(&self) -> serde_json::Value {
        let act = match self.act_fn {
            ActFn::Relu => "relu",
            ActFn::Gelu => "gelu",
            ActFn::GeluNew => "gelu_new",
        };
        let norm = match self.normalization_type {
            None => serde_json::Value::Null,
            Some(Normalization::LN) => "LN".into(),
            Some(Normalization::LNPre) => "LNPre".into(),
        };
        serde_json::json!({
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_head": self.d_head,
            "d_mlp": if self.attn_only { serde_json::Value::Null } else { self.d_mlp.into() },
            "act_fn": act,
            "normalization_type": norm,
            "d_vocab": self.d_vocab,
            "d_vocab_out": self.d_vocab_out,
            "n_ctx": self.n_ctx,
            "attn_only": self.attn_only,
            "eps": self.eps,
            "seed": self.seed,
            "positional_embedding_type": "standard",
            "default_prepend_bos": false,
        })
    }

    /// Reads a config written by [`TransformerConfig::to_transformer_lens_json`] or by a Python user
    /// (`HookedTransformerConfig` keys; unknown keys are ignored, missing optional ones take TL defaults).
    pub fn from_transformer_lens_json(v: &serde_json::Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| GrokError::config("model_config", v, "must be a JSON object"))?;
        let get_usize = |k: &str| -> Result<Option<usize>> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| GrokError::config(k, x, "must be a non-negative integer")),
            }
        };
        let need = |k: &str| -> Result<usize> {
            get_usize(k)?
                .ok_or_else(|| GrokError::config(k, "missing", "required key in model_config.json"))
        };
        let d_model = need("d_model")?;
        let n_heads = need("n_heads")?;
        let act_fn = match obj.get("act_fn").and_then(|x| x.as_str()).unwrap_or("relu") {
            "relu" => ActFn::Relu,
            "gelu" => ActFn::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => ActFn::GeluNew,
            other => {
                return Err(GrokError::config(
                    "act_fn",
                    other,
                    "one of relu, gelu, gelu_new",
                ))
            }
        };
        let normalization_type = match obj.get("normalization_type") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => match x.as_str() {
                Some("LN") => Some(Normalization::LN),
                Some("LNPre") => Some(Normalization::LNPre),
                _ => {
                    return Err(GrokError::config(
                        "normalization_type",
                        x,
                        "null, \"LN\" or \"LNPre\"",
                    ))
                }
            },
        };
        let attn_only = obj
            .get("attn_only")
            .and_then(|x| x.as_bool())
            .unwrap_or(false);
        let d_vocab = need("d_vocab")?;
        let cfg = TransformerConfig {
            n_layers: need("n_layers")?,
            d_model,
            n_heads,
            d_head: get_usize("d_head")?.unwrap_or(d_model / n_heads.max(1)),
            d_mlp: get_usize("d_mlp")?.unwrap_or(if attn_only { 0 } else { 4 * d_model }),
            act_fn,
            normalization_type,
            d_vocab,
            d_vocab_out: match obj.get("d_vocab_out").and_then(|x| x.as_i64()) {
                Some(n) if n > 0 => n as usize,
                _ => d_vocab,
            },
            n_ctx: need("n_ctx")?,
            positional_embedding_type: PositionalEmbedding::Standard,
            attn_only,
            eps: obj.get("eps").and_then(|x| x.as_f64()).unwrap_or(1e-5),
            seed: obj.get("seed").and_then(|x| x.as_u64()).unwrap_or(0),
            initializer_range: 0.0,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// FLOPs (2 per multiply-add) of one forward pass over `batch` sequences of `n_ctx` tokens, as
    /// TransformerLens computes it: every matmul at every position.
    pub fn forward_flops_full(&self, batch: usize) -> f64 {
        let rows = (batch * self.n_ctx) as f64;
        let (dm, hd) = (self.d_model as f64, (self.n_heads * self.d_head) as f64);
        let t = self.n_ctx as f64;
        let per_block = 2.0 * rows * dm * hd * 4.0 // Q, K, V, O
            + 2.0 * batch as f64 * self.n_heads as f64 * t * t * self.d_head as f64 * 2.0 // scores, z
            + if self.attn_only { 0.0 } else { 2.0 * rows * dm * self.d_mlp as f64 * 2.0 };
        self.n_layers as f64 * per_block + 2.0 * rows * dm * self.d_vocab_out as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved() -> TransformerConfig {
        TransformerConfig {
            d_vocab: 114,
            d_vocab_out: 113,
            n_ctx: 3,
            ..TransformerConfig::grokking_demo()
        }
    }

    #[test]
    fn specs_follow_transformer_lens_shapes() {
        let specs = resolved().param_specs();
        let find = |n: &str| specs.iter().find(|s| s.name == n).unwrap().shape.clone();
        assert_eq!(find("embed.W_E"), vec![114, 128]);
        assert_eq!(find("blocks.0.attn.W_Q"), vec![4, 128, 32]);
        assert_eq!(find("blocks.0.attn.W_O"), vec![4, 32, 128]);
        assert_eq!(find("blocks.0.mlp.W_in"), vec![128, 512]);
        assert_eq!(find("unembed.W_U"), vec![128, 113]);
        assert!(!specs.iter().any(|s| s.name.contains("ln")));
    }

    #[test]
    fn json_round_trip() {
        let c = resolved();
        let back =
            TransformerConfig::from_transformer_lens_json(&c.to_transformer_lens_json()).unwrap();
        assert_eq!(
            TransformerConfig {
                seed: c.seed,
                ..back
            },
            c
        );
    }

    #[test]
    fn zero_width_is_rejected_by_name() {
        let c = TransformerConfig {
            d_head: 0,
            ..resolved()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("model.d_head"), "{e}");
    }
}
