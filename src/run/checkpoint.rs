//! Checkpoints: TransformerLens-named parameters plus AdamW state (and a Grokfast filter's state, when
//! the run has one) beside them.
//!
//! The optimizer file is written first and the model file last, each atomically, so a checkpoint is
//! complete exactly when both files exist and parse; resume skips anything else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{GrokError, Result};
use crate::model::{ModelConfig, Params};
use crate::optim::interventions::{Grokfast, GrokfastKind};
use crate::optim::{AdamW, AdamWConfig};
use crate::run::RUN_ID_KEY;
use crate::tensor_io;

/// A model and optimizer snapshot after `epoch` completed epochs.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Completed epochs.
    pub epoch: usize,
    /// Parameters.
    pub params: Params,
    /// Optimizer state.
    pub optimizer: AdamW,
    /// The gradient filter's settings and state.
    pub grokfast: Grokfast,
    /// Training wall time so far, in seconds.
    pub elapsed_s: f64,
    /// The warm-started power iteration's vector for the output layer's spectral norm, so a resumed
    /// run's `output_spectral_norm` column matches an uninterrupted run's to the last digit.
    pub spectral_vector: Vec<f64>,
}

/// Model file for `epoch` in `dir`.
pub fn model_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch_{epoch:06}.safetensors"))
}

/// Optimizer file for `epoch` in `dir`.
pub fn optim_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch_{epoch:06}.optim.safetensors"))
}

/// The epoch of a checkpoint file name groklens writes (`epoch_NNNNNN.safetensors` or
/// `epoch_NNNNNN.optim.safetensors`), and whether it is the optimizer file.
pub fn parse_file_name(name: &str) -> Option<(usize, bool)> {
    let stem = name.strip_prefix("epoch_")?.strip_suffix(".safetensors")?;
    let (digits, optim) = match stem.strip_suffix(".optim") {
        Some(d) => (d, true),
        None => (stem, false),
    };
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(|e| (e, optim)))
        .flatten()
}

/// Epochs of every model file in `dir`, ascending (complete or not).
pub fn list_epochs(dir: &Path) -> Vec<usize> {
    let mut epochs: Vec<usize> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(
            |e| match parse_file_name(&e.file_name().into_string().ok()?)? {
                (epoch, false) => Some(epoch),
                _ => None,
            },
        )
        .collect();
    epochs.sort_unstable();
    epochs
}

impl Checkpoint {
    /// Writes the optimizer file, then the model file, both marked with the run's `run_id`.
    pub fn save(&self, dir: &Path, run_id: &str) -> Result<()> {
        let spectral: Vec<String> = self.spectral_vector.iter().map(f64::to_string).collect();
        let meta = BTreeMap::from([
            ("epoch".to_string(), self.epoch.to_string()),
            ("step".to_string(), self.optimizer.step.to_string()),
            ("elapsed_s".to_string(), self.elapsed_s.to_string()),
            ("spectral_vector".to_string(), spectral.join(",")),
            (RUN_ID_KEY.to_string(), run_id.to_string()),
        ]);
        let mut meta = meta;
        let mut tensors = self.optimizer.exp_avg.to_host_tensors("exp_avg.");
        tensors.extend(self.optimizer.exp_avg_sq.to_host_tensors("exp_avg_sq."));
        if let Some(mu) = &self.grokfast.ema {
            tensors.extend(mu.to_host_tensors("grokfast.ema."));
        }
        if let Some(sum) = &self.grokfast.sum {
            tensors.extend(sum.to_host_tensors("grokfast.ma_sum."));
        }
        for (i, g) in self.grokfast.history.iter().enumerate() {
            tensors.extend(g.to_host_tensors(&format!("grokfast.ma.{i}.")));
        }
        meta.insert(
            "grokfast_history".to_string(),
            self.grokfast.history.len().to_string(),
        );
        tensor_io::write_atomic(&optim_path(dir, self.epoch), &tensors, meta)?;
        let meta = BTreeMap::from([
            ("epoch".to_string(), self.epoch.to_string()),
            ("format".to_string(), "pt".to_string()),
            (RUN_ID_KEY.to_string(), run_id.to_string()),
        ]);
        self.params.save(&model_path(dir, self.epoch), meta)
    }

