//! The transformer's parameter tree: every tensor of a `HookedTransformer`, as typed slots, declared
//! in TransformerLens's `state_dict` order. This is the one place its parameter names are written.

use crate::model::params::{Init, ParamList, ParamSpec, Scope, Slot};
use crate::model::transformer::config::{Normalization, PositionalEmbedding, TransformerConfig};

/// LayerNorm weight and bias (`ln1`, `ln2`, `ln_final`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormSlots {
    /// `w [d_model]`.
    pub w: Slot,
    /// `b [d_model]`.
    pub b: Slot,
}

/// One attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnSlots {
    /// `W_Q [n_heads, d_model, d_head]`.
    pub w_q: Slot,
    /// `W_K [n_heads, d_model, d_head]`.
    pub w_k: Slot,
    /// `W_V [n_heads, d_model, d_head]`.
    pub w_v: Slot,
    /// `W_O [n_heads, d_head, d_model]`.
    pub w_o: Slot,
    /// `b_Q [n_heads, d_head]`.
    pub b_q: Slot,
    /// `b_K [n_heads, d_head]`.
    pub b_k: Slot,
    /// `b_V [n_heads, d_head]`.
    pub b_v: Slot,
    /// `b_O [d_model]`.
    pub b_o: Slot,
}

impl AttnSlots {
    /// `(W, b)` of the query, key and value projections, in that order.
    pub fn qkv(&self) -> [(Slot, Slot); 3] {
        [
            (self.w_q, self.b_q),
            (self.w_k, self.b_k),
            (self.w_v, self.b_v),
        ]
    }
}

/// One MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpSlots {
    /// `W_in [d_model, d_mlp]`.
    pub w_in: Slot,
    /// `b_in [d_mlp]`.
    pub b_in: Slot,
    /// `W_out [d_mlp, d_model]`.
    pub w_out: Slot,
    /// `b_out [d_model]`.
    pub b_out: Slot,
}

/// One block: attention, optional MLP, optional norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSlots {
    /// Norm before attention.
    pub ln1: Option<NormSlots>,
    /// Norm before the MLP.
    pub ln2: Option<NormSlots>,
    /// Attention.
    pub attn: AttnSlots,
    /// MLP (`None` when attention-only).
    pub mlp: Option<MlpSlots>,
}

/// Every parameter of a transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerTree {
    /// `embed.W_E [d_vocab, d_model]`.
    pub embed: Slot,
    /// `pos_embed.W_pos [n_ctx, d_model]` (kept at zero without positional embeddings).
    pub pos: Slot,
    /// The blocks in order.
    pub blocks: Vec<BlockSlots>,
    /// Final norm.
    pub ln_final: Option<NormSlots>,
    /// `unembed.W_U [d_model, d_vocab_out]`.
    pub unembed_w: Slot,
    /// `unembed.b_U [d_vocab_out]`.
    pub unembed_b: Slot,
    /// Name, shape and init of every slot, in slot order.
    pub specs: Vec<ParamSpec>,
}

