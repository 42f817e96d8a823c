//! Seed 003's random sequences: tokens drawn uniformly from 1..d_vocab, BOS token 0 at position 0,
//! a fresh batch every step; each position predicts the token before it.
//!
//! The training stream is torch's: `torch.manual_seed(data_seed)` then `torch.randint(1, d_vocab,
//! (batch, n_ctx))` per step (position 0 is drawn, then overwritten by BOS), so step s's batch is a
//! function of (data_seed, s) and a resumed run skips the draws of the steps before it. The evaluation
//! set is drawn the same way from its own seed, so it shares no rows with the training stream (the
//! seed draws it from seed 123 again, making it equal to its first 16 training batches).

use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::error::{GrokError, Result};
use crate::rng::TorchGenerator;

/// Random token sequences whose targets are the previous tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceTask {
    /// Vocabulary: tokens are drawn from 1..d_vocab (0 is BOS).
    pub d_vocab: usize,
    /// Tokens per sequence.
    pub n_ctx: usize,
    /// Put BOS (token 0) at position 0.
    #[serde(default = "yes")]
    pub bos: bool,
    /// Seed of the training stream.
    pub data_seed: u64,
    /// Seed of the evaluation set.
    pub eval_seed: u64,
    /// Rows of the evaluation set.
    pub eval_rows: usize,
}

fn yes() -> bool {
    true
}

impl SequenceTask {
    /// Seed 003: vocabulary 300, 50 tokens, BOS, stream seed 123, 4 000 evaluation rows.
    pub fn seed_003() -> Self {
        SequenceTask {
            d_vocab: 300,
            n_ctx: 50,
            bos: true,
            data_seed: 123,
            eval_seed: 124,
            eval_rows: 4000,
        }
    }

    /// Checks sizes and seeds, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(3..=1 << 20).contains(&self.d_vocab) {
            return Err(GrokError::config(
                "task.d_vocab",
                self.d_vocab,
                "must be in [3, 1048576]",
            ));
        }
        if !(2..=4096).contains(&self.n_ctx) {
            return Err(GrokError::config(
                "task.n_ctx",
                self.n_ctx,
                "must be in [2, 4096] (position i predicts token i − 1)",
            ));
        }
        if !(1..=1_000_000).contains(&self.eval_rows) {
            return Err(GrokError::config(
                "task.eval_rows",
                self.eval_rows,
                "must be in [1, 1000000]",
            ));
        }
        if self.eval_seed == self.data_seed {
            return Err(GrokError::config(
                "task.eval_seed",
                self.eval_seed,
                "must differ from task.data_seed, or the evaluation rows are the first training batches",
            ));
        }
        Ok(())
    }

    /// `rows` sequences drawn from `gen`.
    fn draw(&self, gen: &mut TorchGenerator, rows: usize, out: &mut Dataset) {
        out.seq_len = self.n_ctx;
        out.labels.clear();
        out.tokens = gen.randint(rows * self.n_ctx, 1, self.d_vocab as u32);
        if self.bos {
            out.tokens
                .iter_mut()
                .step_by(self.n_ctx)
                .for_each(|t| *t = 0);
        }
    }

    /// `rows` sequences from the training stream that no training step drew: the first batch of
    /// `rows` rows past the `steps` batches of `batch_size` rows a run has trained on (seed 003 scores
    /// its ablations on such a fresh batch).
    pub fn unseen_batch(&self, rows: usize, steps: usize, batch_size: usize) -> Dataset {
        let mut out = Dataset::default();
        let past_training = (steps * batch_size).div_ceil(rows.max(1));
        SequenceStream::at(self, rows, past_training).next_batch(&mut out);
        out
    }

    /// The fixed evaluation set.
    pub fn evaluation_set(&self) -> Dataset {
        let mut out = Dataset::default();
        self.draw(
            &mut TorchGenerator::new(self.eval_seed),
            self.eval_rows,
            &mut out,
        );
        out
    }
}

/// The training stream of a [`SequenceTask`], positioned at a step.
pub struct SequenceStream {
    task: SequenceTask,
    rows: usize,
    gen: TorchGenerator,
    step: usize,
}

impl SequenceStream {
    /// The stream of `rows`-row batches, positioned at `step` (the batches before it are skipped).
    pub fn at(task: &SequenceTask, rows: usize, step: usize) -> Self {
        let mut gen = TorchGenerator::new(task.data_seed);
        gen.skip((step * rows * task.n_ctx) as u64);
        SequenceStream {
            task: task.clone(),
            rows,
            gen,
            step,
        }
    }

    /// The step whose batch [`SequenceStream::next_batch`] writes next.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Writes the next step's batch into `out`.
    pub fn next_batch(&mut self, out: &mut Dataset) {
        self.task.draw(&mut self.gen, self.rows, out);
        self.step += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_batch_is_the_seeds_printed_one() {
        // The seed's `make_data_generator(cfg, 2)` printed these (torch.manual_seed(123)).
        let mut s = SequenceStream::at(&SequenceTask::seed_003(), 2, 0);
        let mut d = Dataset::default();
        s.next_batch(&mut d);
        assert_eq!(&d.tokens[..8], &[0, 93, 34, 155, 274, 116, 114, 248]);
        assert_eq!(&d.tokens[50..55], &[0, 118, 46, 274, 105]);
        assert_eq!(d.len(), 2);
        assert!(d.labels.is_empty());
    }

    #[test]
    fn a_stream_positioned_at_a_step_continues_the_uninterrupted_one() {
        let task = SequenceTask {
            d_vocab: 7,
            n_ctx: 5,
            ..SequenceTask::seed_003()
        };
        let mut whole = SequenceStream::at(&task, 3, 0);
        let mut batches = Vec::new();
        for _ in 0..4 {
            let mut d = Dataset::default();
            whole.next_batch(&mut d);
            assert!(d.tokens.iter().all(|&t| t < 7));
            assert!(d.tokens.iter().step_by(5).all(|&t| t == 0));
            assert!(d
                .tokens
                .iter()
                .enumerate()
                .all(|(i, &t)| i % 5 == 0 || t >= 1));
            batches.push(d);
        }
        assert_ne!(batches[0], batches[1]);
        let mut resumed = SequenceStream::at(&task, 3, 2);
        assert_eq!(resumed.step(), 2);
        for want in &batches[2..] {
            let mut d = Dataset::default();
            resumed.next_batch(&mut d);
            assert_eq!(&d, want);
        }
        // The evaluation set is drawn from its own seed.
        let eval = task.evaluation_set();
        assert_eq!(eval.len(), task.eval_rows);
        assert_ne!(eval.tokens[..15], batches[0].tokens[..]);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let t = SequenceTask::seed_003();
        for (bad, field) in [
            (
                SequenceTask {
                    n_ctx: 1,
                    ..t.clone()
                },
                "task.n_ctx",
            ),
            (
                SequenceTask {
                    d_vocab: 2,
                    ..t.clone()
                },
                "task.d_vocab",
            ),
            (
                SequenceTask {
                    eval_rows: 0,
                    ..t.clone()
                },
                "task.eval_rows",
            ),
            (
                SequenceTask {
                    eval_seed: 123,
                    ..t.clone()
                },
                "task.eval_seed",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
