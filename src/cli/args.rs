//! The command line's grammar: every subcommand and option, with the help text `--help` prints.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use groklens::sweep::worker::WorkerArgs;

/// Train small transformers on algorithmic tasks until they grok, then take them apart.
#[derive(Parser)]
#[command(name = "groklens", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a model and write a run directory.
    Train {
        /// Start from a named preset (see `groklens presets`).
        #[arg(long, conflicts_with_all = ["config", "resume"])]
        preset: Option<String>,
        /// Start from a TOML config file.
        #[arg(long, conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Override one setting, e.g. `--set train.lr=3e-3`; repeatable.
        /// With --resume only train.epochs, train.stop_at_test_loss/acc and train.threads may be set.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output run directory (must not hold a run already).
        #[arg(long, required_unless_present = "resume")]
        out: Option<PathBuf>,
        /// Continue the run in this directory from its last complete checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// No progress bar; one summary line at the end.
        #[arg(long)]
        quiet: bool,
    },
    /// List the presets, or print one as TOML.
    Presets {
        /// Print this preset's full config.
        #[arg(long, value_name = "NAME")]
        show: Option<String>,
    },
    /// The main job: train the default preset, write its HTML report and print a summary. A comparison
    /// preset (`seed-004`) trains each of its presets into OUT/<preset> and writes OUT/compare.html.
    Grok {
        /// Run directory (default: runs/grok-<preset>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Preset to train.
        #[arg(long, default_value = "tl-grokking-demo")]
        preset: String,
        /// Override one setting; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a TransformerLens-named checkpoint on tokens and write logits plus `cache.<hook>` tensors.
    Cache {
        /// Safetensors checkpoint with TransformerLens state_dict names (groklens or TransformerLens).
        #[arg(long)]
        checkpoint: PathBuf,
        /// `model_config.json` with `HookedTransformerConfig` keys.
        #[arg(long)]
        model_config: PathBuf,
        /// Safetensors file holding an int64 `tokens` tensor `[batch, pos]`.
        #[arg(long)]
        tokens: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Hook names or shorthands to keep (default: every hook point).
        #[arg(long, num_args = 1..)]
        names: Vec<String>,
    },
    /// Mean-ablate each hook point of a trained run and record the test loss (seed 003's sweep).
    Ablate {
        /// The run directory.
        run: PathBuf,
        /// Checkpoint to analyse (default: RUN/final.safetensors).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// CSV output (default: RUN/ablation.csv).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Analyse a run (Fourier features, neuron clusters, progress measures over every checkpoint) and
    /// write RUN/report.html, a self-contained page that works offline.
    Report {
        /// The run directory.
        run: PathBuf,
    },
    /// Analyse several runs (any families) and write one page that sets them side by side.
    Compare {
        /// Run directories, two or more.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// The page to write.
        #[arg(long, default_value = "compare.html")]
        out: PathBuf,
    },
    /// Many runs from one spec: on this machine's cores, or as a Slurm job array; one page over all.
    Sweep {
        #[command(subcommand)]
        action: SweepAction,
    },
    /// Time train steps and test forwards of a preset on this machine.
    Bench {
        /// Preset to time.
        #[arg(long, default_value = "tl-grokking-demo")]
        preset: String,
        /// Timed iterations (median reported).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Override one setting; repeatable (e.g. `--set train.engine=candle`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum SweepAction {
    /// Run every point (or this shard's) with a pool of workers; finished points are skipped and
    /// interrupted ones resumed from their last checkpoint.
    Run {
        /// A sweep spec file, or the name of a built-in spec (`groklens sweep list`).
        spec: String,
        /// The sweep directory.
        #[arg(long)]
        out: PathBuf,
        /// Points trained at once (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Engine threads per point.
        #[arg(long, default_value_t = 1)]
        threads_per_run: usize,
        /// Run only shard I of N (points I, I+N, …); under Slurm taken from the array task.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Skip each point's report.html.
        #[arg(long)]
        no_reports: bool,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Write an sbatch job-array script into the sweep directory and submit it.
    Slurm {
        /// A sweep spec file, or the name of a built-in spec.
        spec: String,
        /// The sweep directory (on a file system every node sees).
        #[arg(long)]
        out: PathBuf,
        /// Array tasks (default: one per point).
        #[arg(long)]
        tasks: Option<usize>,
        /// Array tasks running at once.
        #[arg(long)]
        array_parallelism: Option<usize>,
        /// CPUs per array task; each task runs that many points at once.
        #[arg(long, default_value_t = 1)]
        cpus_per_task: usize,
        /// Slurm partition.
        #[arg(long)]
        partition: Option<String>,
        /// Time limit per task (e.g. 1:00:00).
        #[arg(long)]
        time: Option<String>,
        /// Write and print the script, do not submit it.
        #[arg(long)]
        dry_run: bool,
        /// Wait until the array has ended (`sbatch --wait`).
        #[arg(long)]
        wait: bool,
    },
    /// Rebuild the index and write DIR/sweep.html.
    Report {
        /// The sweep directory.
        dir: PathBuf,
    },
    /// One point of a sweep, run by the pool in its own process (not for direct use).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// List the built-in sweep specs, or print one.
    List {
        /// Print this spec.
        #[arg(long, value_name = "NAME")]
        show: Option<String>,
    },
}
