//! The `groklens` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

mod cli;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use groklens::presets::{comparison, preset, preset_template, COMPARISONS, PRESETS};
use groklens::run::{grokking_epoch, MetricsRow, RunDir, GROKKED_ACCURACY};
use groklens::train::Trainer;
use groklens::RunConfig;

/// Train small transformers on algorithmic tasks until they grok, then take them apart.
#[derive(Parser)]
#[command(name = "groklens", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum SweepAction {
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
    /// List the built-in sweep specs, or print one.
    List {
        /// Print this spec.
        #[arg(long, value_name = "NAME")]
        show: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<groklens::GrokError>()
                .map_or(1, groklens::GrokError::exit_code);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            preset: p,
            config,
            sets,
            out,
            resume,
            quiet,
        } => {
            if let Some(dir) = resume {
                let dir = RunDir::new(dir);
                let (trainer, notes) = Trainer::resume(&dir, &sets)?;
                for note in notes {
                    eprintln!("{note}");
                }
                eprintln!("resuming {} at epoch {}", dir.root.display(), trainer.epoch);
                return train(trainer, &dir, quiet);
            }
            let cfg = build_config(p.as_deref(), config, &sets)?;
            let dir = RunDir::new(out.expect("clap requires --out"));
            train(Trainer::create(cfg, &dir)?, &dir, quiet)
        }
        Command::Presets { show } => {
            match show {
                Some(name) => print!("{}", preset(&name)?.to_toml()),
                None => {
                    for (i, (name, about)) in PRESETS.iter().enumerate() {
                        println!(
                            "{name:<20} {about}{}",
                            if i == 0 { " (default)" } else { "" }
                        );
                    }
                    println!("\ncomparisons (`groklens grok --preset NAME`):");
                    for (name, about, _) in COMPARISONS {
                        println!("{name:<20} {about}");
                    }
                }
            }
            Ok(())
        }
        Command::Grok {
            out,
            preset: p,
            sets,
            quiet,
        } => {
            let root = out.unwrap_or_else(|| PathBuf::from(format!("runs/grok-{p}")));
            if let Some(members) = comparison(&p) {
                return grok_comparison(&root, members, &sets, quiet);
            }
            let cfg = build_config(Some(&p), None, &sets)?;
            let dir = RunDir::new(root);
            if groklens::run::is_run_dir(&dir.root) {
                bail!("{} already holds a run; pass --out DIR for a new one or `groklens train --resume {}`", dir.root.display(), dir.root.display());
            }
            train(Trainer::create(cfg, &dir)?, &dir, quiet)?;
            report(&dir.root)
        }
        Command::Report { run } => report(&run),
        Command::Compare { runs, out } => {
            let comparison = groklens::report::compare::write_comparison(&runs, &out)?;
            println!("{}", comparison.text());
            Ok(())
        }
        Command::Cache {
            checkpoint,
            model_config,
            tokens,
            out,
            names,
        } => cli::inspect::cache(&checkpoint, &model_config, &tokens, &out, &names),
        Command::Ablate {
            run,
            checkpoint,
            out,
        } => cli::inspect::ablate(&run, checkpoint.as_deref(), out.as_deref()),
        Command::Sweep { action } => sweep(action),
        Command::Bench {
            preset: p,
            iters,
            sets,
        } => {
            if iters == 0 {
                bail!("--iters must be at least 1 (the median of no timings is undefined)");
            }
            let cfg = build_config(Some(&p), None, &sets)?;
            let (n_train, _) = cfg.task.split_sizes(cfg.train.batch_size);
            if n_train > groklens::bench::WHOLE_EPOCH_ROWS {
                return bench_rows(&p, &cfg, iters);
            }
            let r = groklens::bench::bench(&cfg, iters)?;
            println!(
                "preset {p}: engine {}, {} thread(s), median of {iters}",
                r.engine, r.threads
            );
            println!(
                "  train steps ({} × {} rows) {:7.2} ms",
                r.steps, r.batch, r.train_step_ms
            );
            println!("  test-set forward         {:8.2} ms", r.test_forward_ms);
            println!(
                "  epoch                    {:8.2} ms  ({:.1} epochs/s)",
                r.epoch_ms(),
                1e3 / r.epoch_ms()
            );
            println!(
                "  effective                {:8.1} GFLOP/s  ({:.2} GFLOP/epoch performed)",
                r.effective_gflops(),
                r.epoch_flops_performed / 1e9
            );
            println!("  reference-equivalent     {:8.1} GFLOP/s  ({:.2} GFLOP/epoch as the Python reference computes it)", r.equivalent_gflops(), r.epoch_flops_full / 1e9);
            if cfg.task.modular().is_some() {
                let (secs, rows, hooks) = groklens::bench::run_with_cache_seconds(&cfg, 5)?;
                println!("  run_with_cache           {:8.1} ms  ({rows} inputs, {hooks} hook points, candle path)", secs * 1e3);
            }
            println!(
                "  f32 matmul peak (512^3)  {:8.1} GFLOP/s 1 thread, {:.1} GFLOP/s {} threads",
                r.matmul_peak_gflops.0, r.matmul_peak_gflops.1, r.threads
            );
            Ok(())
        }
    }
}

