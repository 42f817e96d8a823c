//! `groklens compare RUN RUN… [--out page.html]`: one offline page that sets runs side by side — any
//! mix of families and task kinds — so "does the 1-bit network learn the same clock algorithm, and
//! when?" has one answer: overlaid loss and accuracy curves with each run's grokking epoch and phases
//! marked, and a table of milestones and final metrics, for every run; for the modular runs also the
//! embedding's per-frequency norms and the neuron clusters next to each other and the progress
//! measures overlaid. A run those sections cannot read (a compound or previous-token task) is named in
//! a note and left out of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::analysis::{analyze_modular_run, progress, ModularAnalysis, Phases};
use crate::config::RunConfig;
use crate::error::{GrokError, Result};
use crate::run::{grokking_epoch, is_run_dir, metrics, MetricsRow, RunDir, GROKKED_ACCURACY};
use crate::tensor_io::write_bytes_atomic;

use plotly::common::DashType;

use super::figures::{grouped_bars, overlay, run_colour, with_styled_vlines, Trace, VLine};
use super::page::{escape, render, Section};

/// One run of a comparison: what every task kind has (config, history, milestones) and, for a
/// modular run, the Fourier analysis its report shows.
pub struct ComparedRun {
    /// The run directory's name (its path when names repeat).
    pub label: String,
    /// The run's resolved config.
    pub cfg: RunConfig,
    /// Every metrics row.
    pub metrics: Vec<MetricsRow>,
    /// First evaluated epoch with test accuracy ≥ 99 %.
    pub grokking_epoch: Option<usize>,
    /// Phase boundaries from the metrics.
    pub phases: Phases,
    /// The modular analysis; `None` for task kinds it does not read.
    pub analysis: Option<ModularAnalysis>,
    /// What the reader must know about this run's column.
    pub notes: Vec<String>,
}

impl ComparedRun {
    /// Reads the run in `dir`: the full analysis for a modular task, config and history otherwise.
    pub fn open(label: String, dir: &Path) -> Result<Self> {
        let cfg = RunDir::new(dir).load_config()?;
        if cfg.task.modular().is_some() {
            let a = analyze_modular_run(dir)?;
            return Ok(ComparedRun {
                label,
                cfg: a.cfg.clone(),
                metrics: a.metrics.clone(),
                grokking_epoch: a.grokking_epoch,
                phases: a.phases,
                notes: a.notes.clone(),
                analysis: Some(a),
            });
        }
        let metrics = metrics::read(&RunDir::new(dir).metrics_path())?;
        let notes = vec![format!(
            "{} has task.kind = {}: key frequencies, neuron clusters and progress measures read functions of \
             two operands mod p, so this run has training curves and milestones only (its own report, \
             `groklens report {}`, has the sections for its task)",
            dir.display(),
            cfg.task.kind(),
            dir.display()
        )];
        Ok(ComparedRun {
            label,
            grokking_epoch: grokking_epoch(&metrics, GROKKED_ACCURACY),
            phases: progress::phases(&metrics),
            cfg,
            metrics,
            analysis: None,
            notes,
        })
    }
}

/// What `compare` wrote.
pub struct Comparison {
    /// The page.
    pub path: PathBuf,
    /// Size of the page in bytes.
    pub bytes: usize,
    /// Seconds to analyse the runs and write the page.
    pub seconds: f64,
    /// The runs, in the order given.
    pub runs: Vec<ComparedRun>,
}

impl Comparison {
    /// One line per run for the terminal.
    pub fn text(&self) -> String {
        let mut out = format!(
            "comparison: {} ({:.1} MB, {:.1} s)\n",
            self.path.display(),
            self.bytes as f64 / 1e6,
            self.seconds
        );
        for r in &self.runs {
            out += &format!("{}: grokked at {}", r.label, epoch(r.grokking_epoch));
            match &r.analysis {
                Some(a) => {
                    out += &format!(
                        ", key frequencies {:?}, clusters {}\n",
                        a.embed.key_freqs,
                        clusters(a)
                    )
                }
                None => out += &format!(" ({} task: training curves only)\n", r.cfg.task.kind()),
            }
        }
        out.trim_end().to_string()
    }
}

fn epoch(e: Option<usize>) -> String {
    e.map_or("—".to_string(), |e| e.to_string())
}

