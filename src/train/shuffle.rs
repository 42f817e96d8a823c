//! Each epoch's minibatch order, from the generator the run's `rng` names.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::RunConfig;
use crate::rng::{RngKind, TorchGenerator};

/// Where the minibatch order of each epoch comes from.
pub enum Shuffle {
    /// A ChaCha stream of `train.seed` per epoch: a function of the epoch alone.
    Chacha {
        /// `train.seed`.
        seed: u64,
    },
    /// The data generator continued after the split, drawing each epoch what seed 002's two
    /// `DataLoader(shuffle=True, generator=g)`s draw: the train loader's, then the validation
    /// loader's (whose order changes no metric, but whose draws move `g` on).
    Torch {
        /// The generator, just past the draws of the epochs so far.
        gen: Box<TorchGenerator>,
        /// Rows of the validation loader.
        n_test: usize,
    },
}

impl Shuffle {
    /// The order source of a run of `cfg` with `n_train`/`n_test` rows, positioned after
    /// `epochs_done` epochs (a resumed torch run replays the draws of the epochs before it).
    pub fn new(cfg: &RunConfig, n_train: usize, n_test: usize, epochs_done: usize) -> Self {
        match cfg.rng {
            RngKind::Chacha => Shuffle::Chacha {
                seed: cfg.train.seed,
            },
            RngKind::Torch => {
                let mut gen = TorchGenerator::new(cfg.task.data_seed);
                gen.skip_randperm(n_train + n_test); // the split's randperm
                let mut shuffle = Shuffle::Torch {
                    gen: Box::new(gen),
                    n_test,
                };
                if cfg.train.batch_size > 0 && cfg.train.batch_size < n_train {
                    for _ in 0..epochs_done {
                        shuffle.next_torch_epoch(n_train, false);
                    }
                }
                shuffle
            }
        }
    }

    /// The row order of epoch `epoch` (counted from 0) over `n` train rows. Call once per epoch,
    /// in order, and only for runs that train in minibatches (full-batch runs draw nothing).
    pub fn order(&mut self, epoch: usize, n: usize) -> Vec<usize> {
        match self {
            Shuffle::Chacha { seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(*seed);
                rng.set_stream(epoch as u64);
                let mut idx: Vec<usize> = (0..n).collect();
                idx.shuffle(&mut rng);
                idx
            }
            Shuffle::Torch { .. } => self.next_torch_epoch(n, true).unwrap_or_default(),
        }
    }

    /// One epoch of the two loaders' draws; the train permutation when `build` is set.
    fn next_torch_epoch(&mut self, n_train: usize, build: bool) -> Option<Vec<usize>> {
        let Shuffle::Torch { gen, n_test } = self else {
            return None;
        };
        // Each loader iterator draws a base seed, then its sampler a permutation; when the epoch
        // runs to the end, `RandomSampler` draws a second, unused permutation for the
        // `num_samples % n` tail (torch 2.x's `yield from randperm(n)[:0]`).
        gen.random_i64();
        let order = if build {
            Some(gen.randperm(n_train))
        } else {
            gen.skip_randperm(n_train);
            None
        };
        gen.skip_randperm(n_train);
        gen.random_i64();
        gen.skip_randperm(*n_test);
        gen.skip_randperm(*n_test);
        order
    }
}