impl TransformerTree {
    /// The tree of `cfg`.
    pub fn new(cfg: &TransformerConfig) -> Self {
        let (dm, nh, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let weight = Init::Normal {
            std: cfg.init_std(),
        };
        let has_ln = cfg.normalization_type == Some(Normalization::LN);
        let mut list = ParamList::new();
        let mut root = list.root();
        let embed = root.pp("embed").leaf("W_E", vec![cfg.d_vocab, dm], weight);
        let pos_shape = vec![cfg.n_ctx, dm];
        let pos = match cfg.positional_embedding_type {
            PositionalEmbedding::Standard => root.pp("pos_embed").leaf("W_pos", pos_shape, weight),
            PositionalEmbedding::None => {
                root.pp("pos_embed").fixed("W_pos", pos_shape, Init::Zeros)
            }
        };
        let norm = |s: &mut Scope, name: &str| {
            has_ln.then(|| {
                let mut s = s.pp(name);
                NormSlots {
                    w: s.leaf("w", vec![dm], Init::Ones),
                    b: s.leaf("b", vec![dm], Init::Zeros),
                }
            })
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let mut b = root.pp("blocks");
            let mut b = b.pp(l);
            let ln1 = norm(&mut b, "ln1");
            let ln2 = if cfg.attn_only {
                None
            } else {
                norm(&mut b, "ln2")
            };
            let mut a = b.pp("attn");
            let head_in = || vec![nh, dm, dh];
            // TransformerLens's registration order (its `named_parameters()`, which its init draws
            // in): the query and output first, then key and value.
            let w_q = a.leaf("W_Q", head_in(), weight);
            let w_o = a.leaf("W_O", vec![nh, dh, dm], weight);
            let b_q = a.leaf("b_Q", vec![nh, dh], Init::Zeros);
            let b_o = a.leaf("b_O", vec![dm], Init::Zeros);
            let w_k = a.leaf("W_K", head_in(), weight);
            let w_v = a.leaf("W_V", head_in(), weight);
            let b_k = a.leaf("b_K", vec![nh, dh], Init::Zeros);
            let b_v = a.leaf("b_V", vec![nh, dh], Init::Zeros);
            let attn = AttnSlots {
                w_q,
                w_k,
                w_v,
                w_o,
                b_q,
                b_k,
                b_v,
                b_o,
            };
            let mlp = (!cfg.attn_only).then(|| {
                let mut m = b.pp("mlp");
                MlpSlots {
                    w_in: m.leaf("W_in", vec![dm, cfg.d_mlp], weight),
                    b_in: m.leaf("b_in", vec![cfg.d_mlp], Init::Zeros),
                    w_out: m.leaf("W_out", vec![cfg.d_mlp, dm], weight),
                    b_out: m.leaf("b_out", vec![dm], Init::Zeros),
                }
            });
            blocks.push(BlockSlots {
                ln1,
                ln2,
                attn,
                mlp,
            });
        }
        let ln_final = norm(&mut root, "ln_final");
        let mut u = root.pp("unembed");
        let unembed_w = u.leaf("W_U", vec![dm, cfg.d_vocab_out], weight);
        let unembed_b = u.leaf("b_U", vec![cfg.d_vocab_out], Init::Zeros);
        TransformerTree {
            embed,
            pos,
            blocks,
            ln_final,
            unembed_w,
            unembed_b,
            specs: list.into_specs(),
        }
    }

    /// The last block (every model has at least one).
    pub fn last_block(&self) -> &BlockSlots {
        self.blocks
            .last()
            .expect("n_layers >= 1 (checked by the config)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::config::ActFn;

    #[test]
    fn names_follow_transformer_lens_state_dict_order() {
        let cfg = TransformerConfig {
            n_layers: 1,
            d_vocab: 10,
            d_vocab_out: 7,
            n_ctx: 3,
            normalization_type: Some(Normalization::LN),
            act_fn: ActFn::Gelu,
            ..TransformerConfig::grokking_demo()
        };
        let tree = cfg.tree();
        let names: Vec<&str> = tree.specs.iter().map(|s| s.name.as_str()).collect();
        let block = [
            "ln1.w",
            "ln1.b",
            "ln2.w",
            "ln2.b",
            // TransformerLens 2.18's `named_parameters()` order (printed from the library).
            "attn.W_Q",
            "attn.W_O",
            "attn.b_Q",
            "attn.b_O",
            "attn.W_K",
            "attn.W_V",
            "attn.b_K",
            "attn.b_V",
            "mlp.W_in",
            "mlp.b_in",
            "mlp.W_out",
            "mlp.b_out",
        ]
        .map(|n| format!("blocks.0.{n}"));
        let mut want = vec!["embed.W_E".to_string(), "pos_embed.W_pos".to_string()];
        want.extend(block);
        want.extend(["ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U"].map(String::from));
        assert_eq!(names, want);
        // Every slot points at the spec of its own name.
        let b = &tree.blocks[0];
        assert_eq!(tree.specs[b.attn.w_o.index()].name, "blocks.0.attn.W_O");
        assert_eq!(tree.specs[b.mlp.unwrap().b_in.index()].shape, vec![512]);
        assert_eq!(tree.specs[tree.unembed_w.index()].shape, vec![128, 7]);
        assert_eq!(tree.specs[b.ln1.unwrap().w.index()].init, Init::Ones);
    }

    #[test]
    fn position_free_models_keep_a_fixed_zero_w_pos() {
        let cfg = TransformerConfig {
            d_vocab: 10,
            d_vocab_out: 7,
            n_ctx: 3,
            positional_embedding_type: PositionalEmbedding::None,
            attn_only: true,
            ..TransformerConfig::grokking_demo()
        };
        let tree = cfg.tree();
        let pos = &tree.specs[tree.pos.index()];
        assert!(pos.fixed && pos.init == Init::Zeros);
        assert!(tree.blocks[0].mlp.is_none() && tree.blocks[0].ln2.is_none());
        assert_eq!(tree.specs.iter().filter(|s| s.fixed).count(), 1);
    }
}
