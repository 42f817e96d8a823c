//! What the fast engine's passes cost: FLOPs (2 per multiply-add) of one forward pass, with the
//! shortcuts each pass takes. `groklens bench` divides these by the time to report effective
//! GFLOP/s; the reference's own count (every matmul at every position) is the family's
//! (`Family::reference_flops`).

use super::transformer::Dims;
use super::FastPlan;
use crate::tasks::Target;

/// Which shortcuts the fast transformer passes take.
#[derive(Debug, Clone, Copy)]
pub struct FastPasses {
    /// Block 0's Q/K/V looked up per token and position (no LayerNorm reads the embedding, or one
    /// reads the token's embedding alone).
    pub lookup: bool,
    /// Every position's output is needed (a loss at every position), so the last block runs
    /// everywhere.
    pub per_position: bool,
}

impl FastPlan<'_> {
    /// FLOPs of one forward pass over `batch` rows scored on `target`, as this plan computes it.
    pub fn forward_flops(&self, batch: usize, target: Target) -> f64 {
        let per_position = target == Target::PreviousToken;
        match self {
            FastPlan::Transformer(c) => transformer_forward_flops(
                [
                    c.n_layers,
                    c.n_ctx,
                    c.d_model,
                    c.n_heads,
                    c.d_head,
                    if c.attn_only { 0 } else { c.d_mlp },
                ],
                c.d_vocab_out,
                batch,
                FastPasses {
                    lookup: Dims::new(c).block0_lookup(),
                    per_position,
                },
            ),
            FastPlan::BitNet(c) => transformer_forward_flops(
                [
                    c.n_layers,
                    c.n_ctx,
                    c.d_model,
                    c.n_heads,
                    c.d_head(),
                    c.d_mlp,
                ],
                c.d_vocab_out,
                batch,
                FastPasses {
                    lookup: true,
                    per_position,
                },
            ),
            // The first hidden layer from per-position tables when the vocabulary is smaller than
            // the batch.
            FastPlan::Mlp(c) => {
                let full = c.forward_flops(batch);
                if c.n_hidden == 0 || c.d_vocab >= batch {
                    return full;
                }
                let tables = 2.0 * (c.n_ctx * c.d_vocab * c.d_embed * c.d_hidden) as f64;
                let first = 2.0 * (c.d_input() * c.d_hidden) as f64 * batch as f64;
                tables + full - first
            }
        }
    }
}

/// FLOPs of the fast transformer passes over `batch` rows for a model of
/// `[n_layers, n_ctx, d_model, n_heads, d_head, d_mlp]` (`d_mlp` 0 without MLPs) with `d_vocab_out`
/// outputs: block 0's Q/K/V come from per-token tables with `lookup`, and without `per_position`
/// the last block's output projection, MLP and unembedding run at the last position only.
pub fn transformer_forward_flops(
    shape: [usize; 6],
    d_vocab_out: usize,
    batch: usize,
    passes: FastPasses,
) -> f64 {
    let [_, n_ctx, d_model, n_heads, d_head, d_mlp] = shape.map(|x| x as f64);
    let (b, hd) = (batch as f64, n_heads * d_head);
    let out_rows = if passes.per_position { b * n_ctx } else { b };
    let mlp = 2.0 * d_model * d_mlp * 2.0;
    let mut f = 0.0;
    for l in 0..shape[0] {
        let last = l + 1 == shape[0];
        let q_rows = if last { out_rows } else { b * n_ctx };
        let qkv = if l == 0 && passes.lookup {
            0.0
        } else {
            2.0 * b * n_ctx * d_model * hd * 3.0
        };
        f += qkv
            + 2.0 * q_rows * n_ctx * d_head * n_heads * 2.0
            + q_rows * (2.0 * hd * d_model + mlp);
    }
    f + 2.0 * out_rows * d_model * d_vocab_out as f64
}

#[cfg(test)]
mod tests {
    use crate::engine::fast::plan;
    use crate::model::{BitNetConfig, ModelConfig, Quant, TransformerConfig};
    use crate::tasks::Target;

    /// BitNet runs the transformer passes, so a same-shaped TransformerLens model costs the same;
    /// the last-position shortcut does about a quarter of every position's work.
    #[test]
    fn the_bitnet_pass_costs_what_the_same_shaped_transformer_costs() {
        let tl = ModelConfig::Transformer(TransformerConfig {
            d_vocab: 114,
            d_vocab_out: 113,
            n_ctx: 3,
            ..TransformerConfig::grokking_demo()
        });
        let bitnet = ModelConfig::BitNet(BitNetConfig {
            d_vocab: 114,
            d_vocab_out: 113,
            n_ctx: 3,
            ..BitNetConfig::seed_004(Quant::Binary)
        });
        let (p_tl, p_bn) = (
            plan(&tl, Target::LastPosition).unwrap(),
            plan(&bitnet, Target::LastPosition).unwrap(),
        );
        for target in [Target::LastPosition, Target::PreviousToken] {
            assert_eq!(
                p_bn.forward_flops(3830, target),
                p_tl.forward_flops(3830, target)
            );
        }
        let ratio = bitnet.reference_flops(3830) / p_bn.forward_flops(3830, Target::LastPosition);
        assert!((3.0..4.5).contains(&ratio), "{ratio}");
    }
}
