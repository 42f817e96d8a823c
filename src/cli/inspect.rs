//! `groklens cache` and `groklens ablate`: looking inside trained models from the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use groklens::interp::ablation::{mean_ablation_sweep, to_csv};
use groklens::interp::{Interp, Names};
use groklens::memory::Estimate;
use groklens::model::{HookedModel, ModelConfig, Params};
use groklens::run::RunDir;
use groklens::tasks::{Dataset, Split};
use groklens::tensor_io::{self, HostTensor};
use groklens::RunConfig;

/// Reads a checkpoint with its `model_config.json` (a TransformerLens config, or a groklens one that
/// names its family).
fn load_model(
    checkpoint: &Path,
    model_config: &Path,
) -> Result<(ModelConfig, Box<dyn HookedModel>)> {
    let text = std::fs::read_to_string(model_config)
        .with_context(|| format!("cannot read {}", model_config.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", model_config.display()))?;
    let cfg =
        ModelConfig::from_json(&json).with_context(|| format!("in {}", model_config.display()))?;
    let params = Params::load(checkpoint, &cfg)?;
    let model = cfg.build(&params)?;
    Ok((cfg, model))
}

/// Writes `logits` and `cache.<hook>` for the int64 `tokens` tensor of `tokens_file`.
pub fn cache(
    checkpoint: &Path,
    model_config: &Path,
    tokens_file: &Path,
    out: &Path,
    names: &[String],
) -> Result<()> {
    groklens::run::check_output(out, &[checkpoint, model_config, tokens_file], &[])?;
    let (cfg, model) = load_model(checkpoint, model_config)?;
    let f = tensor_io::read(tokens_file)?;
    let t = f.require("tokens", tokens_file)?;
    if t.shape.len() != 2 {
        bail!(
            "{}: `tokens` must be 2-D [batch, pos], has shape {:?}",
            tokens_file.display(),
            t.shape
        );
    }
    if t.shape.contains(&0) {
        bail!(
            "{}: `tokens` has shape {:?}: give at least one row and one position",
            tokens_file.display(),
            t.shape
        );
    }
    let ids = t.to_i64("tokens")?;
    if let Some(bad) = ids.iter().find(|&&x| u32::try_from(x).is_err()) {
        bail!(
            "{}: token id {bad} is outside the vocabulary",
            tokens_file.display()
        );
    }
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let per_row = cfg.activation_floats_per_row();
    let copies = if names.is_empty() { 2.0 } else { 1.0 }; // the cache, then its host copy
    Estimate::new()
        .floats("activations", t.shape[0] as f64 * per_row * copies)
        .ensure_fits(
            "caching these tokens",
            "cache fewer rows or fewer --names at a time",
        )?;
    let tokens = model
        .tokens_tensor(&ids, t.shape[0])
        .with_context(|| tokens_file.display().to_string())?;
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
    println!(
        "wrote logits and {} activations to {}",
        cache.len(),
        out.display()
    );
    Ok(())
}

/// The rows a mean-ablation sweep averages activations over and scores: a finite task's train and
/// test rows; for a stream, its evaluation set and a fresh batch of as many rows drawn from the
/// training stream past the steps trained (rows the model has never seen, as seed 003 draws a new
/// batch).
fn ablation_rows(cfg: &RunConfig, dir: &RunDir, split: Split) -> Result<(Dataset, Dataset)> {
    let Some(seq) = cfg.task.sequence() else {
        let (train, test) = (
            cfg.task.split_rows(split.train),
            cfg.task.split_rows(split.test),
        );
        return Ok((train.all(), test.all()));
    };
    let steps = dir.final_epoch().unwrap_or(cfg.train.epochs);
    let fresh = seq.unseen_batch(seq.eval_rows, steps, cfg.train.batch_size);
    Ok((seq.evaluation_set(), fresh))
}

/// Seed 003's mean-ablation sweep on a run: means over the train rows, loss on the test rows.
pub fn ablate(run: &Path, checkpoint: Option<&Path>, out: Option<&Path>) -> Result<()> {
    let dir = RunDir::new(run);
    let cfg = dir.load_config()?;
    if let Some(note) = dir.sync_model_config(&cfg)? {
        eprintln!("note: {note}");
    }
    let split = dir.load_split(&cfg)?;
    let ckpt = checkpoint
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.final_path());
    if checkpoint.is_none() && !ckpt.exists() {
        let newest = groklens::run::checkpoint::list_epochs(&dir.checkpoint_dir())
            .last()
            .copied();
        bail!(
            "{}: not found: the run is unfinished; {}",
            ckpt.display(),
            match newest {
                Some(e) => format!(
                    "ablate one of its checkpoints with --checkpoint {}, or finish it with `groklens train --resume {}`",
                    groklens::run::checkpoint::model_path(&dir.checkpoint_dir(), e).display(),
                    dir.root.display()
                ),
                None => format!("train it first (`groklens train --resume {}`)", dir.root.display()),
            }
        );
    }
    let (means_rows, scored_rows) = ablation_rows(&cfg, &dir, split)?;
    Estimate::new()
        .floats(
            "activations",
            (means_rows.len() + scored_rows.len()) as f64
                * cfg.model.activation_floats_per_row()
                * 2.0,
        )
        .ensure_fits("the ablation sweep", "run it on a machine with more memory")?;
    let params = dir.load_params(&ckpt, &cfg)?;
    let model = cfg.model.build(&params)?;
    let train_tokens = model.tokens_tensor(&means_rows.tokens, means_rows.len())?;
    let test_tokens = model.tokens_tensor(&scored_rows.tokens, scored_rows.len())?;
    let labels = Tensor::from_slice(&scored_rows.labels, scored_rows.labels.len(), &Device::Cpu)?;
    let target = cfg.task.target();
    let loss = |logits: &Tensor| -> groklens::Result<f64> {
        Ok(
            groklens::engine::loss::loss(target, logits, &test_tokens, &labels)?
                .to_scalar::<f64>()?,
        )
    };
    let rows = mean_ablation_sweep(model.as_ref(), &train_tokens, &test_tokens, &loss)?;
    if let Some(bad) = rows.iter().find(|r| !r.loss.is_finite()) {
        bail!(
            "{}: the loss with {} ablated is {}: the model's outputs overflow (a diverged run?); \
             ablate an earlier checkpoint with --checkpoint",
            ckpt.display(),
            bad.hook,
            bad.loss
        );
    }
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.root.join("ablation.csv"));
    let run_files = [
        dir.config_path(),
        dir.split_path(),
        dir.metrics_path(),
        dir.final_path(),
        ckpt.clone(),
    ];
    groklens::run::check_output(
        &out,
        &run_files.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        &["ablation.csv"],
    )?;
    tensor_io::write_bytes_atomic(&out, to_csv(&rows).as_bytes())?;
    for r in &rows {
        println!("{:<36} {:>12.4e}", r.hook, r.loss);
    }
    println!("wrote {}", out.display());
    Ok(())
}
