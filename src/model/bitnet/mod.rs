//! The BitNet family (seed 004): a transformer whose attention and feed-forward projections are
//! BitLinear layers, weights binarized (sign) or ternarized (absmean) on the fly from full-precision
//! latents with a straight-through gradient, as the seed's public code computes it
//! (github jasonlizhengjian/MI_of_binary_transformers, `bitnet/`):
//!
//! - embedding `emb` N(0, 1), no positional embedding, no causal mask;
//! - attention: `to_qkv.{0,1,2}` and `to_out`, BitLinear(d_model, d_model), heads of d_model/n_heads,
//!   scores scaled by 1/√d_model (the model width);
//! - `x = attn(x) + emb` (each block adds the *embedding*, the seed's `skip`), then `x = ffn(x) + x`
//!   with ffn = BitLinear(d_model, d_mlp) → ReLU → BitLinear(d_mlp, d_model);
//! - `to_logits`: RMSNorm x/max(‖x‖, 1e-12)·γ·√d_model, then a full-precision Linear without bias.
//!
//! Those quirks are the defaults; [`BitNetConfig`] switches each to the sensible alternative.
//! Parameters carry the seed's `state_dict` names (`transformer.layers.0.to_qkv.0.layer.weight`), so
//! a checkpoint loads into the seed's class with `strict=False` (the unused outer `weight` of each
//! BitLinear, and the ternary layers' unused LayerNorm, are not stored; [`BitNetConfig::seed_only_tensors`]
//! names them for a strict load).

pub mod family;
pub mod forward;
pub mod quant;

use crate::model::hooks::{axes, hook_tree, BlockHooks, HookTree};
use serde::{Deserialize, Serialize};

use crate::error::{GrokError, Result};
use crate::model::params::{Init, ParamList, ParamSpec, Params, Scope, Slot};
use crate::model::{check_at_most, check_positive, check_rows};
use crate::rng::TorchGenerator;

pub use forward::BitNetModel;
pub use quant::{Quant, Quantized};

/// What the attention scores are divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AttnScale {
    /// √d_model, as the seed's `dim ** -0.5`.
    #[default]
    Model,
    /// √d_head, as TransformerLens and most transformers.
    Head,
}

/// What each block's attention output is added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Residual {
    /// The token embedding, in every block (the seed's `skip = x` taken once before the loop; the
    /// same as `stream` for one layer).
    #[default]
    Embed,
    /// The block's input, the usual residual stream.
    Stream,
}

/// Architecture and init of a BitNet transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitNetConfig {
    /// Weight quantization of every BitLinear layer.
    pub quant: Quant,
    /// Number of blocks (the seed's `depth`).
    #[serde(default = "one")]
    pub n_layers: usize,
    /// Width of the residual stream (the seed's `dim`).
    pub d_model: usize,
    /// Attention heads per block; each is d_model / n_heads wide.
    pub n_heads: usize,
    /// Hidden width of the feed-forward layer (the seed's `dim · ff_mult`, 4·d_model).
    pub d_mlp: usize,
    /// Input vocabulary size; 0 means "derive from the task".
    #[serde(default)]
    pub d_vocab: usize,
    /// Output vocabulary size; 0 means "derive from the task".
    #[serde(default)]
    pub d_vocab_out: usize,
    /// Context length; 0 means "derive from the task".
    #[serde(default)]
    pub n_ctx: usize,
    /// Mask future positions (the seed attends over all positions).
    #[serde(default)]
    pub causal: bool,
    /// Divide attention scores by √d_model (seed) or √d_head.
    #[serde(default)]
    pub attn_scale: AttnScale,
    /// Scale binarized weights by β = mean|c| (BitNet paper); the seed uses bare ±1.
    #[serde(default)]
    pub weight_scale: bool,
    /// Quantize each BitLinear's input per token to this many bits (BitNet b1.58 uses 8); 0 = off.
    #[serde(default)]
    pub act_bits: u32,
    /// What attention outputs are added to.
    #[serde(default)]
    pub residual: Residual,
    /// Seed of the weight init.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> usize {
    1
}

