//! Seed 004's BitNet on the fast transformer passes: its weights as the forward uses them (every
//! BitLinear quantized and laid out for the kernels) and its gradients written back through the
//! straight-through estimator. The passes themselves are the transformer's ([`super::transformer`]).

use super::transformer::{transpose, BlockWeights, Weights};
use crate::model::bitnet::{quant, BitNetConfig, BitNetTree};
use crate::model::{Params, Slot};

impl Weights {
    /// A BitNet model's weights as its forward uses them: every BitLinear quantized
    /// ([`quant::effective`]) and transposed into kernel layout, no positional embedding, zero
    /// biases, the unembedding transposed, γ kept for the final norm.
    pub fn from_bitnet(cfg: &BitNetConfig, tree: &BitNetTree, params: &Params) -> Self {
        let (dm, f, hd) = (cfg.d_model, cfg.d_mlp, cfg.d_model);
        let used = |slot: Slot, rows: usize, cols: usize| {
            transpose(
                &quant::effective(&params[slot], cfg.quant, cfg.weight_scale),
                rows,
                cols,
            )
        };
        let blocks = tree
            .blocks
            .iter()
            .map(|b| {
                let mut w_qkv = vec![0.0; dm * 3 * hd];
                for (which, &slot) in b.qkv.iter().enumerate() {
                    for (r, row) in used(slot, hd, dm).chunks_exact(hd).enumerate() {
                        w_qkv[r * 3 * hd + which * hd..][..hd].copy_from_slice(row);
                    }
                }
                BlockWeights {
                    w_qkv,
                    b_qkv: vec![0.0; 3 * hd],
                    w_o: used(b.out, dm, hd),
                    b_o: vec![0.0; dm],
                    w_in: used(b.ff_in, f, dm),
                    b_in: vec![0.0; f],
                    w_out: used(b.ff_out, dm, f),
                    b_out: vec![0.0; dm],
                    ln: Default::default(),
                }
            })
            .collect();
        Weights {
            w_e: params[tree.embed].to_vec(),
            w_pos: vec![0.0; cfg.n_ctx * dm],
            blocks,
            w_u: transpose(&params[tree.unembed], cfg.d_vocab_out, dm),
            b_u: vec![0.0; cfg.d_vocab_out],
            gamma: params[tree.gamma].to_vec(),
            ln_final: Default::default(),
        }
    }

    /// Writes these gradients (of the weights as used) into `out` for a BitNet model: each
    /// BitLinear's straight through its quantizer and centring (g − mean(g), in PyTorch layout).
    pub fn write_bitnet(
        &self,
        cfg: &BitNetConfig,
        tree: &BitNetTree,
        out: &mut Params,
        trainable: &[bool],
    ) {
        let (dm, f, hd) = (cfg.d_model, cfg.d_mlp, cfg.d_model);
        let mut put = |slot: Slot, src: &[f32]| {
            if trainable[slot.index()] {
                out[slot].copy_from_slice(src);
            }
        };
        put(tree.embed, &self.w_e);
        put(tree.gamma, &self.gamma);
        put(tree.unembed, &transpose(&self.w_u, dm, cfg.d_vocab_out));
        for (slots, b) in tree.blocks.iter().zip(&self.blocks) {
            for (which, &slot) in slots.qkv.iter().enumerate() {
                let mut g = vec![0.0; dm * hd];
                for (r, row) in g.chunks_exact_mut(hd).enumerate() {
                    row.copy_from_slice(&b.w_qkv[r * 3 * hd + which * hd..][..hd]);
                }
                put(slot, &quant::centre(&transpose(&g, dm, hd)));
            }
            put(slots.out, &quant::centre(&transpose(&b.w_o, hd, dm)));
            put(slots.ff_in, &quant::centre(&transpose(&b.w_in, dm, f)));
            put(slots.ff_out, &quant::centre(&transpose(&b.w_out, f, dm)));
        }
    }
}