fn sweep(action: SweepAction) -> Result<()> {
    use groklens::sweep::{self, local, slurm, SweepDir};
    match action {
        SweepAction::Run {
            spec,
            out,
            workers,
            threads_per_run,
            shard,
            no_reports,
            quiet,
        } => {
            let spec = sweep::load_spec(&spec)?;
            let dir = SweepDir::new(out);
            let shard = sweep::shard_of(shard.as_deref())?;
            let _lock = dir.lock(shard.is_some())?;
            let points = dir.prepare(&spec)?;
            let all = points.len();
            let mine = match shard {
                Some((i, n)) => sweep::shard(points.clone(), i, n),
                None => points.clone(),
            };
            let opts = local::PoolOptions {
                exe: std::env::current_exe().context("locating the groklens executable")?,
                workers: workers.unwrap_or_else(local::default_workers),
                threads_per_run,
                reports: !no_reports,
                progress: !quiet,
            };
            let o = local::run_points(&dir, &mine, &opts)?;
            let which = shard.map_or(format!("{all} points"), |(i, n)| {
                format!("shard {i}/{n}: {} of {all} points", mine.len())
            });
            println!(
                "{}: {which}; {} finished now, {} already finished, {} failed, in {:.1}s ({} workers × {})",
                dir.root.display(),
                o.finished,
                o.skipped,
                o.failed.len(),
                o.seconds,
                opts.workers,
                match threads_per_run {
                    0 => "one thread per core each".to_string(),
                    n => format!("{n} thread(s)"),
                }
            );
            if shard.is_none() {
                dir.write_index(&spec, &points)?;
                println!("index: {}", dir.index_path().display());
            }
            if !o.failed.is_empty() {
                for (name, why) in &o.failed {
                    eprintln!("{name}: {why}");
                }
                bail!(
                    "{} point(s) failed; fix the cause and run the same command again (finished points are kept)",
                    o.failed.len()
                );
            }
            Ok(())
        }
        SweepAction::Slurm {
            spec,
            out,
            tasks,
            array_parallelism,
            cpus_per_task,
            partition,
            time,
            dry_run,
            wait,
        } => {
            let spec = sweep::load_spec(&spec)?;
            let out = std::path::absolute(&out)
                .with_context(|| format!("resolving {}", out.display()))?;
            let dir = SweepDir::new(&out);
            let points = dir.prepare(&spec)?;
            if tasks == Some(0) || cpus_per_task == 0 || array_parallelism == Some(0) {
                bail!("--tasks, --cpus-per-task and --array-parallelism must be at least 1");
            }
            let job = slurm::ArrayJob {
                exe: std::env::current_exe().context("locating the groklens executable")?,
                dir: out,
                name: spec.name.clone(),
                tasks: tasks.unwrap_or(points.len()).min(points.len()),
                parallelism: array_parallelism,
                cpus_per_task,
                partition,
                time,
            };
            let script = job.write()?;
            if dry_run {
                print!("{}", job.script());
                eprintln!("written to {} (not submitted)", script.display());
                return Ok(());
            }
            println!("{}", job.submit(&script, wait)?);
            println!(
                "{} points in {} array task(s); `groklens sweep report {}` when they end",
                points.len(),
                job.tasks,
                dir.root.display()
            );
            Ok(())
        }
        SweepAction::Report { dir } => {
            let page = groklens::report::sweep::write_sweep_page(&SweepDir::new(dir))?;
            let grokked = page
                .analysis
                .rows
                .iter()
                .filter(|r| r.grokking_epoch.is_some())
                .count();
            println!(
                "sweep page: {} ({:.1} MB, {:.1} s); {} points, {grokked} grokked",
                page.path.display(),
                page.bytes as f64 / 1e6,
                page.seconds,
                page.analysis.rows.len()
            );
            Ok(())
        }
        SweepAction::List { show } => {
            match show {
                Some(name) => {
                    let (_, _, text) = sweep::BUILT_IN
                        .iter()
                        .find(|(n, _, _)| *n == name)
                        .with_context(|| format!("no built-in sweep spec named {name:?}"))?;
                    print!("{text}");
                }
                None => {
                    for (name, about, _) in sweep::BUILT_IN {
                        println!("{name:<22} {about}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// `bench` for a task whose epoch is too long to time whole: figures per million rows.
fn bench_rows(preset: &str, cfg: &RunConfig, iters: usize) -> Result<()> {
    let r = groklens::bench::bench_rows(cfg, iters)?;
    println!(
        "preset {preset}: engine {}, {} thread(s), median of {iters} passes of {} rows",
        r.engine, r.threads, r.pass_rows
    );
    println!(
        "  train forward+backward   {:8.1} ms per million rows",
        r.train_ms_per_million
    );
    println!(
        "  test forward             {:8.1} ms per million rows",
        r.test_ms_per_million
    );
    let (performed, equivalent) = r.train_gflops();
    println!("  train effective          {performed:8.1} GFLOP/s  (reference-equivalent {equivalent:.1} GFLOP/s)");
    println!(
        "  epoch estimate           {:8.1} s  ({} train rows forward+backward, {} test rows forward)",
        r.epoch_seconds(),
        r.rows.0,
        r.rows.1
    );
    println!(
        "  f32 matmul peak (512^3)  {:8.1} GFLOP/s 1 thread, {:.1} GFLOP/s {} threads",
        r.matmul_peak_gflops.0, r.matmul_peak_gflops.1, r.threads
    );
    Ok(())
}

fn report(dir: &std::path::Path) -> Result<()> {
    if !groklens::run::is_run_dir(dir) {
        bail!("{} is not a run directory (no config.toml); train one with `groklens train` or `groklens grok`", dir.display());
    }
    let cfg = RunDir::new(dir).load_config()?;
    match cfg.task {
        groklens::tasks::TaskConfig::Modular(_) => {
            println!("{}", groklens::report::write_report(dir)?.text())
        }
        groklens::tasks::TaskConfig::PreviousToken(_) => println!(
            "{}",
            groklens::report::sequence::write_sequence_report(dir)?.text()
        ),
        groklens::tasks::TaskConfig::Compound(_) => println!(
            "{}",
            groklens::report::compound::write_compound_report(dir)?.text()
        ),
    }
    Ok(())
}

/// Trains (or resumes, or reuses) every member preset of a comparison into `root/<preset>`, reports
/// each and writes `root/compare.html`.
fn grok_comparison(
    root: &std::path::Path,
    members: &[&str],
    sets: &[String],
    quiet: bool,
) -> Result<()> {
    let mut dirs = Vec::new();
    for member in members {
        let dir = RunDir::new(root.join(member));
        if groklens::run::is_run_dir(&dir.root) {
            let wanted = build_config(Some(member), None, sets)?;
            let changes = wanted.changes_since(&dir.load_config()?);
            if !changes.is_empty() {
                let listed: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                bail!(
                    "{} already holds a run of {member} with other settings ({}, on disk → asked): \
                     it is neither reused nor overwritten. Pass another --out for a new comparison{}",
                    dir.root.display(),
                    listed.join(", "),
                    if changes.iter().all(|c| c.is_resumable()) {
                        format!(", or continue it with `groklens train --resume {} --set …`", dir.root.display())
                    } else {
                        String::new()
                    }
                );
            }
        }
        if dir.final_path().exists() {
            eprintln!("{}: already trained, reusing it", dir.root.display());
        } else if groklens::run::is_run_dir(&dir.root) {
            let (trainer, notes) = Trainer::resume(&dir, &[])?;
            for note in notes {
                eprintln!("{note}");
            }
            eprintln!("resuming {} at epoch {}", dir.root.display(), trainer.epoch);
            train(trainer, &dir, quiet)?;
        } else {
            let cfg = build_config(Some(member), None, sets)?;
            train(Trainer::create(cfg, &dir)?, &dir, quiet)?;
        }
        report(&dir.root)?;
        dirs.push(dir.root);
    }
    let comparison =
        groklens::report::compare::write_comparison(&dirs, &root.join("compare.html"))?;
    println!("{}", comparison.text());
    Ok(())
}

fn build_config(
    preset_name: Option<&str>,
    file: Option<PathBuf>,
    sets: &[String],
) -> Result<RunConfig> {
    let mut cfg = match (preset_name, file) {
        (Some(p), _) => preset_template(p)?,
        (None, Some(f)) => RunConfig::load(&f)?,
        (None, None) => bail!("give --preset NAME or --config FILE (see `groklens presets`)"),
    };
    for s in sets {
        cfg.set(s).with_context(|| format!("--set {s}"))?;
    }
    Ok(cfg.resolve()?)
}

/// Prints what one epoch (step) and the whole run will take on this machine, timed on a sample of
/// rows, before a run whose epochs are long enough for it to matter.
fn print_estimate(trainer: &mut Trainer) -> Result<()> {
    const SAMPLE_ROWS: usize = 4096;
    let (n_train, n_test) = trainer.rows();
    if n_train + n_test <= SAMPLE_ROWS {
        return Ok(());
    }
    let per_epoch = trainer.estimate_epoch_seconds(SAMPLE_ROWS)?;
    let left = trainer.cfg.train.epochs.saturating_sub(trainer.epoch);
    let unit = trainer.cfg.task.unit();
    let run = per_epoch * left as f64;
    let (amount, scale) = match run {
        r if r >= 2.0 * 86_400.0 => (r / 86_400.0, "days"),
        r if r >= 2.0 * 3600.0 => (r / 3600.0, "hours"),
        r if r >= 120.0 => (r / 60.0, "minutes"),
        r => (r, "seconds"),
    };
    println!(
        "estimated on this machine ({} threads): {per_epoch:.2} s per {unit} ({n_train} train rows, \
         test evaluated every {} {unit}s), {amount:.1} {scale} for the {left} {unit}s left \
         (less if an early stop is met)",
        groklens::engine::thread_count(trainer.cfg.train.threads),
        trainer.cfg.train.eval_every
    );
    Ok(())
}

fn train(mut trainer: Trainer, dir: &RunDir, quiet: bool) -> Result<()> {
    let total = trainer.cfg.train.epochs;
    let unit = trainer.cfg.task.unit();
    if !quiet {
        print_estimate(&mut trainer)?;
    }
    let start = Instant::now();
    let first_epoch = trainer.epoch;
    let mut last_draw = Instant::now();
    let mut draw = |row: &MetricsRow| {
        if quiet || (last_draw.elapsed().as_millis() < 100 && row.epoch != total) {
            return;
        }
        last_draw = Instant::now();
        let rate = (row.epoch - first_epoch) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r{unit} {:>6}/{total} | train loss {:9.3e} acc {:6.2}% | test loss {:9.3e} acc {:6.2}% | {:7.1} {unit}s/s ",
            row.epoch,
            row.train_loss,
            100.0 * row.train_acc,
            row.test_loss,
            100.0 * row.test_acc,
            rate
        );
        let _ = std::io::stderr().flush();
    };
    groklens::train::interrupt::install();
    let outcome = trainer.run(&mut draw);
    groklens::train::interrupt::uninstall();
    if !quiet {
        eprintln!();
    }
    let outcome = outcome.map_err(|e| match e {
        groklens::GrokError::Interrupted(what) => groklens::GrokError::Interrupted(format!(
            "{}: {what}; continue it with `groklens train --resume {}`",
            dir.root.display(),
            dir.root.display()
        )),
        e => e,
    })?;
    let secs = start.elapsed().as_secs_f64();
    let last = outcome.last.context("no evaluation was recorded")?;
    let epochs = match first_epoch {
        0 => format!("{} {unit}s in {secs:.1}s", outcome.epochs),
        e => format!(
            "{} {unit}s ({e} before this resume, {} now in {secs:.1}s; {:.1}s in all)",
            outcome.epochs,
            outcome.epochs - e,
            last.elapsed_s
        ),
    };
    println!(
        "{}: {epochs} with the {} engine; final train loss {:.3e}, test loss {:.3e}, test acc {:.2}%",
        dir.root.display(),
        trainer.engine_name(),
        last.train_loss,
        last.test_loss,
        100.0 * last.test_acc
    );
    let first_loss = trainer.history.first().map_or(f64::NAN, |r| r.train_loss);
    if last.train_loss > 100.0 * first_loss.max(1e-3) {
        eprintln!(
            "warning: the train loss grew from {first_loss:.3e} to {:.3e}: training is unstable; \
             {}",
            last.train_loss,
            trainer.cfg.train.divergence_suspects().join(", ")
        );
    }
    if trainer.cfg.task.is_streamed() {
        // Every batch is fresh: there is no train/test gap to close, so no grokking epoch.
        return Ok(());
    }
    match grokking_epoch(&trainer.history, GROKKED_ACCURACY) {
        Some(e) => println!("grokked (test accuracy >= 99%) at epoch {e}"),
        None => println!("did not reach 99% test accuracy"),
    }
    Ok(())
}