    /// Loads the checkpoint of `epoch` for a run with optimizer `adam` and gradient filter `filter`
    /// (its settings; the state comes from the file); any missing, truncated or mismatched file is an
    /// error naming it.
    pub fn load(
        dir: &Path,
        epoch: usize,
        cfg: &ModelConfig,
        adam: AdamWConfig,
        filter: &Grokfast,
    ) -> Result<Self> {
        let params = Params::load(&model_path(dir, epoch), cfg)?;
        let opath = optim_path(dir, epoch);
        let f = tensor_io::read(&opath)?;
        let specs = cfg.param_specs();
        let moments = |prefix: &str| {
            Params::from_tensor_map(
                &specs,
                |n| f.get(&format!("{prefix}{n}")),
                &opath.display().to_string(),
            )
        };
        let meta = |k: &str| -> Result<&String> {
            f.metadata.get(k).ok_or_else(|| {
                GrokError::file(
                    &opath,
                    format!("metadata lacks `{k}`; not a groklens optimizer file"),
                )
            })
        };
        let step = meta("step")?
            .parse()
            .map_err(|_| GrokError::file(&opath, "metadata `step` is not an integer"))?;
        let elapsed_s = meta("elapsed_s")?.parse().unwrap_or(0.0);
        let spectral_vector = match f.metadata.get("spectral_vector").map(String::as_str) {
            None | Some("") => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|x| x.parse::<f64>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| {
                    GrokError::file(
                        &opath,
                        "metadata `spectral_vector` is not a list of numbers",
                    )
                })?,
        };
        if meta("epoch")?.parse::<usize>().ok() != Some(epoch) {
            return Err(GrokError::file(
                &opath,
                format!("metadata epoch does not match the file name (epoch {epoch})"),
            ));
        }
        let optimizer = AdamW {
            cfg: adam,
            step,
            exp_avg: moments("exp_avg.")?,
            exp_avg_sq: moments("exp_avg_sq.")?,
        };
        let mut grokfast = Grokfast::new(filter.kind, filter.alpha, filter.window, filter.lambda);
        let has = |prefix: &str| {
            specs
                .first()
                .is_some_and(|s| f.get(&format!("{prefix}{}", s.name)).is_some())
        };
        let missing = |what: &str| {
            GrokError::file(
                &opath,
                format!(
                    "holds no {what} state, which this run's gradient filter needs to resume exactly \
                     (the checkpoint was written without it)"
                ),
            )
        };
        match filter.kind {
            GrokfastKind::None => {}
            GrokfastKind::Ema if step == 0 => {}
            GrokfastKind::Ema if has("grokfast.ema.") => {
                grokfast.ema = Some(moments("grokfast.ema.")?)
            }
            GrokfastKind::Ema => return Err(missing("Grokfast-EMA")),
            GrokfastKind::Ma => {
                let n: usize = f
                    .metadata
                    .get("grokfast_history")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| missing("Grokfast-MA"))?;
                if n != (step as usize).min(filter.window) {
                    return Err(missing("complete Grokfast-MA"));
                }
                for i in 0..n {
                    grokfast
                        .history
                        .push_back(moments(&format!("grokfast.ma.{i}."))?);
                }
                if n > 0 {
                    grokfast.sum = Some(moments("grokfast.ma_sum.")?);
                }
            }
        }
        Ok(Checkpoint {
            epoch,
            params,
            optimizer,
            grokfast,
            elapsed_s,
            spectral_vector,
        })
    }

    /// The newest complete checkpoint in `dir`, with the reasons newer ones were skipped. A
    /// checkpoint whose `run_id` is not `run_id` (copied in from another run) is an error naming it,
    /// not skipped: resuming past it would splice two histories.
    pub fn latest(
        dir: &Path,
        cfg: &ModelConfig,
        adam: AdamWConfig,
        filter: &Grokfast,
        run_id: &str,
    ) -> Result<(Option<Self>, Vec<String>)> {
        let mut skipped = Vec::new();
        for epoch in list_epochs(dir).into_iter().rev() {
            for path in [model_path(dir, epoch), optim_path(dir, epoch)] {
                if let Ok(meta) = tensor_io::read_metadata(&path) {
                    crate::run::check_run_id(&path, &meta, run_id)?;
                }
            }
            match Self::load(dir, epoch, cfg, adam, filter) {
                Ok(c) => return Ok((Some(c), skipped)),
                Err(e) => skipped.push(e.to_string()),
            }
        }
        Ok((None, skipped))
    }
}
