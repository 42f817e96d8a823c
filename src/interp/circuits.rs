//! Per-head QK and OV circuits, and the full circuits through the embedding and unembedding, as
//! [`FactoredMatrix`]es (TransformerLens's `model.QK`, `model.OV`, and seed 003's
//! `W_E W_Q W_Kᵀ W_Eᵀ`, `W_E W_V W_O W_in`).
//!
//! Shapes follow TransformerLens: a circuit maps the residual stream on the left to the residual stream
//! on the right, so `QK[h] = W_Q[h] · W_K[h]ᵀ` is `d_model × d_model` (query rows, key columns) and
//! `OV[h] = W_V[h] · W_O[h]` is `d_model × d_model` (input rows, output columns).

use candle_core::Tensor;

use crate::error::{GrokError, Result};
use crate::interp::factored::FactoredMatrix;
use crate::linalg::Matrix;
use crate::model::transformer::AttnSlots;
use crate::model::{HookedTransformer, Slot};

impl HookedTransformer {
    /// `W_Q[h] · W_K[h]ᵀ` of block `layer`, head `head`: attention score (before scaling) between a
    /// query residual vector (rows) and a key residual vector (columns).
    pub fn qk_circuit(&self, layer: usize, head: usize) -> Result<FactoredMatrix> {
        let q = self.head_matrix(layer, head, |a| a.w_q)?;
        let k = self.head_matrix(layer, head, |a| a.w_k)?;
        FactoredMatrix::new(q, k.t())
    }

    /// `W_V[h] · W_O[h]` of block `layer`, head `head`: what the head writes (columns) for each
    /// attended-to residual vector (rows).
    pub fn ov_circuit(&self, layer: usize, head: usize) -> Result<FactoredMatrix> {
        let v = self.head_matrix(layer, head, |a| a.w_v)?;
        let o = self.head_matrix(layer, head, |a| a.w_o)?;
        FactoredMatrix::new(v, o)
    }

    /// `W_E · QK · W_Eᵀ`, `d_vocab × d_vocab`: query token (rows) against key token (columns).
    pub fn full_qk_circuit(&self, layer: usize, head: usize) -> Result<FactoredMatrix> {
        let w_e = self.matrix(self.tree.embed)?;
        self.qk_circuit(layer, head)?
            .rmatmul(&w_e)?
            .matmul(&w_e.t())
    }

    /// `W_E · OV · W_U`, `d_vocab × d_vocab_out`: the direct effect of attending to a token (rows) on
    /// each output logit (columns).
    pub fn full_ov_circuit(&self, layer: usize, head: usize) -> Result<FactoredMatrix> {
        let w_e = self.matrix(self.tree.embed)?;
        let w_u = self.matrix(self.tree.unembed_w)?;
        self.ov_circuit(layer, head)?.rmatmul(&w_e)?.matmul(&w_u)
    }

    /// `W_E · OV · W_in[mlp_layer]`, `d_vocab × d_mlp`: how attending to a token (rows) drives each
    /// neuron's pre-activation (columns) in block `mlp_layer` (seed 003's "OV" heatmap).
    pub fn ov_to_neurons(
        &self,
        layer: usize,
        head: usize,
        mlp_layer: usize,
    ) -> Result<FactoredMatrix> {
        if self.cfg.attn_only {
            return Err(GrokError::config(
                "attn_only",
                true,
                "this model has no MLP layers to read the OV circuit into",
            ));
        }
        self.check_layer(mlp_layer)?;
        let w_e = self.matrix(self.tree.embed)?;
        let mlp = self.tree.blocks[mlp_layer]
            .mlp
            .expect("checked above: the model has MLP layers");
        let w_in = self.matrix(mlp.w_in)?;
        self.ov_circuit(layer, head)?.rmatmul(&w_e)?.matmul(&w_in)
    }

    /// A 2-D weight as a host matrix.
    fn matrix(&self, slot: Slot) -> Result<Matrix> {
        to_matrix(self.w(slot), &self.tree.specs[slot.index()].name)
    }

    /// Head `head` of a `[n_heads, rows, cols]` attention weight of block `layer`.
    fn head_matrix(
        &self,
        layer: usize,
        head: usize,
        weight: fn(&AttnSlots) -> Slot,
    ) -> Result<Matrix> {
        self.check_layer(layer)?;
        if head >= self.cfg.n_heads {
            return Err(GrokError::config(
                "head",
                head,
                format!("must be below n_heads = {}", self.cfg.n_heads),
            ));
        }
        let slot = weight(&self.tree.blocks[layer].attn);
        to_matrix(
            &self.w(slot).get(head)?,
            &self.tree.specs[slot.index()].name,
        )
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.cfg.n_layers {
            return Err(GrokError::config(
                "layer",
                layer,
                format!("must be below n_layers = {}", self.cfg.n_layers),
            ));
        }
        Ok(())
    }
}

fn to_matrix(t: &Tensor, name: &str) -> Result<Matrix> {
    let (rows, cols) = t
        .dims2()
        .map_err(|_| GrokError::tensor(name, format!("expected a matrix, got {:?}", t.dims())))?;
    Matrix::new(rows, cols, t.flatten_all()?.to_vec1::<f32>()?)
}
