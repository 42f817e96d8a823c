//! `groklens grok`: train a preset and write its report, or — for a comparison preset — train (or
//! resume, or reuse) each member into `OUT/<member>`, report each and compare them.

use std::path::{Path, PathBuf};

use super::{build_config, Event, OnEvent, Run, TrainOptions};
use crate::error::{GrokError, Result};
use crate::presets::comparison;
use crate::report::compare::{write_comparison, Comparison};
use crate::run::{is_run_dir, RunDir};

/// What `grok` produced.
pub enum Grokked {
    /// One run, trained and reported.
    Run(PathBuf),
    /// A comparison preset's members and their comparison page.
    Comparison(Box<Comparison>),
}

/// The directory `grok --preset NAME` writes to without `--out`.
pub fn default_out(preset: &str) -> PathBuf {
    PathBuf::from(format!("runs/grok-{preset}"))
}

/// Trains preset `preset` (with `sets`) into `out` and writes its report; a comparison preset trains
/// each member into `out/<member>` and writes `out/compare.html`. Events go to `on`.
pub fn grok(
    preset: &str,
    out: &Path,
    sets: &[String],
    opts: TrainOptions,
    on: &mut OnEvent,
) -> Result<Grokked> {
    if let Some(members) = comparison(preset) {
        return compare_members(out, members, sets, opts, on)
            .map(|c| Grokked::Comparison(Box::new(c)));
    }
    if is_run_dir(out) {
        return Err(GrokError::Usage(format!(
            "{} already holds a run; pass --out DIR for a new one or `groklens train --resume {}`",
            out.display(),
            out.display()
        )));
    }
    let mut run = Run::create(build_config(Some(preset), None, sets)?, out)?;
    run.train(opts, on)?;
    let report = run.write_report()?;
    on(Event::Report(&report));
    Ok(Grokked::Run(out.to_path_buf()))
}

/// Trains (or resumes, or reuses) every member preset of a comparison into `root/<member>`, reports
/// each and writes `root/compare.html`. A member on disk with other settings is refused, naming them.
fn compare_members(
    root: &Path,
    members: &[&str],
    sets: &[String],
    opts: TrainOptions,
    on: &mut OnEvent,
) -> Result<Comparison> {
    let mut dirs = Vec::new();
    for member in members {
        let dir = RunDir::new(root.join(member));
        let wanted = build_config(Some(member), None, sets)?;
        let mut run = if is_run_dir(&dir.root) {
            let run = Run::open(&dir.root)?;
            refuse_other_settings(&run, member, &wanted)?;
            run
        } else {
            Run::create(wanted, &dir.root)?
        };
        if run.is_finished() {
            on(Event::Note(format!(
                "{}: already trained, reusing it",
                dir.root.display()
            )));
        } else {
            run.train(opts, on)?;
        }
        let report = run.write_report()?;
        on(Event::Report(&report));
        dirs.push(dir.root);
    }
    write_comparison(&dirs, &root.join("compare.html"))
}

/// Refuses to reuse or resume `run` as `member` when its settings differ from `wanted`.
fn refuse_other_settings(run: &Run, member: &str, wanted: &crate::RunConfig) -> Result<()> {
    let changes = wanted.changes_since(run.config());
    if changes.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    let root = run.path().display();
    Err(GrokError::Usage(format!(
        "{root} already holds a run of {member} with other settings ({}, on disk → asked): it is \
         neither reused nor overwritten. Pass another --out for a new comparison{}",
        listed.join(", "),
        if changes.iter().all(|c| c.is_resumable()) {
            format!(", or continue it with `groklens train --resume {root} --set …`")
        } else {
            String::new()
        }
    )))
}
