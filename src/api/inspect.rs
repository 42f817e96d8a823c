//! Looking inside trained models: `groklens cache` (every activation of a checkpoint on given tokens,
//! under TransformerLens's hook names) and `groklens ablate` (seed 003's mean-ablation sweep).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::Run;
use crate::error::{GrokError, Result};
use crate::interp::ablation::{mean_ablation_sweep, to_csv, AblationRow};
use crate::interp::{Interp, Names};
use crate::memory::Estimate;
use crate::model::{HookedModel, ModelConfig, Params};
use crate::run::check_output;
use crate::tasks::{Dataset, Split};
use crate::tensor_io::{self, HostTensor};

/// Reads a checkpoint with its `model_config.json` (a TransformerLens config, or a groklens one that
/// names its family).
pub fn load_model(
    checkpoint: &Path,
    model_config: &Path,
) -> Result<(ModelConfig, Box<dyn HookedModel>)> {
    let text = std::fs::read_to_string(model_config)
        .map_err(|e| GrokError::file(model_config, format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| GrokError::file(model_config, format!("is not valid JSON: {e}")))?;
    let cfg =
        ModelConfig::from_json(&json).map_err(|e| GrokError::file(model_config, e.to_string()))?;
    let params = Params::load(checkpoint, &cfg)?;
    let model = cfg.build(&params)?;
    Ok((cfg, model))
}

/// Reads the 2-D int64 `tokens` tensor of `file`: `(ids, rows)`, checked by [`token_rows`].
pub fn read_tokens(file: &Path) -> Result<(Vec<u32>, usize)> {
    let f = tensor_io::read(file)?;
    let t = f.require("tokens", file)?;
    token_rows(&t.shape, &t.to_i64("tokens")?)
        .map_err(|why| GrokError::file(file, format!("`tokens` {why}")))
}

/// Token ids of shape `shape` as `[batch, pos]` rows for a model: `(ids, rows)`, or what is wrong
/// (not 2-D, empty, an id that is no token).
pub fn token_rows(shape: &[usize], ids: &[i64]) -> std::result::Result<(Vec<u32>, usize), String> {
    if shape.len() != 2 {
        return Err(format!("must be 2-D [batch, pos], has shape {shape:?}"));
    }
    if shape.contains(&0) {
        return Err(format!(
            "has shape {shape:?}: give at least one row and one position"
        ));
    }
    let ids = ids
        .iter()
        .map(|&x| u32::try_from(x).map_err(|_| format!("holds id {x}, outside the vocabulary")))
        .collect::<std::result::Result<_, _>>()?;
    Ok((ids, shape[0]))
}

/// Writes `logits` and `cache.<hook>` (every hook point, or those in `names`) of the model in
/// `checkpoint` on the tokens of `tokens_file` to `out`; returns how many activations it wrote.
pub fn cache(
    checkpoint: &Path,
    model_config: &Path,
    tokens_file: &Path,
    out: &Path,
    names: &[String],
) -> Result<usize> {
    check_output(out, &[checkpoint, model_config, tokens_file], &[])?;
    let (cfg, model) = load_model(checkpoint, model_config)?;
    let (ids, rows) = read_tokens(tokens_file)?;
    let copies = if names.is_empty() { 2.0 } else { 1.0 }; // the cache, then its host copy
    Estimate::new()
        .floats(
            "activations",
            rows as f64 * cfg.activation_floats_per_row() * copies,
        )
        .ensure_fits(
            "caching these tokens",
            "cache fewer rows or fewer --names at a time",
        )?;
    let tokens = model
        .tokens_tensor(&ids, rows)
        .map_err(|e| GrokError::file(tokens_file, e.to_string()))?;
    let names = if names.is_empty() {
        Names::All
    } else {
        Names::List(names.to_vec())
    };
    let (logits, cache) = model.run_with_cache(&tokens, &names)?;
    let mut tensors = vec![(
        "logits".to_string(),
        HostTensor::f32(
            logits.dims().to_vec(),
            logits.flatten_all()?.to_vec1::<f32>()?,
        ),
    )];
    tensors.extend(cache.to_host_tensors("cache.")?);
    tensor_io::write_atomic(
        out,
        &tensors,
        BTreeMap::from([(
            "groklens".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
    )?;
    Ok(cache.len())
}

/// What an ablation sweep found and where it wrote it.
pub struct Ablation {
    /// The baseline, then one row per hook point.
    pub rows: Vec<AblationRow>,
    /// The CSV written.
    pub path: PathBuf,
    /// What the user should know (a rebuilt `model_config.json`).
    pub notes: Vec<String>,
}

impl Run {
    /// The rows a mean-ablation sweep averages activations over and scores: a finite task's train
    /// and test rows; for a stream, its evaluation set and a fresh batch of as many rows drawn from
    /// the training stream past the steps trained (rows the model has never seen, as seed 003 draws
    /// a new batch).
    pub fn ablation_rows(&self, split: Split) -> (Dataset, Dataset) {
        let cfg = self.config();
        let Some(seq) = cfg.task.sequence() else {
            let (train, test) = (
                cfg.task.split_rows(split.train),
                cfg.task.split_rows(split.test),
            );
            return (train.all(), test.all());
        };
        let steps = self.dir().final_epoch().unwrap_or(cfg.train.epochs);
        let fresh = seq.unseen_batch(seq.eval_rows, steps, cfg.train.batch_size);
        (seq.evaluation_set(), fresh)
    }

    /// Seed 003's mean-ablation sweep of the final model (or `checkpoint`): means over the train
    /// rows, loss on the test rows, one row per hook point; writes the CSV to `out` (default
    /// `ablation.csv` in the run).
    pub fn ablate(&self, checkpoint: Option<&Path>, out: Option<&Path>) -> Result<Ablation> {
        let (dir, cfg) = (self.dir(), self.config());
        let notes: Vec<String> = dir.sync_model_config(cfg)?.into_iter().collect();
        let split = self.split()?;
        let ckpt = checkpoint
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.final_path());
        if checkpoint.is_none() && !ckpt.exists() {
            return Err(GrokError::file(
                &ckpt,
                self.unfinished_hint(|path, _| {
                    format!(
                        "ablate one of its checkpoints with --checkpoint {}",
                        path.display()
                    )
                }),
            ));
        }
        let (means_rows, scored_rows) = self.ablation_rows(split);
        Estimate::new()
            .floats(
                "activations",
                (means_rows.len() + scored_rows.len()) as f64
                    * cfg.model.activation_floats_per_row()
                    * 2.0,
            )
            .ensure_fits("the ablation sweep", "run it on a machine with more memory")?;
        let params = dir.load_params(&ckpt, cfg)?;
        let model = cfg.model.build(&params)?;
        let train_tokens = model.tokens_tensor(&means_rows.tokens, means_rows.len())?;
        let test_tokens = model.tokens_tensor(&scored_rows.tokens, scored_rows.len())?;
        let labels =
            Tensor::from_slice(&scored_rows.labels, scored_rows.labels.len(), &Device::Cpu)?;
        let target = cfg.task.target();
        let loss = |logits: &Tensor| -> Result<f64> {
            Ok(
                crate::engine::loss::loss(target, logits, &test_tokens, &labels)?
                    .to_scalar::<f64>()?,
            )
        };
        let rows = mean_ablation_sweep(model.as_ref(), &train_tokens, &test_tokens, &loss)?;
        if let Some(bad) = rows.iter().find(|r| !r.loss.is_finite()) {
            return Err(GrokError::file(
                &ckpt,
                format!(
                    "the loss with {} ablated is {}: the model's outputs overflow (a diverged \
                     run?); ablate an earlier checkpoint with --checkpoint",
                    bad.hook, bad.loss
                ),
            ));
        }
        let path = out
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.root.join("ablation.csv"));
        let run_files = [
            dir.config_path(),
            dir.split_path(),
            dir.metrics_path(),
            dir.final_path(),
            ckpt.clone(),
        ];
        check_output(
            &path,
            &run_files.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
            &["ablation.csv"],
        )?;
        tensor_io::write_bytes_atomic(&path, to_csv(&rows).as_bytes())?;
        Ok(Ablation { rows, path, notes })
    }
}
