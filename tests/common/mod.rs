//! Helpers shared by the integration tests: loading the TransformerLens fixtures, and running the
//! binary ([`bin`]).
#![allow(dead_code)]

pub mod bin;

use std::path::PathBuf;

use candle_core::Tensor;
use groklens::engine::Batch;
use groklens::model::{
    ActFn, HookedTransformer, ModelConfig, Params, PositionalEmbedding, TransformerConfig,
};
use groklens::tasks::Target;
use groklens::tensor_io::{self, TensorFile};

/// A fixture file from `tests/fixtures/`.
pub fn fixture(name: &str) -> TensorFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    tensor_io::read(&path).expect("fixture readable")
}

/// The model config recorded in a fixture's metadata.
pub fn fixture_config(f: &TensorFile) -> TransformerConfig {
    let v: serde_json::Value = serde_json::from_str(&f.metadata["config"]).unwrap();
    let mut cfg = TransformerConfig::from_transformer_lens_json(&v).unwrap();
    cfg.positional_embedding_type = PositionalEmbedding::Standard;
    assert!(matches!(cfg.act_fn, ActFn::Relu | ActFn::Gelu));
    cfg
}

/// The `param.*` tensors of a TransformerLens fixture as a parameter store.
pub fn fixture_params(f: &TensorFile, prefix: &str) -> Params {
    family_params(&ModelConfig::Transformer(fixture_config(f)), f, prefix)
}

/// The `{prefix}{name}` tensors of a fixture as the parameters of `cfg`, any family.
pub fn family_params(cfg: &ModelConfig, f: &TensorFile, prefix: &str) -> Params {
    Params::from_tensor_map(
        &cfg.param_specs(),
        |n| f.get(&format!("{prefix}{n}")),
        "fixture",
    )
    .unwrap()
}

/// A fixture tensor's values as f32.
pub fn want(f: &TensorFile, name: &str) -> Vec<f32> {
    f.get(name).unwrap().to_f32(name).unwrap()
}

/// A batch of rows of `seq` tokens scored at the last position.
pub fn last_position_batch<'a>(tokens: &'a [u32], labels: &'a [u32], seq: usize) -> Batch<'a> {
    Batch::new(tokens, labels, seq, Target::LastPosition)
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Tokens of a fixture as u32, with batch size.
pub fn fixture_tokens(f: &TensorFile) -> (Vec<u32>, usize) {
    let t = f.get("tokens").unwrap();
    (
        t.to_i64("tokens")
            .unwrap()
            .iter()
            .map(|&x| x as u32)
            .collect(),
        t.shape[0],
    )
}

/// Labels of a fixture as u32.
pub fn fixture_labels(f: &TensorFile) -> Vec<u32> {
    f.get("labels")
        .unwrap()
        .to_i64("labels")
        .unwrap()
        .iter()
        .map(|&x| x as u32)
        .collect()
}

/// A fixture, its model as a `HookedTransformer`, and its tokens as a tensor.
pub fn load_model(file: &str) -> (TensorFile, HookedTransformer, Tensor) {
    let f = fixture(file);
    let model = HookedTransformer::new(&fixture_config(&f), &fixture_params(&f, "param.")).unwrap();
    let (tokens, batch) = fixture_tokens(&f);
    let tokens = model.tokens_tensor(&tokens, batch).unwrap();
    (f, model, tokens)
}

/// A tensor's values, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest absolute difference between two equally shaped tensors (equal infinities count as 0).
pub fn tensor_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| if *x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f32::max)
}