/// The BitLinear weights of one block, each `[out, in]` (PyTorch layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitBlockSlots {
    /// `to_qkv.0`, `to_qkv.1`, `to_qkv.2`: Q, K, V projections `[d_model, d_model]`.
    pub qkv: [Slot; 3],
    /// `to_out` `[d_model, d_model]`.
    pub out: Slot,
    /// `ffn_layers.{l}.layer1` `[d_mlp, d_model]`.
    pub ff_in: Slot,
    /// `ffn_layers.{l}.layer2` `[d_model, d_mlp]`.
    pub ff_out: Slot,
}

impl BitBlockSlots {
    /// Every BitLinear of the block with its role, in construction order.
    pub fn linears(&self) -> [(&'static str, Slot); 6] {
        [
            ("W_Q", self.qkv[0]),
            ("W_K", self.qkv[1]),
            ("W_V", self.qkv[2]),
            ("W_O", self.out),
            ("W_in", self.ff_in),
            ("W_out", self.ff_out),
        ]
    }
}

/// Every parameter of a BitNet transformer, in `state_dict` order.
#[derive(Debug, Clone, PartialEq)]
pub struct BitNetTree {
    /// `emb.weight [d_vocab, d_model]`.
    pub embed: Slot,
    /// The blocks' BitLinear weights.
    pub blocks: Vec<BitBlockSlots>,
    /// `to_logits.0.gamma [d_model]` (the RMSNorm's scale).
    pub gamma: Slot,
    /// `to_logits.1.weight [d_vocab_out, d_model]` (full precision).
    pub unembed: Slot,
    /// Name, shape and init of every slot.
    pub specs: Vec<ParamSpec>,
}

impl BitNetTree {
    /// The label a BitLinear weight goes by in the analysis, `blocks.{layer}.{role}` (TransformerLens's
    /// names for the same matrices).
    pub fn linear_label(layer: usize, role: &str) -> String {
        format!("blocks.{layer}.{role}")
    }

    /// Every BitLinear weight with its block and role, block by block.
    pub fn bit_linears(&self) -> impl Iterator<Item = (usize, &'static str, Slot)> + '_ {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(|(l, b)| b.linears().into_iter().map(move |(role, s)| (l, role, s)))
    }
}

impl BitNetConfig {
    /// Seed 004's `BitNetTransformer(dim=128, depth=1, heads=4)` with vocabularies from the task.
    pub fn seed_004(quant: Quant) -> Self {
        BitNetConfig {
            quant,
            n_layers: 1,
            d_model: 128,
            n_heads: 4,
            d_mlp: 512,
            d_vocab: 0,
            d_vocab_out: 0,
            n_ctx: 0,
            causal: false,
            attn_scale: AttnScale::Model,
            weight_scale: false,
            act_bits: 0,
            residual: Residual::Embed,
            seed: 0,
        }
    }

    /// Width of each head.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// The factor attention scores are multiplied by.
    pub fn score_scale(&self) -> f64 {
        let width = match self.attn_scale {
            AttnScale::Model => self.d_model,
            AttnScale::Head => self.d_head(),
        };
        1.0 / (width as f64).sqrt()
    }