/// `freq: neurons` per cluster, or "no MLP".
fn clusters(a: &ModularAnalysis) -> String {
    match &a.neurons {
        None => "no MLP".into(),
        Some(n) if n.fourier.clusters.is_empty() => "none".into(),
        Some(n) => n.fourier.cluster_sizes(),
    }
}

/// Labels for run directories: their names, or their whole paths when two names are the same.
fn labels(dirs: &[PathBuf]) -> Vec<String> {
    let name = |d: &PathBuf| {
        d.file_name()
            .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into())
    };
    let names: Vec<String> = dirs.iter().map(name).collect();
    let unique = names.iter().collect::<BTreeSet<_>>().len() == names.len();
    if unique {
        names
    } else {
        dirs.iter().map(|d| d.display().to_string()).collect()
    }
}

/// Analyses every run in `dirs` and writes the comparison page to `out`.
pub fn write_comparison(dirs: &[PathBuf], out: &Path) -> Result<Comparison> {
    let started = Instant::now();
    if dirs.len() < 2 {
        return Err(GrokError::config(
            "compare",
            dirs.len(),
            "give at least two run directories to compare",
        ));
    }
    if let Some(d) = dirs.iter().find(|d| !is_run_dir(d)) {
        return Err(GrokError::file(
            d,
            "is not a run directory (no config.toml): train it with `groklens train` or `groklens grok`",
        ));
    }
    let inputs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    crate::run::check_output(out, &inputs, &[])?;
    let runs: Vec<ComparedRun> = labels(dirs)
        .into_iter()
        .zip(dirs)
        .map(|(label, d)| {
            ComparedRun::open(label, d)
                .map_err(|e| GrokError::file(d, format!("cannot be compared: {e}")))
        })
        .collect::<Result<_>>()?;
    let names: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    let html = render(
        &escape(&format!("groklens comparison — {}", names.join(" vs "))),
        &table(&runs),
        &sections(&runs),
    );
    write_bytes_atomic(out, html.as_bytes())?;
    Ok(Comparison {
        path: out.to_path_buf(),
        bytes: html.len(),
        seconds: started.elapsed().as_secs_f64(),
        runs,
    })
}

/// The training section for every run; the Fourier sections over the modular runs, when there are any.
fn sections(runs: &[ComparedRun]) -> Vec<Section> {
    let mut sections = vec![training_section(runs)];
    let modular: Vec<(usize, &ComparedRun, &ModularAnalysis)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.analysis.as_ref().map(|a| (i, r, a)))
        .collect();
    if !modular.is_empty() {
        sections.push(frequencies_section(&modular));
        sections.push(progress_section(runs, &modular));
    }
    sections
}

/// One run's column of the table: `(row name, value)` in row order.
fn column(r: &ComparedRun) -> Vec<(&'static str, String)> {
    let t = &r.cfg.task;
    let last = r.metrics.last();
    let at_end = |f: &dyn Fn(&MetricsRow) -> String| last.map_or("—".to_string(), f);
    let modular =
        |f: &dyn Fn(&ModularAnalysis) -> String| r.analysis.as_ref().map_or("—".into(), f);
    vec![
        ("Model", r.cfg.model.describe()),
        ("Task", t.describe()),
        (
            "Epochs trained (wall time)",
            at_end(&|r| format!("{} ({:.0} s)", r.epoch, r.elapsed_s)),
        ),
        ("Grokking epoch (test acc ≥ 99%)", epoch(r.grokking_epoch)),
        (
            "Memorisation ends (train acc ≥ 99%)",
            epoch(r.phases.memorisation_end),
        ),
        (
            "Circuit formation ends",
            epoch(r.phases.circuit_formation_end),
        ),
        ("Cleanup ends", epoch(r.phases.cleanup_end)),
        (
            "Key frequencies (embedding)",
            modular(&|a| format!("{:?}", a.embed.key_freqs)),
        ),
        ("Neuron clusters (frequency: neurons)", modular(&clusters)),
        (
            "Neurons in a cluster",
            modular(&|a| {
                a.neurons.as_ref().map_or("—".into(), |n| {
                    format!("{:.1}%", 100.0 * n.fourier.clustered_fraction())
                })
            }),
        ),
        (
            "Final train loss / acc",
            at_end(&|r| format!("{:.3e} / {:.2}%", r.train_loss, 100.0 * r.train_acc)),
        ),
        (
            "Final test loss / acc",
            at_end(&|r| format!("{:.3e} / {:.2}%", r.test_loss, 100.0 * r.test_acc)),
        ),
        (
            "Quantized weights settle",
            modular(&|a| {
                a.quantized.as_ref().map_or("full precision".into(), |q| {
                    q.trajectory
                        .settled_epoch()
                        .map_or("still changing at the end".into(), |e| e.to_string())
                })
            }),
        ),
    ]
}

