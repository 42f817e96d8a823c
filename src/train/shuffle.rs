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
    /// The data generator continued after the split, as seed 002's loaders use it.
    Torch(Box<TorchLoaders>),
}

/// Seed 002's two `DataLoader(shuffle=True, generator=g)`s on the generator `g` that drew the split:
/// each epoch the train loader's draws, then the validation loader's (whose order changes no metric,
/// but whose draws move `g` on).
pub struct TorchLoaders {
    /// The generator, just past the draws of the epochs so far.
    gen: TorchGenerator,
    /// Rows of the validation loader.
    n_test: usize,
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
                let mut gen = TorchGenerator::new(cfg.task.data_seed());
                gen.skip_randperm(n_train + n_test); // the split's randperm
                let mut loaders = TorchLoaders { gen, n_test };
                // Full-batch runs have no loaders and draw nothing.
                if cfg.train.batch_rows(n_train) < n_train {
                    for _ in 0..epochs_done {
                        loaders.epoch(n_train, false);
                    }
                }
                Shuffle::Torch(Box::new(loaders))
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
            Shuffle::Torch(loaders) => loaders.epoch(n, true),
        }
    }
}

impl TorchLoaders {
    /// One epoch of the two loaders' draws; the train permutation when `build` is set (else empty).
    fn epoch(&mut self, n_train: usize, build: bool) -> Vec<usize> {
        let gen = &mut self.gen;
        // Each loader iterator draws a base seed, then its sampler a permutation; when the epoch
        // runs to the end, `RandomSampler` draws a second, unused permutation for the
        // `num_samples % n` tail (torch 2.x's `yield from randperm(n)[:0]`).
        gen.random_i64();
        let order = if build {
            gen.randperm(n_train)
        } else {
            gen.skip_randperm(n_train);
            Vec::new()
        };
        gen.skip_randperm(n_train);
        gen.random_i64();
        gen.skip_randperm(self.n_test);
        gen.skip_randperm(self.n_test);
        order
    }
}
