//! The full run configuration — task, model and training — read from TOML, overridden with
//! `--set key=value`, resolved (vocabulary and context derived from the task) and validated.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{GrokError, Result};
use crate::memory::Estimate;
use crate::model::ModelConfig;
use crate::optim::interventions::GrokfastKind;
use crate::rng::RngKind;
use crate::tasks::{Target, TaskConfig};
pub mod train;

pub use train::{TrainConfig, EVAL_CHUNK_ROWS};

/// Everything that defines a run; `config.toml` in a run directory holds the resolved form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Which generator draws the split, the initial weights and the minibatch order: `"torch"`
    /// reproduces PyTorch's after `torch.manual_seed` (every notebook preset), `"chacha"` is groklens's
    /// older streams, and what a config without the key (a run made before torch seeding) means.
    #[serde(default)]
    pub rng: RngKind,
    /// The algorithmic task and split.
    pub task: TaskConfig,
    /// The model: `family = "transformer"` (default) or `"mlp"`, and that family's fields.
    pub model: ModelConfig,
    /// Optimizer, schedule, evaluation and checkpointing.
    pub train: TrainConfig,
}

/// Settings a run may change after it was created (`train --resume RUN --set KEY=VALUE`, or an edit
/// of `config.toml`): how long it trains, when it stops early and on how many threads. Every other key
/// is the run's identity: it changes the numbers, so it is fixed when the run is created.
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.epochs",
    "train.stop_at_test_loss",
    "train.stop_at_test_acc",
    "train.threads",
];

/// One setting that differs between two configs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The `section.key`.
    pub key: String,
    /// Its value before, as TOML.
    pub before: String,
    /// Its value after, as TOML.
    pub after: String,
}

impl Change {
    /// True when the key may change on resume ([`RESUMABLE_KEYS`]).
    pub fn is_resumable(&self) -> bool {
        RESUMABLE_KEYS.contains(&self.key.as_str())
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} → {}", self.key, self.before, self.after)
    }
}