    /// The typed parameter tree. Linear weights start kaiming-uniform (torch's `nn.Linear`
    /// default, bound 1/√fan_in), the embedding N(0, 1), γ at 1.
    pub fn tree(&self) -> BitNetTree {
        let (d, f) = (self.d_model, self.d_mlp);
        let uniform = |fan_in: usize| Init::Uniform {
            bound: 1.0 / (fan_in as f64).sqrt(),
        };
        let mut list = ParamList::new();
        let mut root = list.root();
        let embed = root
            .pp("emb")
            .leaf("weight", vec![self.d_vocab, d], Init::Normal { std: 1.0 });
        let mut transformer = root.pp("transformer");
        let bit = |scope: &mut Scope, d_out: usize, d_in: usize| {
            scope
                .pp("layer")
                .leaf("weight", vec![d_out, d_in], uniform(d_in))
        };
        let mut attn = Vec::with_capacity(self.n_layers);
        {
            let mut layers = transformer.pp("layers");
            for l in 0..self.n_layers {
                let mut layer = layers.pp(l);
                let mut to_qkv = layer.pp("to_qkv");
                let qkv = [0, 1, 2].map(|i| bit(&mut to_qkv.pp(i), d, d));
                let out = bit(&mut layer.pp("to_out"), d, d);
                attn.push((qkv, out));
            }
        }
        let mut ffn = transformer.pp("ffn_layers");
        let blocks = attn
            .into_iter()
            .enumerate()
            .map(|(l, (qkv, out))| {
                let mut layer = ffn.pp(l);
                let ff_in = bit(&mut layer.pp("layer1"), f, d);
                let ff_out = bit(&mut layer.pp("layer2"), d, f);
                BitBlockSlots {
                    qkv,
                    out,
                    ff_in,
                    ff_out,
                }
            })
            .collect();
        let mut to_logits = root.pp("to_logits");
        let gamma = to_logits.pp(0).leaf("gamma", vec![d], Init::Ones);
        let unembed = to_logits
            .pp(1)
            .leaf("weight", vec![self.d_vocab_out, d], uniform(d));
        BitNetTree {
            embed,
            blocks,
            gamma,
            unembed,
            specs: list.into_specs(),
        }
    }

    /// The initial values, in slot order, that the seed's constructor draws from `gen`:
    /// `nn.Embedding` N(0, 1); per block the four attention BitLinears then the two feed-forward
    /// ones, each drawing its unused outer `nn.Linear` weight and then its inner `layer` weight
    /// (kaiming-uniform); γ = 1; the output `nn.Linear` (no bias).
    pub fn torch_init(&self, gen: &mut TorchGenerator) -> Vec<Vec<f32>> {
        let tree = self.tree();
        let mut values = vec![Vec::new(); tree.specs.len()];
        values[tree.embed.index()] = gen.normal(self.d_vocab * self.d_model, 0.0, 1.0);
        let a = 5f64.sqrt();
        for (_, _, slot) in tree.bit_linears() {
            let shape = &tree.specs[slot.index()].shape;
            let (fan_out, fan_in) = (shape[0], shape[1]);
            gen.kaiming_uniform(fan_out, fan_in, a); // the outer BitLinear's own, unused weight
            values[slot.index()] = gen.kaiming_uniform(fan_out, fan_in, a);
        }
        values[tree.gamma.index()] = vec![1.0; self.d_model];
        values[tree.unembed.index()] = gen.kaiming_uniform(self.d_vocab_out, self.d_model, a);
        values
    }

    /// The tensors the seed's class holds but its forward never reads, named and shaped as its
    /// `state_dict` has them, with the value to fill each with so `load_state_dict(strict=True)`
    /// accepts a groklens model: every BitLinear's outer `weight` (zeros; the seed leaves it at its
    /// init draw, which no output depends on) and, ternary, its `layer.norm` (LayerNorm's defaults:
    /// weight 1, bias 0, over the layer's input).
    pub fn seed_only_tensors(&self) -> Vec<(String, Vec<usize>, f32)> {
        let tree = self.tree();
        let mut out = Vec::new();
        for (_, _, slot) in tree.bit_linears() {
            let spec = &tree.specs[slot.index()];
            let Some(linear) = spec.name.strip_suffix(".layer.weight") else {
                continue;
            };
            out.push((format!("{linear}.weight"), spec.shape.clone(), 0.0));
            if self.quant == Quant::Ternary {
                let fan_in = spec.shape[1];
                out.push((format!("{linear}.layer.norm.weight"), vec![fan_in], 1.0));
                out.push((format!("{linear}.layer.norm.bias"), vec![fan_in], 0.0));
            }
        }
        out
    }