/// The table: one column per run, then each run's notes.
fn table(runs: &[ComparedRun]) -> String {
    let columns: Vec<_> = runs.iter().map(column).collect();
    let mut html = String::from("<table class=\"summary\"><tr><td></td>");
    for (i, r) in runs.iter().enumerate() {
        html += &format!(
            "<td style=\"color:{}\"><b>{}</b></td>",
            run_colour(i),
            escape(&r.label)
        );
    }
    html += "</tr>";
    for (row, (name, _)) in columns[0].iter().enumerate() {
        html += &format!("<tr><td>{}</td>", escape(name));
        for c in &columns {
            html += &format!("<td>{}</td>", escape(&c[row].1));
        }
        html += "</tr>";
    }
    for (i, r) in runs.iter().enumerate() {
        for note in &r.notes {
            html += &format!(
                "<tr><td>Note ({})</td><td colspan=\"{}\" style=\"color:{}\">{}</td></tr>",
                escape(&r.label),
                runs.len(),
                run_colour(i),
                escape(note)
            );
        }
    }
    html + "</table>"
}

/// Each run's milestones in its colour: end of memorisation dotted, grokking dashed and labelled,
/// end of cleanup dash-dotted (only grokking is labelled, so close milestones stay legible).
fn milestones(runs: &[ComparedRun]) -> Vec<VLine> {
    let mut lines = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        for (e, dash, label) in [
            (r.phases.memorisation_end, DashType::Dot, String::new()),
            (
                r.grokking_epoch,
                DashType::Dash,
                format!("{} grokked", r.label),
            ),
            (r.phases.cleanup_end, DashType::DashDot, String::new()),
        ] {
            if let Some(e) = e {
                lines.push(VLine {
                    label,
                    x: e as f64,
                    colour: run_colour(i),
                    dash,
                });
            }
        }
    }
    lines
}

fn training_section(runs: &[ComparedRun]) -> Section {
    let marks = milestones(runs);
    let mut figures = Vec::new();
    for (title, y_title, train, test, log_y) in [
        (
            "Loss",
            "cross-entropy loss",
            (|r: &MetricsRow| r.train_loss) as fn(&MetricsRow) -> f64,
            (|r: &MetricsRow| r.test_loss) as fn(&MetricsRow) -> f64,
            true,
        ),
        (
            "Accuracy",
            "accuracy",
            |r: &MetricsRow| r.train_acc,
            |r: &MetricsRow| r.test_acc,
            false,
        ),
    ] {
        let traces = split_traces(runs, train, test);
        let mut plot = overlay(title, "epoch", y_title, &traces, log_y);
        with_styled_vlines(&mut plot, &marks);
        figures.push(plot);
    }
    Section {
        id: "training",
        title: "Training",
        intro: "Train (solid) and test (dashed) curves of every run, one colour per run. Vertical lines in \
                a run's colour mark where it memorised (train accuracy ≥ 99%; dotted), grokked (test \
                accuracy ≥ 99%; dashed, labelled) and finished cleaning up (dash-dotted; the phases of \
                its report)."
            .into(),
        figures,
    }
}

/// One trace per run and split of a pair of metrics columns (train solid, test dashed).
fn split_traces(
    runs: &[ComparedRun],
    train: fn(&MetricsRow) -> f64,
    test: fn(&MetricsRow) -> f64,
) -> Vec<Trace> {
    let mut traces = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let m = &r.metrics;
        let x: Vec<f64> = m.iter().map(|row| row.epoch as f64).collect();
        for (split, dashed, column) in [("train", false, train), ("test", true, test)] {
            traces.push(Trace {
                name: format!("{} {split}", r.label),
                x: x.clone(),
                y: m.iter().map(|row| column(row) as f32).collect(),
                colour: i,
                dashed,
            });
        }
    }
    traces
}

/// `(colour index, run, its analysis)` of each modular run.
type Modular<'a> = [(usize, &'a ComparedRun, &'a ModularAnalysis)];