impl RunConfig {
    /// Parses TOML text; `source` names the file in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| GrokError::file(source, format!("invalid config: {e}")))
    }

    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GrokError::file(path, format!("cannot read: {e}")))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }

    /// What training this run holds at its peak: the task's rows (tokens and labels of a small
    /// task, row indices of a compound one, the evaluation set of a stream), parameters with their
    /// gradients (one copy per batch chunk in the fast engines, one more when a step accumulates
    /// micro-batches) and AdamW moments, and the activations of the largest single pass kept for the
    /// backward pass.
    pub fn training_memory(&self) -> Estimate {
        let (train, test) = self.task.split_sizes(self.train.batch_size);
        let seq = self.task.seq_len() as f64;
        let rows = (train + test) as f64;
        let data = match &self.task {
            TaskConfig::Modular(_) => rows * (seq + 1.0) * 2.0,
            // u64 row indices, and the permutation they were cut from while the split is drawn.
            TaskConfig::Compound(_) => rows * 2.0 * 2.0,
            TaskConfig::PreviousToken(_) => rows * seq,
        };
        let grad_copies = crate::engine::fast::MAX_CHUNKS + usize::from(self.train.micro_batch > 0);
        // Grokfast keeps one filtered gradient (EMA) or a window of them plus their sum (MA).
        let filter_copies = match self.train.grokfast {
            GrokfastKind::None => 0,
            GrokfastKind::Ema => 1,
            GrokfastKind::Ma => self.train.grokfast_window.min(self.total_steps()) + 1,
        };
        Estimate::new()
            .floats("dataset", data)
            .floats(
                "parameters, gradients and AdamW moments",
                self.model.n_params() * (4 + grad_copies) as f64,
            )
            .floats(
                "activations",
                self.largest_pass_rows() as f64 * self.model.activation_floats_per_row() * 2.0,
            )
            .floats(
                "Grokfast filter state",
                self.model.n_params() * filter_copies as f64,
            )
    }

    /// Optimizer steps in the whole run: `train.epochs` × steps per epoch (an epoch of a stream is
    /// one step).
    pub fn total_steps(&self) -> usize {
        let (train, _) = self.task.split_sizes(self.train.batch_size);
        let per_epoch = if self.task.is_streamed() {
            1
        } else {
            train.div_ceil(self.train.batch_rows(train).max(1))
        };
        self.train.epochs.saturating_mul(per_epoch)
    }

    /// Rows in the largest single forward pass of training: a step's batch (or micro-batch) or an
    /// evaluation chunk.
    pub fn largest_pass_rows(&self) -> usize {
        let (train, test) = self.task.split_sizes(self.train.batch_size);
        let step = self.train.batch_rows(train);
        let train_pass = match self.train.micro_batch {
            0 => step,
            m => m.min(step),
        };
        train_pass.max(test.min(self.train.eval_pass_rows()))
    }

    /// Refuses a run that would not fit in memory ([`RunConfig::training_memory`]).
    pub fn ensure_trainable(&self) -> Result<()> {
        let task_keys = match &self.task {
            TaskConfig::PreviousToken(_) => "task.n_ctx, task.eval_rows",
            _ => "task.p",
        };
        self.training_memory().ensure_fits(
            "training this run",
            &format!(
                "make {task_keys}, the model's widths (model.d_model, d_mlp, n_heads × d_head, \
                 n_layers, n_ctx) or train.batch_size smaller"
            ),
        )
    }

    /// Every setting as `section.key` (or a top-level `key`) → value, in file order: the keys
    /// `--set` takes.
    pub fn flat(&self) -> Vec<(String, toml::Value)> {
        let doc = toml::Value::try_from(self).expect("config serialises");
        let mut out = Vec::new();
        for (name, value) in doc.as_table().into_iter().flatten() {
            match value.as_table() {
                Some(table) => {
                    for (key, value) in table {
                        out.push((format!("{name}.{key}"), value.clone()));
                    }
                }
                None => out.push((name.clone(), value.clone())),
            }
        }
        out
    }

    /// The run's identity: a digest (FNV-1a, 64 bits, hex) of every setting except
    /// [`RESUMABLE_KEYS`]. Two configs have the same identity exactly when they train the same numbers;
    /// each piece of a run directory (split, checkpoints, final model) carries it as `run_id`.
    pub fn run_id(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (key, value) in self.flat() {
            if RESUMABLE_KEYS.contains(&key.as_str()) {
                continue;
            }
            for b in format!("{key}={value}\n").bytes() {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    /// The settings that differ from `before`, as `key: old → new` (keys missing on one side show `-`).
    pub fn changes_since(&self, before: &RunConfig) -> Vec<Change> {
        let old: std::collections::BTreeMap<_, _> = before.flat().into_iter().collect();
        let new: std::collections::BTreeMap<_, _> = self.flat().into_iter().collect();
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        keys.into_iter()
            .filter(|k| old.get(*k) != new.get(*k))
            .map(|k| Change {
                key: k.clone(),
                before: old.get(k).map_or("-".into(), |v| v.to_string()),
                after: new.get(k).map_or("-".into(), |v| v.to_string()),
            })
            .collect()
    }

    /// Applies one `section.key=value` override; the value is read as TOML (a bare word is a string).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, raw) = assignment.split_once('=').ok_or_else(|| {
            GrokError::config(
                "--set",
                assignment,
                "expected key=value, e.g. train.lr=3e-3",
            )
        })?;
        let key = key.trim();
        let raw = raw.trim();
        let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
        {
            Some(v) => v,
            None if raw.parse::<i128>().is_ok() => {
                return Err(GrokError::config(
                    key,
                    raw,
                    format!("is out of range: integers must lie within ±{}", i64::MAX),
                ))
            }
            None => toml::Value::String(raw.to_string()),
        };
        if value.as_float().is_some_and(|f| !f.is_finite()) {
            return Err(GrokError::config(
                key,
                raw,
                "must be a finite number (NaN and infinity are never valid settings)",
            ));
        }
        let families = crate::model::config::FAMILY_NAMES;
        if key == "model.family"
            && value
                .as_str()
                .is_some_and(|f| families.contains(&f) && f != self.model.family_name())
        {
            return Err(GrokError::config(
                key,
                raw,
                format!(
                    "cannot switch a {} config to another family with --set: each family has its own \
                     model fields. Start from a preset of that family (`groklens presets` lists them, \
                     e.g. quick-mlp or quick-bitnet-binary) or a config file",
                    self.model.family_name()
                ),
            ));
        }
        let mut doc = toml::Value::try_from(&*self).expect("config serialises");
        let unknown = || {
            GrokError::config(
                key,
                raw,
                "unknown key: use rng, task.*, model.* or train.* (see `groklens presets --show NAME`)",
            )
        };
        let root = doc.as_table_mut().expect("a config is a table");
        match key.split_once('.') {
            None if root.get(key).is_some_and(|v| !v.is_table()) => {
                root.insert(key.to_string(), value);
            }
            None => return Err(unknown()),
            Some((section, field)) => {
                let table = root
                    .get_mut(section)
                    .and_then(|t| t.as_table_mut())
                    .ok_or_else(unknown)?;
                if field.contains('.') {
                    return Err(unknown());
                }
                table.insert(field.to_string(), value);
            }
        }
        *self = doc
            .try_into()
            .map_err(|e: toml::de::Error| GrokError::config(key, raw, e.message().to_string()))?;
        Ok(())
    }

    /// Fills the model's vocabulary and context from the task where they are 0, then validates all.
    pub fn resolve(mut self) -> Result<Self> {
        self.task.validate()?;
        let t = &self.task;
        self.model
            .fill_from_task(t.vocab(), t.outputs(), t.seq_len());
        self.train.resolve();
        self.validate()?;
        Ok(self)
    }

    /// Checks each part and that the task fits the model.
    pub fn validate(&self) -> Result<()> {
        self.task.validate()?;
        self.model.validate()?;
        self.train.validate()?;
        let need_vocab = self.task.vocab();
        if self.model.d_vocab() < need_vocab {
            return Err(GrokError::config(
                "model.d_vocab",
                self.model.d_vocab(),
                format!("must be at least {need_vocab}: the task uses tokens 0..{need_vocab} (set 0 to derive it)"),
            ));
        }
        let outputs = self.task.outputs();
        if self.model.d_vocab_out() < outputs {
            return Err(GrokError::config(
                "model.d_vocab_out",
                self.model.d_vocab_out(),
                format!(
                    "must be at least {outputs} so every target of the {} task can be predicted (set 0 to derive it)",
                    self.task.kind()
                ),
            ));
        }
        let seq = self.task.seq_len();
        if self.model.mlp().is_some() && self.model.n_ctx() != seq {
            return Err(GrokError::config(
                "model.n_ctx",
                self.model.n_ctx(),
                format!(
                    "must be {seq}, the task's row length: the MLP concatenates exactly n_ctx token embeddings (set 0 to derive it)"
                ),
            ));
        }
        if self.model.n_ctx() < seq {
            return Err(GrokError::config(
                "model.n_ctx",
                self.model.n_ctx(),
                format!("must be at least {seq}, the task's row length (set 0 to derive it)"),
            ));
        }
        if self.task.target() == Target::PreviousToken && self.model.transformer().is_none() {
            return Err(GrokError::config(
                "model.family",
                self.model.family_name(),
                "the previous-token task reads a prediction at every position: use family = \"transformer\"",
            ));
        }
        if self.train.grokfast == GrokfastKind::Ma
            && self.train.grokfast_window > self.total_steps()
        {
            return Err(GrokError::config(
                "train.grokfast_window",
                self.train.grokfast_window,
                format!(
                    "is longer than the run ({} optimizer steps): Grokfast-MA averages the last \
                     window gradients and would never fill its window; use at most {}",
                    self.total_steps(),
                    self.total_steps()
                ),
            ));
        }
        if self.task.is_streamed() && self.train.batch_size == 0 {
            return Err(GrokError::config(
                "train.batch_size",
                0,
                "must be > 0: a streamed task draws a fresh batch of this many rows every step",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets;

    #[test]
    fn set_overrides_and_round_trips() {
        let mut c = presets::preset("tl-grokking-demo").unwrap();
        c.set("train.lr=3e-3").unwrap();
        c.set("task.op=sub").unwrap();
        c.set("model.normalization_type=LN").unwrap();
        assert_eq!(c.train.lr, 3e-3);
        assert_eq!(c.task.modular().unwrap().op, crate::tasks::Operation::Sub);
        let back = RunConfig::from_toml(&c.to_toml(), "x").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn the_top_level_rng_key_is_set_checked_and_part_of_the_identity() {
        let demo = presets::preset("tl-grokking-demo").unwrap();
        let mut c = demo.clone();
        c.set("rng=chacha").unwrap();
        assert_eq!(c.rng, crate::rng::RngKind::Chacha);
        let e = c.set("rng=pytorch").unwrap_err().to_string();
        assert!(e.contains("rng") && e.contains("torch"), "{e}");
        let changes = c.changes_since(&demo);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to_string(), "rng \"torch\" → \"chacha\"");
        assert!(!changes[0].is_resumable());
        assert!(c.set("task=1").is_err(), "a section is not a value");
    }

    #[test]
    fn bad_overrides_name_the_key() {
        let mut c = presets::preset("quick").unwrap();
        let e = c.set("train.lrr=1").unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = c.set("nope.x=1").unwrap_err().to_string();
        assert!(e.contains("nope.x"), "{e}");
        let e = c.set("task.op=pow").unwrap_err().to_string();
        assert!(e.contains("task.op") && e.contains("add"), "{e}");
    }

    #[test]
    fn small_vocab_and_context_are_rejected() {
        let mut c = presets::preset("quick").unwrap();
        c.set("model.d_vocab=5").unwrap();
        let e = c.clone().resolve().unwrap_err().to_string();
        assert!(e.contains("model.d_vocab") && e.contains("at least"), "{e}");
        c.set("model.d_vocab=0").unwrap();
        c.set("model.n_ctx=2").unwrap();
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.contains("model.n_ctx"), "{e}");
    }

    #[test]
    fn configs_without_a_family_are_transformers_and_families_round_trip() {
        let demo = presets::preset("quick").unwrap();
        let old = demo.to_toml().replace("family = \"transformer\"\n", "");
        assert!(!old.contains("family"));
        assert_eq!(RunConfig::from_toml(&old, "old").unwrap(), demo);
        let mlp = presets::preset("seed-002").unwrap();
        let text = mlp.to_toml();
        assert!(text.contains("[model]\nfamily = \"mlp\"\n"), "{text}");
        assert_eq!(RunConfig::from_toml(&text, "x").unwrap(), mlp);
        let e = RunConfig::from_toml(&text.replace("\"mlp\"", "\"rnn\""), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("rnn"), "{e}");
    }
}
