//! The run directory: resolved config, Python-loadable model config, split, metrics and checkpoints.
//!
//! ```text
//! RUN_DIR/config.toml            full resolved config
//! RUN_DIR/identity.toml          the config as created: config.toml may differ only in RESUMABLE_KEYS
//! RUN_DIR/model_config.json      the model: HookedTransformerConfig(**json) keys, or the MLP with "family"
//! RUN_DIR/split.safetensors      int64 `train` and `test` row indices
//! RUN_DIR/metrics.csv            one row per evaluation
//! RUN_DIR/checkpoints/epoch_NNNNNN.safetensors        TransformerLens-named parameters
//! RUN_DIR/checkpoints/epoch_NNNNNN.optim.safetensors  AdamW moments and step
//! RUN_DIR/final.safetensors      parameters at the end of training
//! RUN_DIR/lock                   held (flock) by the one process training the run; holds its PID
//! ```
//! Every file is written atomically (temp file, fsync, rename).

pub mod checkpoint;
pub mod lock;
pub mod metrics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{RunConfig, RESUMABLE_KEYS};
use crate::error::{GrokError, Result};
use crate::tasks::Split;
use crate::tensor_io::{self, HostTensor};

pub use checkpoint::Checkpoint;
pub use lock::RunLock;
pub use metrics::{grokking_epoch, MetricsRow, GROKKED_ACCURACY};

/// Paths inside one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory itself.
    pub root: PathBuf,
}

impl RunDir {
    /// A handle on `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `metrics.csv`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    /// `checkpoints/`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// `final.safetensors`.
    pub fn final_path(&self) -> PathBuf {
        self.root.join("final.safetensors")
    }

    /// `identity.toml`: the config the run was created with.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.toml")
    }

    /// The epoch `final.safetensors` was written at (its `epoch` metadata), if it exists and says.
    pub fn final_epoch(&self) -> Option<usize> {
        let file = tensor_io::read(&self.final_path()).ok()?;
        file.metadata.get("epoch")?.parse().ok()
    }

    /// `split.safetensors`.
    pub fn split_path(&self) -> PathBuf {
        self.root.join("split.safetensors")
    }

    /// Creates the directory and writes config, model config and split for a new run. Refuses a
    /// directory that already holds a run, so a finished run is never overwritten by accident.
    pub fn create(&self, cfg: &RunConfig, split: &Split) -> Result<()> {
        if self.config_path().exists() {
            return Err(GrokError::file(
                &self.root,
                "already holds a run (config.toml exists); use `groklens train --resume` to continue it or pick another --out",
            ));
        }
        std::fs::create_dir_all(self.checkpoint_dir())
            .map_err(|e| GrokError::file(&self.root, format!("cannot create: {e}")))?;
        self.remove_temp_files();
        // config.toml is what makes a directory a run, so it is written last: a process killed
        // part-way leaves no config.toml, and the same `train --out` simply starts again.
        let json = serde_json::to_string_pretty(&cfg.model.to_json()).expect("json");
        tensor_io::write_bytes_atomic(&self.root.join("model_config.json"), json.as_bytes())?;
        let idx =
            |v: &[usize]| HostTensor::i64(vec![v.len()], v.iter().map(|&i| i as i64).collect());
        let tensors = vec![
            ("train".to_string(), idx(&split.train)),
            ("test".to_string(), idx(&split.test)),
        ];
        let meta = BTreeMap::from([("data_seed".to_string(), cfg.task.data_seed().to_string())]);
        tensor_io::write_atomic(&self.split_path(), &tensors, meta)?;
        metrics::write_all(&self.metrics_path(), &[])?;
        tensor_io::write_bytes_atomic(&self.identity_path(), cfg.to_toml().as_bytes())?;
        tensor_io::write_bytes_atomic(&self.config_path(), cfg.to_toml().as_bytes())
    }

    /// Removes `*.tmp` files that an interrupted atomic write left in the run or its checkpoints
    /// (on a full disk they would hold the space the next write needs). Call with the run's lock.
    pub fn remove_temp_files(&self) {
        for folder in [self.root.clone(), self.checkpoint_dir()] {
            for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// The config of an existing run.
    pub fn load_config(&self) -> Result<RunConfig> {
        let path = self.config_path();
        if !path.exists() {
            return Err(GrokError::file(
                &path,
                "not found: is this a groklens run directory?",
            ));
        }
        RunConfig::load(&path)?.resolve()
    }

    /// The config to resume the run with: `config.toml` with the `--set` overrides in `sets`, checked
    /// against the identity recorded at creation. Overrides and edits may touch only
    /// [`RESUMABLE_KEYS`]; anything else is refused naming the keys. Returns the config and a note for
    /// each accepted change. Call with the run's lock held: accepted overrides are written to
    /// `config.toml`.
    pub fn load_config_for_resume(&self, sets: &[String]) -> Result<(RunConfig, Vec<String>)> {
        let mut cfg = self.load_config()?;
        for assignment in sets {
            let key = assignment
                .split_once('=')
                .map_or(assignment.as_str(), |(k, _)| k.trim());
            if !RESUMABLE_KEYS.contains(&key) {
                return Err(GrokError::config(
                    key,
                    assignment,
                    format!(
                        "cannot change on resume: it is part of the run's identity (only {} may change); \
                         train a new run with --out elsewhere",
                        RESUMABLE_KEYS.join(", ")
                    ),
                ));
            }
            cfg.set(assignment)?;
        }
        let cfg = cfg.resolve()?;
        let mut notes = Vec::new();
        let path = self.identity_path();
        if !path.exists() {
            tensor_io::write_bytes_atomic(&path, cfg.to_toml().as_bytes())?;
            notes.push(format!(
                "{} recorded from config.toml (this run predates identity records)",
                path.display()
            ));
        }
        let identity = RunConfig::load(&path)?.resolve()?;
        let changes = cfg.changes_since(&identity);
        let fixed: Vec<String> = changes
            .iter()
            .filter(|c| !c.is_resumable())
            .map(|c| c.to_string())
            .collect();
        if !fixed.is_empty() {
            return Err(GrokError::file(
                self.config_path(),
                format!(
                    "changes the run's identity since it was created ({}): these settings change the \
                     numbers, so a run keeps them for life. Restore them (identity.toml has the \
                     originals), or train a new run with --out elsewhere; only {} may change on resume",
                    fixed.join(", "),
                    RESUMABLE_KEYS.join(", ")
                ),
            ));
        }
        notes.extend(
            changes
                .iter()
                .map(|c| format!("changed since creation: {c}")),
        );
        if !sets.is_empty() {
            tensor_io::write_bytes_atomic(&self.config_path(), cfg.to_toml().as_bytes())?;
        }
        Ok((cfg, notes))
    }

    /// The split saved with the run.
    pub fn load_split(&self) -> Result<Split> {
        let path = self.split_path();
        let f = tensor_io::read(&path)?;
        let get = |name: &str| -> Result<Vec<usize>> {
            Ok(f.require(name, &path)?
                .to_i64(name)?
                .into_iter()
                .map(|i| i as usize)
                .collect())
        };
        Ok(Split {
            train: get("train")?,
            test: get("test")?,
        })
    }
}

/// True when `path` exists as a directory containing a run.
pub fn is_run_dir(path: &Path) -> bool {
    path.join("config.toml").is_file()
}
