//! The MLP family (seed 002): one embedding per token, the `n_ctx` embeddings concatenated, then
//! `n_hidden` × (Linear → activation) and a Linear to the output vocabulary. Parameters carry the
//! seed's PyTorch `state_dict` names (`net.0.weight`, `net.2.weight`, …), so a checkpoint loads into
//! the seed's own `nn.Sequential` class.

pub mod family;
pub mod forward;

use serde::{Deserialize, Serialize};

use crate::error::{GrokError, Result};
use crate::model::hooks::{hook_tree, BlockHooks, HookTree};
use crate::model::params::{Init, ParamList, ParamSpec, Slot};
use crate::model::transformer::config::ActFn;
use crate::model::{check_at_most, check_positive, check_vocab};

pub use forward::MlpModel;

/// Architecture and init of the MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Width of each token's embedding (`nn.Embedding(d_vocab, d_embed)`).
    pub d_embed: usize,
    /// Width of every hidden layer.
    pub d_hidden: usize,
    /// Number of hidden layers (Linear → activation).
    #[serde(default = "one")]
    pub n_hidden: usize,
    /// Hidden activation.
    pub act_fn: ActFn,
    /// Input vocabulary size; 0 means "derive from the task".
    #[serde(default)]
    pub d_vocab: usize,
    /// Output vocabulary size; 0 means "the input vocabulary" (seed 002 predicts over all 99 tokens).
    #[serde(default)]
    pub d_vocab_out: usize,
    /// Tokens per input, all concatenated; 0 means "derive from the task".
    #[serde(default)]
    pub n_ctx: usize,
    /// Seed of the weight init.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> usize {
    1
}

/// One `nn.Linear`: `weight [out, in]`, `bias [out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearSlots {
    /// `weight [out, in]` (PyTorch layout: y = x·Wᵀ + b).
    pub weight: Slot,
    /// `bias [out]`.
    pub bias: Slot,
}

/// Every parameter of the MLP, in `nn.Sequential` order.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpTree {
    /// `net.0.weight [d_vocab, d_embed]`.
    pub embed: Slot,
    /// The hidden layers, `net.2`, `net.4`, … (a Linear and its activation take two indices).
    pub hidden: Vec<LinearSlots>,
    /// The output layer `net.{2 + 2·n_hidden}`.
    pub out: LinearSlots,
    /// Name, shape and init of every slot, in slot order.
    pub specs: Vec<ParamSpec>,
}

impl MlpConfig {
    /// Seed 002's model for a vocabulary and context derived from the task.
    pub fn seed_002() -> Self {
        MlpConfig {
            d_embed: 128,
            d_hidden: 128,
            n_hidden: 1,
            act_fn: ActFn::Relu,
            d_vocab: 0,
            d_vocab_out: 0,
            n_ctx: 0,
            seed: 0,
        }
    }

    /// Width of the concatenated input, `n_ctx · d_embed`.
    pub fn d_input(&self) -> usize {
        self.n_ctx * self.d_embed
    }

    /// The typed parameter tree. Init as seed 002: embedding N(0, 1); Linear weights
    /// `kaiming_normal_(nonlinearity="relu")` (std √2/√fan_in); biases 0.
    pub fn tree(&self) -> MlpTree {
        let kaiming = |fan_in: usize| Init::Normal {
            std: (2.0 / fan_in as f64).sqrt(),
        };
        let mut list = ParamList::new();
        let mut root = list.root();
        let mut net = root.pp("net");
        let embed = net.pp(0).leaf(
            "weight",
            vec![self.d_vocab, self.d_embed],
            Init::Normal { std: 1.0 },
        );
        let mut linear = |index: usize, d_in: usize, d_out: usize| {
            let mut l = net.pp(index);
            LinearSlots {
                weight: l.leaf("weight", vec![d_out, d_in], kaiming(d_in)),
                bias: l.leaf("bias", vec![d_out], Init::Zeros),
            }
        };
        let mut d_in = self.d_input();
        let mut hidden = Vec::with_capacity(self.n_hidden);
        for i in 0..self.n_hidden {
            hidden.push(linear(2 + 2 * i, d_in, self.d_hidden));
            d_in = self.d_hidden;
        }
        let out = linear(2 + 2 * self.n_hidden, d_in, self.d_vocab_out);
        MlpTree {
            embed,
            hidden,
            out,
            specs: list.into_specs(),
        }
    }

