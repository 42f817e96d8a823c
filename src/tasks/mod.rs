//! Algorithmic tasks: what a run learns, written as token rows with their targets.
//!
//! - [`modular`]: a binary operation mod p over all pairs (the grokking tasks of seeds 001, 002, 004);
//! - [`compound`]: `( a * b + c ) ^ d =` mod p over all p⁴ inputs, rows written from their index
//!   (seed 000);
//! - [`sequence`]: random token sequences, a fresh batch every step, each position predicting the
//!   previous token (seed 003).
//!
//! Finite tasks (modular, compound) are split once into train and test row indices; [`SplitRows`]
//! writes a split's rows on demand so a p⁴-row task never holds all its tokens at once.

pub mod compound;
pub mod modular;
pub mod sequence;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Result;
use crate::rng::{RngKind, TorchGenerator};

pub use compound::CompoundTask;
pub use modular::{is_prime, Layout, ModularTask, Operation};
pub use sequence::{SequenceStream, SequenceTask};

/// Which predictions a row's loss reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The label of the row, read at the last position (the grokking tasks).
    LastPosition,
    /// Every position i ≥ 1 predicts token i − 1 (seed 003): `logits[:, 1:]` against `tokens[:, :-1]`.
    PreviousToken,
}

impl Target {
    /// Predictions scored in `rows` rows of `seq_len` tokens.
    pub fn predictions(self, rows: usize, seq_len: usize) -> usize {
        match self {
            Target::LastPosition => rows,
            Target::PreviousToken => rows * seq_len.saturating_sub(1),
        }
    }
}

/// What a run learns: `kind = "modular"` (the default, so configs written before kinds existed
/// still load), `"compound"` or `"previous_token"`, and that kind's fields.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskConfig {
    /// A binary operation mod p.
    Modular(ModularTask),
    /// `( a * b + c ) ^ d` mod p.
    Compound(CompoundTask),
    /// Random sequences, predict the previous token.
    PreviousToken(SequenceTask),
}

/// The task kinds as `task.kind` writes them.
const KINDS: &str = "expected \"modular\", \"compound\" or \"previous_token\"";

impl TaskConfig {
    /// The TransformerLens demo task: a + b mod 113, 30 % train, data seed 598.
    pub fn grokking_demo() -> Self {
        TaskConfig::Modular(ModularTask::grokking_demo())
    }