fn frequencies_section(runs: &Modular) -> Section {
    // Per-frequency embedding norms, each run scaled to its largest, so runs of different widths
    // and weight norms share an axis.
    let traces: Vec<Trace> = runs
        .iter()
        .map(|&(i, r, a)| {
            let norms = &a.embed.freq_norms;
            let max = norms
                .iter()
                .fold(0f32, |m, &v| m.max(v))
                .max(f32::MIN_POSITIVE);
            Trace {
                name: r.label.clone(),
                x: (1..=norms.len()).map(|k| k as f64).collect(),
                y: norms.iter().map(|v| v / max).collect(),
                colour: i,
                dashed: false,
            }
        })
        .collect();
    let mut figures = vec![overlay(
        "Embedding norm per frequency (each run scaled to its largest)",
        "frequency k",
        "norm / largest",
        &traces,
        false,
    )];
    let freqs: BTreeSet<usize> = runs
        .iter()
        .filter_map(|(_, _, a)| a.neurons.as_ref())
        .flat_map(|n| n.fourier.clusters.iter().map(|c| c.freq))
        .collect();
    if !freqs.is_empty() {
        let categories: Vec<String> = freqs.iter().map(|k| format!("freq {k}")).collect();
        let series: Vec<(&str, Vec<f32>)> = runs
            .iter()
            .map(|&(_, r, a)| {
                let sizes = freqs
                    .iter()
                    .map(|&k| {
                        a.neurons
                            .as_ref()
                            .map_or(0.0, |n| n.fourier.usage(k).clustered as f32)
                    })
                    .collect();
                (r.label.as_str(), sizes)
            })
            .collect();
        figures.push(grouped_bars(
            "Neurons per frequency cluster",
            "cluster",
            "neurons",
            &categories,
            &series,
        ));
    }
    let shared: Vec<usize> = runs
        .iter()
        .map(|(_, _, a)| a.embed.key_freqs.iter().copied().collect::<BTreeSet<_>>())
        .reduce(|a, b| a.intersection(&b).copied().collect())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let shared = if shared.is_empty() {
        "none".to_string()
    } else {
        format!("{shared:?}")
    };
    Section {
        id: "frequencies",
        title: "Frequencies",
        intro: format!(
            "Which frequencies each run's embedding and neurons use. Key frequencies shared by every \
             run: {}. Models trained from different initialisations usually pick different \
             frequencies; the same algorithm shows as a few standout frequencies and neuron clusters \
             on them, whichever they are.",
            shared
        ),
        figures,
    }
}

fn progress_section(all: &[ComparedRun], runs: &Modular) -> Section {
    let marks = milestones(all);
    let point_traces =
        |f: &dyn Fn(&crate::analysis::ProgressPoint) -> Option<f64>, dashed: bool, what: &str| {
            runs.iter()
                .filter(|(_, _, a)| a.progress.iter().any(|p| f(p).is_some()))
                .map(|&(i, r, a)| Trace {
                    name: format!("{} {what}", r.label),
                    x: a.progress.iter().map(|p| p.epoch as f64).collect(),
                    y: a.progress
                        .iter()
                        .map(|p| f(p).map_or(f32::NAN, |v| v as f32))
                        .collect(),
                    colour: i,
                    dashed,
                })
                .collect::<Vec<_>>()
        };
    let mut losses = point_traces(&|p| p.restricted_loss, false, "restricted");
    losses.extend(point_traces(&|p| p.excluded_loss, true, "excluded"));
    let mut figures = Vec::new();
    if !losses.is_empty() {
        let mut plot = overlay(
            "Restricted (solid) and excluded (dashed) loss",
            "epoch",
            "loss",
            &losses,
            true,
        );
        with_styled_vlines(&mut plot, &marks);
        figures.push(plot);
    }
    let mut plot = overlay(
        "Gini coefficient of the embedding's Fourier norms",
        "epoch",
        "Gini",
        &point_traces(&|p| Some(p.gini_embed), false, "W_E"),
        false,
    );
    with_styled_vlines(&mut plot, &marks);
    figures.push(plot);
    Section {
        id: "progress",
        title: "Progress measures",
        intro: "Nanda et al. (2023)'s measures at every checkpoint of every run, each against its own \
                final model's key frequencies: the restricted loss falls when the Fourier circuit forms, \
                before the test loss does; the excluded loss rises as the model stops relying on \
                memorisation."
            .into(),
        figures,
    }
}