    /// Every hook point in forward order, under TransformerLens's names, with its axes; the final
    /// RMSNorm is `ln_final` (`hook_scale` = max(‖x‖, 1e-12)/√d_model, `hook_normalized` = x / scale).
    pub fn hooks(&self) -> HookTree {
        hook_tree(|root| {
            let embed = root.hook("hook_embed", axes::RESID);
            let blocks = (0..self.n_layers)
                .map(|l| {
                    let mut blocks = root.pp("blocks");
                    let mut b = blocks.pp(l);
                    BlockHooks {
                        resid_pre: Some(b.hook("hook_resid_pre", axes::RESID)),
                        attn: Some(HookTree::declare_attn(&mut b.pp("attn"))),
                        attn_out: Some(b.hook("hook_attn_out", axes::RESID)),
                        resid_mid: Some(b.hook("hook_resid_mid", axes::RESID)),
                        mlp: Some(HookTree::declare_mlp(&mut b.pp("mlp"), axes::NEURONS)),
                        mlp_out: Some(b.hook("hook_mlp_out", axes::RESID)),
                        resid_post: Some(b.hook("hook_resid_post", axes::RESID)),
                        ..BlockHooks::default()
                    }
                })
                .collect();
            let ln_final = Some(HookTree::declare_norm(&mut root.pp("ln_final")));
            (embed, None, blocks, ln_final)
        })
    }

    /// Every BitLinear weight as the forward pass uses it, `(name, [out, in], quantized)`, named by
    /// their `state_dict` names.
    pub fn quantized_weights(&self, params: &Params) -> Vec<(String, Vec<usize>, Quantized)> {
        let tree = self.tree();
        tree.bit_linears()
            .map(|(_, _, slot)| {
                let spec = &tree.specs[slot.index()];
                let c = quant::centre(&params[slot]);
                (
                    spec.name.clone(),
                    spec.shape.clone(),
                    quant::quantize(&c, self.quant, self.weight_scale),
                )
            })
            .collect()
    }

