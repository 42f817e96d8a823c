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

    /// Refuses to start a new run in `root` unless it is missing, empty, or what an interrupted
    /// `create` left (its lock file and nothing but the files groklens names there, no checkpoint):
    /// files of the user's, or of another run, are never overwritten, deleted or read as this run's.
    /// Call before taking the lock (which creates the directory).
    pub fn check_new(&self) -> Result<()> {
        if self.config_path().exists() {
            return Err(GrokError::file(
                &self.root,
                "already holds a run (config.toml exists); use `groklens train --resume` to continue it or pick another --out",
            ));
        }
        if self.root.exists() && !self.root.is_dir() {
            return Err(GrokError::file(
                &self.root,
                "exists and is not a directory; pick another --out",
            ));
        }
        let entries: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let checkpoints_empty = std::fs::read_dir(self.checkpoint_dir())
            .map(|mut d| d.next().is_none())
            .unwrap_or(!self.checkpoint_dir().exists());
        let interrupted_create = entries.iter().any(|e| e == lock::LOCK_FILE)
            && checkpoints_empty
            && entries.iter().all(|e| {
                e == "checkpoints"
                    || e == lock::LOCK_FILE
                    || CREATED_FILES.iter().any(|f| is_own_file(e, f))
            });
        if interrupted_create {
            return Ok(());
        }
        let mut shown: Vec<&str> = entries.iter().map(String::as_str).collect();
        shown.sort_unstable();
        shown.truncate(5);
        Err(GrokError::file(
            &self.root,
            format!(
                "exists, is not empty ({}{}) and holds no groklens run: a new run is never written \
                 over other files; pick a new or empty --out directory",
                shown.join(", "),
                if entries.len() > 5 { ", …" } else { "" }
            ),
        ))
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
        tensor_io::write_bytes_atomic(
            &self.model_config_path(),
            model_config_json(cfg).as_bytes(),
        )?;
        let idx =
            |v: &[usize]| HostTensor::i64(vec![v.len()], v.iter().map(|&i| i as i64).collect());
        let tensors = vec![
            ("train".to_string(), idx(&split.train)),
            ("test".to_string(), idx(&split.test)),
        ];
        let meta = BTreeMap::from([
            ("data_seed".to_string(), cfg.task.data_seed().to_string()),
            (RUN_ID_KEY.to_string(), cfg.run_id()),
        ]);
        tensor_io::write_atomic(&self.split_path(), &tensors, meta)?;
        metrics::write_all(&self.metrics_path(), &[])?;
        tensor_io::write_bytes_atomic(&self.identity_path(), cfg.to_toml().as_bytes())?;
        tensor_io::write_bytes_atomic(&self.config_path(), cfg.to_toml().as_bytes())
    }

    /// Removes the temp files that an interrupted atomic write of groklens's own files left in the run
    /// or its checkpoints (on a full disk they would hold the space the next write needs); any other
    /// `*.tmp` is not groklens's and stays. Call with the run's lock.
    pub fn remove_temp_files(&self) {
        let own_temp = |name: &str, own: &dyn Fn(&str) -> bool| {
            tensor_io::temp_file_target(name).is_some_and(own)
        };
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if own_temp(&name, &|stem| RUN_FILES.contains(&stem)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for entry in std::fs::read_dir(self.checkpoint_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if own_temp(&name, &|stem| checkpoint::parse_file_name(stem).is_some()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// `model_config.json`.
    pub fn model_config_path(&self) -> PathBuf {
        self.root.join("model_config.json")
    }

    /// Rewrites `model_config.json` from the run's config when it is missing or differs (it is
    /// derived, never a source: an edited copy would export a wrong model); says so in the note.
    pub fn sync_model_config(&self, cfg: &RunConfig) -> Result<Option<String>> {
        let path = self.model_config_path();
        let want = model_config_json(cfg);
        let note = match std::fs::read_to_string(&path) {
            Ok(have) if have == want => return Ok(None),
            Ok(_) => "differed from the run's config.toml (edited by hand?)",
            Err(_) => "was missing",
        };
        tensor_io::write_bytes_atomic(&path, want.as_bytes())?;
        Ok(Some(format!(
            "{}: {note}; rewritten from config.toml",
            path.display()
        )))
    }

    /// Loads parameters from `path` (a checkpoint or the final model of this run), refusing a file
    /// whose `run_id` metadata names another run than `cfg`'s (one without predates run identities
    /// and is accepted).
    pub fn load_params(&self, path: &Path, cfg: &RunConfig) -> Result<crate::model::Params> {
        check_run_id(path, &tensor_io::read_metadata(path)?, &cfg.run_id())?;
        crate::model::Params::load(path, &cfg.model)
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
        let known: Vec<String> = cfg.flat().into_iter().map(|(k, _)| k).collect();
        for assignment in sets {
            let key = assignment
                .split_once('=')
                .map_or(assignment.as_str(), |(k, _)| k.trim());
            if !known.iter().any(|k| k == key) {
                return Err(GrokError::config(
                    key,
                    assignment,
                    format!(
                        "unknown key; on resume only {} may change",
                        RESUMABLE_KEYS.join(", ")
                    ),
                ));
            }
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
            notes.push(format!(
                "{} recorded from config.toml (this run predates identity records)",
                path.display()
            ));
            return Ok((cfg, notes));
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
        Ok((cfg, notes))
    }

    /// Writes the config a resume accepted ([`RunDir::load_config_for_resume`]) to `config.toml`
    /// (and `identity.toml` for a run that predates it) once every check has passed: a refused
    /// resume changes nothing.
    pub fn commit_resume_config(&self, cfg: &RunConfig) -> Result<()> {
        if !self.identity_path().exists() {
            tensor_io::write_bytes_atomic(&self.identity_path(), cfg.to_toml().as_bytes())?;
        }
        let text = cfg.to_toml();
        if std::fs::read_to_string(self.config_path()).ok().as_deref() != Some(text.as_str()) {
            tensor_io::write_bytes_atomic(&self.config_path(), text.as_bytes())?;
        }
        Ok(())
    }

    /// The split saved with the run whose config is `cfg` (refused when it belongs to another run).
    pub fn load_split(&self, cfg: &RunConfig) -> Result<Split> {
        let path = self.split_path();
        let f = tensor_io::read(&path)?;
        check_run_id(&path, &f.metadata, &cfg.run_id())?;
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

/// The metadata key of a run's identity ([`RunConfig::run_id`]) in its safetensors files.
pub const RUN_ID_KEY: &str = "run_id";

/// Refuses the file at `path` when its safetensors metadata `meta` carries a `run_id` other than
/// `expected`; a file without one predates run identities and is accepted. The one identity check
/// that splits, checkpoints and final models share.
pub(crate) fn check_run_id(
    path: &Path,
    meta: &std::collections::HashMap<String, String>,
    expected: &str,
) -> Result<()> {
    match meta.get(RUN_ID_KEY) {
        Some(id) if id != expected => Err(GrokError::file(
            path,
            format!(
                "belongs to another run (run_id {id}; this run's is {expected}): it was copied in \
                 from elsewhere, or config.toml and identity.toml were both edited. Remove it (a \
                 checkpoint with its companion file), or put it back in the run it came from"
            ),
        )),
        _ => Ok(()),
    }
}

/// Files a run directory's creation writes (besides the lock and `checkpoints/`).
const CREATED_FILES: &[&str] = &[
    "config.toml",
    "identity.toml",
    "model_config.json",
    "split.safetensors",
    "metrics.csv",
];

/// Every file groklens writes at the top of a run directory.
pub const RUN_FILES: &[&str] = &[
    "config.toml",
    "identity.toml",
    "model_config.json",
    "split.safetensors",
    "metrics.csv",
    "final.safetensors",
    "report.html",
    "ablation.csv",
];

/// True for `own` itself and for the temp file an atomic write of it leaves.
fn is_own_file(name: &str, own: &str) -> bool {
    name == own || tensor_io::temp_file_target(name) == Some(own)
}

/// `model_config.json`'s text for `cfg`.
fn model_config_json(cfg: &RunConfig) -> String {
    serde_json::to_string_pretty(&cfg.model.to_json()).expect("json")
}

/// Refuses an output path that is one of the command's `inputs`, or a file inside a run directory
/// (or its `checkpoints/`) other than the ones named in `own` that this command writes there: the one
/// rule every command that writes a file follows, so no command replaces a run's weights, metrics or
/// config, or a file of the user's it was given to read.
pub fn check_output(out: &Path, inputs: &[&Path], own: &[&str]) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(o) = canon(out) {
        if let Some(input) = inputs.iter().find(|i| canon(i).as_ref() == Some(&o)) {
            return Err(GrokError::file(
                out,
                format!(
                    "is an input of this command ({}); give --out another file",
                    input.display()
                ),
            ));
        }
    }
    if out.is_dir() {
        return Err(GrokError::file(
            out,
            "is a directory; give a file path to write",
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let in_checkpoints = parent.file_name().is_some_and(|n| n == "checkpoints")
        && parent.parent().is_some_and(is_run_dir);
    if in_checkpoints || (is_run_dir(&parent) && !own.contains(&name.as_str())) {
        return Err(GrokError::file(
            out,
            format!(
                "is inside the run directory {}, whose files groklens manages; give --out a path outside the run{}",
                if in_checkpoints { parent.parent().unwrap_or(&parent).display() } else { parent.display() },
                if own.is_empty() { String::new() } else { format!(" (or as {} there)", own.join(" or ")) }
            ),
        ));
    }
    Ok(())
}

/// True when `path` exists as a directory containing a run.
pub fn is_run_dir(path: &Path) -> bool {
    path.join("config.toml").is_file()
}