    /// The kind's name as `task.kind` writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskConfig::Modular(_) => "modular",
            TaskConfig::Compound(_) => "compound",
            TaskConfig::PreviousToken(_) => "previous_token",
        }
    }

    /// The modular task, if this is one (the two-operand analyses need it).
    pub fn modular(&self) -> Option<&ModularTask> {
        match self {
            TaskConfig::Modular(t) => Some(t),
            _ => None,
        }
    }

    /// The compound task, if this is one.
    pub fn compound(&self) -> Option<&CompoundTask> {
        match self {
            TaskConfig::Compound(t) => Some(t),
            _ => None,
        }
    }

    /// The sequence task, if this is one.
    pub fn sequence(&self) -> Option<&SequenceTask> {
        match self {
            TaskConfig::PreviousToken(t) => Some(t),
            _ => None,
        }
    }

    /// Checks the kind's fields, naming them.
    pub fn validate(&self) -> Result<()> {
        match self {
            TaskConfig::Modular(t) => t.validate(),
            TaskConfig::Compound(t) => t.validate(),
            TaskConfig::PreviousToken(t) => t.validate(),
        }
    }

    /// What the loss reads.
    pub fn target(&self) -> Target {
        match self {
            TaskConfig::Modular(_) | TaskConfig::Compound(_) => Target::LastPosition,
            TaskConfig::PreviousToken(_) => Target::PreviousToken,
        }
    }

    /// Distinct input tokens the task writes (the model's `d_vocab` must be at least this).
    pub fn vocab(&self) -> usize {
        match self {
            TaskConfig::Modular(t) => t.layout.vocab(t.p),
            TaskConfig::Compound(t) => t.vocab(),
            TaskConfig::PreviousToken(t) => t.d_vocab,
        }
    }

    /// Distinct targets (the model's `d_vocab_out` must be at least this).
    pub fn outputs(&self) -> usize {
        match self {
            TaskConfig::Modular(ModularTask { p, .. })
            | TaskConfig::Compound(CompoundTask { p, .. }) => *p,
            TaskConfig::PreviousToken(t) => t.d_vocab,
        }
    }

    /// Tokens per row.
    pub fn seq_len(&self) -> usize {
        match self {
            TaskConfig::Modular(t) => t.layout.len(),
            TaskConfig::Compound(_) => CompoundTask::LEN,
            TaskConfig::PreviousToken(t) => t.n_ctx,
        }
    }

    /// Seed of the split shuffle (finite tasks) or of the training stream (sequences).
    pub fn data_seed(&self) -> u64 {
        match self {
            TaskConfig::Modular(t) => t.data_seed,
            TaskConfig::Compound(t) => t.data_seed,
            TaskConfig::PreviousToken(t) => t.data_seed,
        }
    }

    /// Train and test rows: the split's sizes, or one step's batch of `batch_size` rows and the
    /// fixed evaluation set for a stream.
    pub fn split_sizes(&self, batch_size: usize) -> (usize, usize) {
        match self {
            TaskConfig::Modular(ModularTask {
                split, train_frac, ..
            })
            | TaskConfig::Compound(CompoundTask {
                split, train_frac, ..
            }) => {
                let n = self.rows();
                let train = split.train_rows(n, *train_frac);
                (train, n - train)
            }
            TaskConfig::PreviousToken(t) => (batch_size, t.eval_rows),
        }
    }

    /// Rows of a finite task (0 for a stream).
    pub fn rows(&self) -> usize {
        match self {
            TaskConfig::Modular(t) => t.rows(),
            TaskConfig::Compound(t) => t.rows(),
            TaskConfig::PreviousToken(_) => 0,
        }
    }

    /// True when every step draws fresh rows (no epochs; `train.epochs` counts steps).
    pub fn is_streamed(&self) -> bool {
        matches!(self, TaskConfig::PreviousToken(_))
    }

    /// What one unit of `train.epochs` is called: "epoch", or "step" for a stream.
    pub fn unit(&self) -> &'static str {
        if self.is_streamed() {
            "step"
        } else {
            "epoch"
        }
    }

    /// One line for summaries and pages.
    pub fn describe(&self) -> String {
        match self {
            TaskConfig::Modular(t) => format!(
                "{:?} mod {} ({:?}), train fraction {}",
                t.op, t.p, t.layout, t.train_frac
            ),
            TaskConfig::Compound(t) => format!(
                "( a * b + c ) ^ d mod {} over all {} inputs, train fraction {}",
                t.p,
                t.rows(),
                t.train_frac
            ),
            TaskConfig::PreviousToken(t) => format!(
                "previous token of random sequences: {} tokens from a vocabulary of {}{}, a fresh batch every step",
                t.n_ctx,
                t.d_vocab,
                if t.bos { " with BOS 0 first" } else { "" }
            ),
        }
    }

    /// The train/test split of a finite task drawn with `rng`; empty for a stream.
    pub fn split(&self, rng: RngKind) -> Split {
        match self {
            TaskConfig::Modular(t) => t.split(rng),
            TaskConfig::Compound(t) => {
                shuffled_split(t.rows(), t.train_frac, t.split, t.data_seed, rng)
            }
            TaskConfig::PreviousToken(_) => Split {
                train: Vec::new(),
                test: Vec::new(),
            },
        }
    }

    /// The rows of `indices` (one part of [`TaskConfig::split`]), written on demand; for a stream,
    /// the fixed evaluation set (indices are ignored).
    pub fn split_rows(&self, indices: Vec<usize>) -> SplitRows {
        let source = match self {
            TaskConfig::Modular(t) => RowSource::Table(t.dataset()),
            TaskConfig::Compound(t) => RowSource::Compound(t.clone()),
            TaskConfig::PreviousToken(t) => {
                let eval = t.evaluation_set();
                return SplitRows {
                    indices: (0..eval.len()).collect(),
                    source: RowSource::Table(eval),
                };
            }
        };
        SplitRows { source, indices }
    }
}

/// All `n` row indices shuffled with `seed` (with `rng = "torch"`, `torch.randperm(n)` after
/// `torch.manual_seed(seed)`) and cut by `rule` at `frac`.
pub fn shuffled_split(n: usize, frac: f64, rule: SplitRule, seed: u64, rng: RngKind) -> Split {
    let idx = match rng {
        RngKind::Torch => TorchGenerator::new(seed).randperm(n),
        RngKind::Chacha => {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            idx
        }
    };
    let cut = rule.train_rows(n, frac);
    let mut train = idx;
    let test = train.split_off(cut);
    Split { train, test }
}

/// How the shuffled rows are cut into train and test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SplitRule {
    /// `indices[:int(n * frac)]` train, the rest test.
    #[default]
    FirstFraction,
    /// `torch.utils.data.random_split(data, [frac, 1 - frac])`: each part gets ⌊n·fraction⌋ rows and
    /// the rows left over go one each to the parts in order.
    RandomSplit,
}

impl SplitRule {
    /// Train rows out of `n` for the train fraction `frac`.
    pub fn train_rows(self, n: usize, frac: f64) -> usize {
        let first = (frac * n as f64).floor() as usize;
        match self {
            SplitRule::FirstFraction => first,
            SplitRule::RandomSplit => {
                let second = ((1.0 - frac) * n as f64).floor() as usize;
                // Leftover rows are dealt round-robin starting with the train part.
                first + usize::from(n > first + second)
            }
        }
    }
}

/// `base^exp mod p` by repeated squaring (p < 2³²).
pub(crate) fn pow_mod(mut base: u64, mut exp: u64, p: u64) -> u64 {
    let mut acc = 1 % p;
    base %= p;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = acc * base % p;
        }
        base = base * base % p;
        exp >>= 1;
    }
    acc
}