    /// Checks every field; `d_vocab`, `d_vocab_out` and `n_ctx` must already be resolved.
    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("model.n_layers", self.n_layers),
            ("model.d_model", self.d_model),
            ("model.n_heads", self.n_heads),
            ("model.d_mlp", self.d_mlp),
            ("model.d_vocab", self.d_vocab),
            ("model.d_vocab_out", self.d_vocab_out),
            ("model.n_ctx", self.n_ctx),
        ])?;
        check_at_most(&[
            ("model.n_layers", self.n_layers, 64),
            ("model.d_model", self.d_model, 1 << 14),
            ("model.d_mlp", self.d_mlp, 1 << 16),
            ("model.d_vocab", self.d_vocab, 1 << 16),
            ("model.n_ctx", self.n_ctx, 1 << 12),
        ])?;
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(GrokError::config(
                "model.n_heads",
                self.n_heads,
                format!(
                    "must divide d_model = {} (each head is d_model / n_heads wide)",
                    self.d_model
                ),
            ));
        }
        if self.act_bits == 1 || self.act_bits > 16 {
            return Err(GrokError::config(
                "model.act_bits",
                self.act_bits,
                "must be 0 (off) or 2 to 16 (BitNet b1.58 uses 8)",
            ));
        }
        if self.weight_scale && self.quant == Quant::Ternary {
            return Err(GrokError::config(
                "model.weight_scale",
                true,
                "applies to binary weights only (model.quant = \"binary\"): ternary weights are always \
                 scaled by their absmean γ, so the setting would change nothing; remove it",
            ));
        }
        Ok(())
    }

    /// Checks `tokens` as `[batch, pos]` rows (1 ≤ pos ≤ n_ctx) with ids below `d_vocab`.
    pub fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        check_rows(tokens, batch, self.n_ctx, self.d_vocab)
    }

    /// Multiply-add FLOPs of one forward pass over `batch` rows of `n_ctx` tokens, every position.
    pub fn forward_flops(&self, batch: usize) -> f64 {
        let (s, d, f) = (self.n_ctx as f64, self.d_model as f64, self.d_mlp as f64);
        let attn = 2.0 * s * 4.0 * d * d + 2.0 * 2.0 * s * s * d;
        let ffn = 2.0 * 2.0 * s * d * f;
        let unembed = 2.0 * s * d * self.d_vocab_out as f64;
        (self.n_layers as f64 * (attn + ffn) + unembed) * batch as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved() -> BitNetConfig {
        BitNetConfig {
            d_vocab: 114,
            d_vocab_out: 113,
            n_ctx: 3,
            ..BitNetConfig::seed_004(Quant::Binary)
        }
    }

    #[test]
    fn names_are_the_seed_state_dict_in_its_order() {
        let cfg = BitNetConfig {
            n_layers: 2,
            ..resolved()
        };
        let names: Vec<String> = cfg.tree().specs.into_iter().map(|s| s.name).collect();
        let mut want = vec!["emb.weight".to_string()];
        for l in 0..2 {
            for m in ["to_qkv.0", "to_qkv.1", "to_qkv.2", "to_out"] {
                want.push(format!("transformer.layers.{l}.{m}.layer.weight"));
            }
        }
        for l in 0..2 {
            for m in ["layer1", "layer2"] {
                want.push(format!("transformer.ffn_layers.{l}.{m}.layer.weight"));
            }
        }
        want.push("to_logits.0.gamma".into());
        want.push("to_logits.1.weight".into());
        assert_eq!(names, want);
        let tree = cfg.tree();
        assert_eq!(tree.specs[tree.blocks[1].ff_in.index()].shape, [512, 128]);
        assert_eq!(tree.specs[tree.unembed.index()].shape, [113, 128]);
    }

    /// With the unused tensors, the names and shapes are exactly those of the seed class's
    /// `state_dict` (as `../shared/fixtures/seed004_bitnet_*` list them).
    #[test]
    fn with_the_unused_tensors_the_names_are_the_seed_class_state_dict() {
        for quant in [Quant::Binary, Quant::Ternary] {
            let cfg = BitNetConfig {
                quant,
                ..resolved()
            };
            let mut all: Vec<(String, Vec<usize>)> = cfg
                .tree()
                .specs
                .into_iter()
                .map(|s| (s.name, s.shape))
                .collect();
            all.extend(cfg.seed_only_tensors().into_iter().map(|(n, s, _)| (n, s)));
            all.sort();
            let per_linear = if quant == Quant::Ternary { 4 } else { 2 };
            assert_eq!(all.len(), 3 + 6 * per_linear);
            let find = |n: &str| {
                all.iter()
                    .find(|(name, _)| name == n)
                    .map(|(_, s)| s.clone())
            };
            assert_eq!(
                find("transformer.layers.0.to_out.weight"),
                Some(vec![128, 128])
            );
            assert_eq!(
                find("transformer.ffn_layers.0.layer2.weight"),
                Some(vec![128, 512])
            );
            let norm = find("transformer.ffn_layers.0.layer2.layer.norm.bias");
            assert_eq!(norm, (quant == Quant::Ternary).then(|| vec![512]));
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let e = BitNetConfig {
            n_heads: 3,
            ..resolved()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("model.n_heads") && e.contains("divide"), "{e}");
        let e = BitNetConfig {
            act_bits: 1,
            ..resolved()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("model.act_bits"), "{e}");
        let e = resolved().check_tokens(&[1, 2, 3, 4], 1).unwrap_err();
        assert!(e.to_string().contains("n_ctx = 3"), "{e}");
        let e = resolved().check_tokens(&[1, 2, 114], 1).unwrap_err();
        assert!(e.to_string().contains("114"), "{e}");
    }

    #[test]
    fn scores_scale_by_the_model_or_the_head_width() {
        assert_eq!(resolved().score_scale(), 1.0 / 128f64.sqrt());
        let head = BitNetConfig {
            attn_scale: AttnScale::Head,
            ..resolved()
        };
        assert_eq!(head.score_scale(), 1.0 / 32f64.sqrt());
    }
}