    /// Every hook point in forward order: `hook_embed` (the concatenated input, `[batch, features]`
    /// — every position's embedding side by side, so it has no position axis), then per hidden layer
    /// `blocks.{i}.mlp.hook_pre` and `hook_post` (`[batch, d_mlp]`), so TransformerLens shorthands
    /// such as `"post0"` or `("pre", -1)` address them.
    pub fn hooks(&self) -> HookTree {
        use crate::model::hooks::Axis::{Batch, DMlp, PosFeatures};
        hook_tree(|root| {
            let embed = root.hook("hook_embed", &[Batch, PosFeatures(self.d_embed)]);
            let blocks = (0..self.n_hidden)
                .map(|i| BlockHooks {
                    mlp: Some(HookTree::declare_mlp(
                        &mut root.pp("blocks").pp(i).pp("mlp"),
                        &[Batch, DMlp],
                    )),
                    ..BlockHooks::default()
                })
                .collect();
            (embed, None, blocks, None)
        })
    }

    /// Checks every field; `d_vocab`, `d_vocab_out` and `n_ctx` must already be resolved.
    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("model.d_embed", self.d_embed),
            ("model.d_hidden", self.d_hidden),
            ("model.n_hidden", self.n_hidden),
            ("model.d_vocab", self.d_vocab),
            ("model.d_vocab_out", self.d_vocab_out),
            ("model.n_ctx", self.n_ctx),
        ])?;
        check_at_most(&[
            ("model.d_embed", self.d_embed, 1 << 14),
            ("model.d_hidden", self.d_hidden, 1 << 16),
            ("model.n_hidden", self.n_hidden, 64),
            ("model.d_vocab", self.d_vocab, 1 << 16),
        ])
    }

    /// Checks that `tokens` form `[batch, n_ctx]` rows (the MLP reads exactly `n_ctx` tokens) with
    /// ids below `d_vocab`.
    pub fn check_tokens(&self, tokens: &[u32], batch: usize) -> Result<usize> {
        if batch == 0 || tokens.len() != batch * self.n_ctx {
            return Err(GrokError::tensor(
                "tokens",
                format!(
                    "{} ids do not form [batch={batch}, n_ctx={}]: the MLP reads exactly n_ctx tokens per row",
                    tokens.len(),
                    self.n_ctx
                ),
            ));
        }
        check_vocab(tokens, self.d_vocab)?;
        Ok(self.n_ctx)
    }

    /// Multiply-add FLOPs of one forward pass over `batch` rows.
    pub fn forward_flops(&self, batch: usize) -> f64 {
        let mut d_in = self.d_input();
        let mut f = 0.0;
        for _ in 0..self.n_hidden {
            f += 2.0 * (d_in * self.d_hidden) as f64;
            d_in = self.d_hidden;
        }
        (f + 2.0 * (d_in * self.d_vocab_out) as f64) * batch as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved() -> MlpConfig {
        MlpConfig {
            d_vocab: 99,
            d_vocab_out: 99,
            n_ctx: 4,
            ..MlpConfig::seed_002()
        }
    }

    #[test]
    fn names_are_the_seed_state_dict() {
        let tree = resolved().tree();
        let got: Vec<(&str, &[usize])> = tree
            .specs
            .iter()
            .map(|s| (s.name.as_str(), s.shape.as_slice()))
            .collect();
        let want: Vec<(&str, &[usize])> = vec![
            ("net.0.weight", &[99, 128]),
            ("net.2.weight", &[128, 512]),
            ("net.2.bias", &[128]),
            ("net.4.weight", &[99, 128]),
            ("net.4.bias", &[99]),
        ];
        assert_eq!(got, want);
        assert_eq!(tree.specs[tree.out.weight.index()].name, "net.4.weight");
        let deep = MlpConfig {
            n_hidden: 3,
            ..resolved()
        }
        .tree();
        assert_eq!(deep.specs[deep.out.bias.index()].name, "net.8.bias");
        assert_eq!(
            deep.specs[deep.hidden[2].weight.index()].shape,
            vec![128, 128]
        );
    }

    #[test]
    fn init_is_kaiming_normal_with_the_seed_gain() {
        let tree = resolved().tree();
        let std = |s: Slot| match tree.specs[s.index()].init {
            Init::Normal { std } => std,
            other => panic!("{other:?}"),
        };
        assert!((std(tree.hidden[0].weight) - (2.0f64 / 512.0).sqrt()).abs() < 1e-12);
        assert!((std(tree.out.weight) - (2.0f64 / 128.0).sqrt()).abs() < 1e-12);
        assert_eq!(std(tree.embed), 1.0);
        assert_eq!(tree.specs[tree.out.bias.index()].init, Init::Zeros);
    }

    #[test]
    fn bad_fields_and_tokens_are_named() {
        let e = MlpConfig {
            d_hidden: 0,
            ..resolved()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("model.d_hidden"), "{e}");
        let e = resolved()
            .check_tokens(&[1, 2, 3], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_ctx=4"), "{e}");
        let e = resolved()
            .check_tokens(&[1, 2, 3, 120], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("120"), "{e}");
    }
}
