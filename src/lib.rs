//! groklens: train small networks on algorithmic tasks until they grok, then take them apart.
//!
//! Layers, from the top; each module imports only modules listed below it (unit tests may use a
//! preset from above):
//!
//! ```text
//! cli (main.rs)          parses arguments, calls `api`, prints
//! api                    one API for every front end: the Run facade (any family, any task kind),
//!                        grok, cache/ablate, bench, sweeps (pool, Slurm, page, worker)
//! report                 HTML pages (per run, comparison, sweep) from analysis results
//! bench                  timing a preset's epoch and the machine's matmul peak
//! analysis               Fourier features, key frequencies, clusters, progress measures, phases
//! interp                 activation cache, hooks, ablation, patching, weight processing, circuits
//! sweep                  specs, grid expansion, worker pool of training processes, shards, Slurm arrays, index
//! train                  the training loop: epochs, evaluation, stop rules, checkpoints, resume
//! run                    the run directory: config, split, metrics, checkpoints
//! presets                named configurations
//! config                 the run configuration (task + model + train), TOML, overrides
//! optim                  AdamW (= torch), gradient clipping
//! engine                 the Engine trait and one plan-or-reason selection; candle (general) and
//!                        fast (hand-written forward/backward op pairs)
//! model                  the Family trait; transformer/, mlp/, bitnet/ each own their config,
//!                        parameter tree, hook tree (names + axes), init and candle forward
//! tasks                  algorithmic tasks, token layouts, splits
//! linalg, tensor_io      small dense matrices and kernels; safetensors I/O
//! rng                    PyTorch's CPU generator bit for bit (splits, init, shuffles); ChaCha kept
//! memory                 memory estimates checked against what the machine has
//! error                  typed errors naming the field or file
//! ```

pub mod analysis;
pub mod api;
pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
pub mod interp;
pub mod linalg;
pub mod memory;
pub mod model;
pub mod optim;
pub mod presets;
pub mod report;
pub mod rng;
pub mod run;
pub mod sweep;
pub mod tasks;
pub mod tensor_io;
pub mod train;

pub use config::RunConfig;
pub use error::{GrokError, Result};
