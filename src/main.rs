//! The `groklens` command line: parses arguments ([`cli::args`]), calls the library's [`groklens::api`]
//! (the same functions the Python package calls) and prints what they return.

use std::process::ExitCode;

mod cli;

use anyhow::{Context, Result};
use clap::Parser;

use cli::args::{Cli, Command, SweepAction};
use cli::print::Printer;
use groklens::api::sweeps::Launcher;
use groklens::api::{self, bench, grok, inspect, sweeps, Run, TrainOptions};
use groklens::presets::{preset, COMPARISONS, PRESETS};

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

/// Runs `work` with a printer of its events, ending the progress line however it ends.
fn with_printer<T>(
    quiet: bool,
    work: impl FnOnce(&mut Printer) -> groklens::Result<T>,
) -> Result<T> {
    let mut printer = Printer::new(quiet);
    let result = work(&mut printer);
    printer.end_line();
    Ok(result?)
}

fn run(cli: Cli) -> Result<()> {
    let train = TrainOptions::default();
    match cli.command {
        Command::Train {
            preset: p,
            config,
            sets,
            out,
            resume,
            quiet,
        } => with_printer(quiet, |printer| {
            let mut run = match (resume, out) {
                (Some(dir), _) => {
                    let (run, notes) = Run::resume(dir, &sets)?;
                    notes.into_iter().for_each(|n| eprintln!("{n}"));
                    run
                }
                (None, Some(out)) => Run::create(
                    api::build_config(p.as_deref(), config.as_deref(), &sets)?,
                    out,
                )?,
                (None, None) => unreachable!("clap requires --out without --resume"),
            };
            let opts = TrainOptions {
                estimate: !quiet,
                ..train
            };
            run.train(opts, &mut |e| printer.on(e)).map(drop)
        }),
        Command::Presets { show } => {
            match show {
                Some(name) => print!("{}", preset(&name)?.to_toml()),
                None => {
                    for (i, (name, about)) in PRESETS.iter().enumerate() {
                        let default = if i == 0 { " (default)" } else { "" };
                        println!("{name:<20} {about}{default}");
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
        } => with_printer(quiet, |printer| {
            let out = out.unwrap_or_else(|| grok::default_out(&p));
            let opts = TrainOptions {
                estimate: !quiet,
                ..train
            };
            if let grok::Grokked::Comparison(c) =
                grok::grok(&p, &out, &sets, opts, &mut |e| printer.on(e))?
            {
                println!("{}", c.text());
            }
            Ok(())
        }),
        Command::Report { run } => {
            println!("{}", Run::open(run)?.write_report()?.text());
            Ok(())
        }
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
        } => {
            let n = inspect::cache(&checkpoint, &model_config, &tokens, &out, &names)?;
            println!("wrote logits and {n} activations to {}", out.display());
            Ok(())
        }
        Command::Ablate {
            run,
            checkpoint,
            out,
        } => {
            let a = Run::open(run)?.ablate(checkpoint.as_deref(), out.as_deref())?;
            for n in &a.notes {
                eprintln!("note: {n}");
            }
            for r in &a.rows {
                println!("{:<36} {:>12.4e}", r.hook, r.loss);
            }
            println!("wrote {}", a.path.display());
            Ok(())
        }
        Command::Sweep { action } => sweep(action),
        Command::Bench {
            preset: p,
            iters,
            sets,
        } => {
            println!("{}", bench::bench_preset(&p, &sets, iters)?);
            Ok(())
        }
    }
}

fn sweep(action: SweepAction) -> Result<()> {
    let exe = || std::env::current_exe().context("locating the groklens executable");
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
            let opts = sweeps::LocalOptions {
                workers,
                threads_per_run,
                shard,
                reports: !no_reports,
                progress: !quiet,
            };
            println!(
                "{}",
                sweeps::run_local(&spec, &out, Launcher::binary(exe()?), &opts)?.text()
            );
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
            let opts = sweeps::SlurmOptions {
                tasks,
                array_parallelism,
                cpus_per_task,
                partition,
                time,
                dry_run,
                wait,
            };
            let s = sweeps::run_slurm(&spec, &out, exe()?, &opts)?;
            match &s.submitted {
                None => {
                    print!("{}", s.job.script());
                    eprintln!("written to {} (not submitted)", s.script.display());
                }
                Some(said) => {
                    println!("{said}");
                    println!(
                        "{} points in {} array task(s); `groklens sweep report {}` when they end",
                        s.points,
                        s.job.tasks,
                        s.job.dir.display()
                    );
                }
            }
        }
        SweepAction::Report { dir } => {
            let page = sweeps::report(&dir)?;
            let rows = &page.analysis.rows;
            let grokked = rows.iter().filter(|r| r.grokking_epoch.is_some()).count();
            println!(
                "sweep page: {} ({:.1} MB, {:.1} s); {} points, {grokked} grokked",
                page.path.display(),
                page.bytes as f64 / 1e6,
                page.seconds,
                rows.len()
            );
        }
        SweepAction::Worker(args) => with_printer(true, |printer| {
            sweeps::work_on_point(&args, &mut |e| printer.on(e))
        })?,
        SweepAction::List { show } => match show {
            Some(name) => print!("{}", sweeps::built_in(&name)?),
            None => {
                for (name, about, _) in groklens::sweep::BUILT_IN {
                    println!("{name:<22} {about}");
                }
            }
        },
    }
    Ok(())
}