/// Token rows and their labels (one per row, read at the last position; empty for tasks whose
/// targets are the tokens themselves).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    /// Tokens per row.
    pub seq_len: usize,
    /// Row-major tokens `[rows, seq_len]`.
    pub tokens: Vec<u32>,
    /// One label per row, or none.
    pub labels: Vec<u32>,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.tokens.len() / self.seq_len.max(1)
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Writes rows `range` into `out`, replacing its contents (and reusing its buffers).
    pub fn copy_rows(&self, range: std::ops::Range<usize>, out: &mut Dataset) {
        let seq = self.seq_len;
        out.seq_len = seq;
        out.tokens.clear();
        out.tokens
            .extend_from_slice(&self.tokens[range.start * seq..range.end * seq]);
        out.labels.clear();
        if !self.labels.is_empty() {
            out.labels.extend_from_slice(&self.labels[range]);
        }
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut tokens = Vec::with_capacity(indices.len() * self.seq_len);
        for &i in indices {
            tokens.extend_from_slice(&self.tokens[i * self.seq_len..(i + 1) * self.seq_len]);
        }
        Dataset {
            seq_len: self.seq_len,
            tokens,
            labels: if self.labels.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| self.labels[i]).collect()
            },
        }
    }
}

/// Train and test row indices into the full dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Train rows.
    pub train: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

/// Where a split's rows come from.
#[derive(Debug, Clone)]
enum RowSource {
    /// Every row of the task, materialised (small tasks, and a stream's evaluation set).
    Table(Dataset),
    /// Rows written from their index.
    Compound(CompoundTask),
}

/// One part of a split: row indices into the task, written as tokens and labels on demand.
#[derive(Debug, Clone)]
pub struct SplitRows {
    source: RowSource,
    indices: Vec<usize>,
}

impl SplitRows {
    /// A part without rows (a placeholder while a split is borrowed elsewhere).
    pub fn empty() -> Self {
        SplitRows {
            source: RowSource::Table(Dataset::default()),
            indices: Vec::new(),
        }
    }

    /// Rows in this part.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when the part has no rows.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Tokens per row.
    pub fn seq_len(&self) -> usize {
        match &self.source {
            RowSource::Table(d) => d.seq_len,
            RowSource::Compound(_) => CompoundTask::LEN,
        }
    }

    /// Rows the task holds (indices must lie below this).
    pub fn task_rows(&self) -> usize {
        match &self.source {
            RowSource::Table(d) => d.len(),
            RowSource::Compound(t) => t.rows(),
        }
    }

    /// Writes the rows at `positions` (counted within this part) into `out`, replacing its contents.
    pub fn write(&self, positions: impl IntoIterator<Item = usize>, out: &mut Dataset) {
        out.seq_len = self.seq_len();
        out.tokens.clear();
        out.labels.clear();
        let rows = positions.into_iter().map(|pos| self.indices[pos]);
        match &self.source {
            RowSource::Table(d) => {
                let seq = d.seq_len;
                for i in rows {
                    // A row is a few tokens: pushed one by one, not one `memcpy` call per row
                    // (`memmove` fell from ~6.9 % to ~2.0 % of seed 002's training samples).
                    let row = &d.tokens[i * seq..(i + 1) * seq];
                    row.iter().for_each(|&t| out.tokens.push(t));
                    if let Some(&y) = d.labels.get(i) {
                        out.labels.push(y);
                    }
                }
            }
            RowSource::Compound(t) => {
                rows.for_each(|i| out.labels.push(t.write(i, &mut out.tokens)))
            }
        }
    }

    /// Every row of this part, in order.
    pub fn all(&self) -> Dataset {
        let mut out = Dataset::default();
        self.write(0..self.len(), &mut out);
        out
    }
}

impl Serialize for TaskConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut v = match self {
            TaskConfig::Modular(t) => serde_json::to_value(t),
            TaskConfig::Compound(t) => serde_json::to_value(t),
            TaskConfig::PreviousToken(t) => serde_json::to_value(t),
        }
        .map_err(S::Error::custom)?;
        if !matches!(self, TaskConfig::Modular(_)) {
            // A modular task is written without its kind, as configs were before kinds existed.
            let map = v.as_object_mut().expect("a task serialises to a table");
            map.insert("kind".into(), self.kind().into());
        }
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let kind = match v.as_object_mut().and_then(|o| o.remove("kind")) {
            None => "modular".to_string(),
            Some(serde_json::Value::String(k)) => k,
            Some(other) => return Err(D::Error::custom(format!("kind = {other}: {KINDS}"))),
        };
        match kind.as_str() {
            "modular" => serde_json::from_value(v).map(TaskConfig::Modular),
            "compound" => serde_json::from_value(v).map(TaskConfig::Compound),
            "previous_token" => serde_json::from_value(v).map(TaskConfig::PreviousToken),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown task kind `{other}`: {KINDS}"
                )))
            }
        }
        .map_err(D::Error::custom)
    }
}
