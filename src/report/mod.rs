//! `groklens report RUN_DIR`: one self-contained HTML page per run (plotly.js embedded, works
//! offline) with sections Training, Progress measures, Embedding, Neurons, Logits, Attention and, for
//! quantized runs, Quantized weights, plus a short text summary for the terminal; the pages of the
//! other task kinds ([`sequence`], [`compound`]); `groklens compare`, one page setting several runs
//! side by side ([`compare`]); and `groklens sweep report`, one page over a sweep ([`sweep`]).

pub mod compare;
pub mod compound;
pub mod figures;
pub mod page;
pub mod sections;
pub mod sequence;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::analysis::{
    analyze_modular_run, quantized::SETTLED_FRACTION, ModularAnalysis, CLUSTER_THRESHOLD,
};
use crate::error::Result;
use crate::tensor_io::write_bytes_atomic;
use page::escape;
use sections::sections;

/// What a report wrote and found: `A` is the analysis behind the page.
pub struct Written<A> {
    /// Path of `report.html`.
    pub path: PathBuf,
    /// Size of the page in bytes.
    pub bytes: usize,
    /// Seconds to analyse the run and write the page.
    pub seconds: f64,
    /// The analysis behind it.
    pub analysis: A,
}

/// What `report` wrote and found for a modular run.
pub type ModularReport = Written<ModularAnalysis>;

impl<A> Written<A> {
    /// The first line of the terminal summary: where the page is, its size and time.
    fn headline(&self) -> String {
        format!(
            "report: {} ({:.1} MB, {:.1} s)\n",
            self.path.display(),
            self.bytes as f64 / 1e6,
            self.seconds
        )
    }
}

/// Analyses the run in `dir` with `analyse`, renders its summary rows and sections with `page`, and
/// writes `dir/report.html`.
pub(crate) fn write_page<A>(
    dir: &Path,
    analyse: impl FnOnce(&Path) -> Result<A>,
    page: impl FnOnce(&A) -> (Vec<(String, String)>, Vec<page::Section>),
) -> Result<Written<A>> {
    let started = Instant::now();
    let analysis = analyse(dir)?;
    let title = format!(
        "groklens report — {}",
        dir.file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into())
    );
    let (rows, sections) = page(&analysis);
    let path = dir.join("report.html");
    let bytes = write_html(&path, &title, &rows, &sections)?;
    Ok(Written {
        path,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        analysis,
    })
}

/// Renders a page (title, summary rows, sections) and writes it to `path` atomically; returns its
/// size in bytes.
pub(crate) fn write_html(
    path: &Path,
    title: &str,
    rows: &[(String, String)],
    sections: &[page::Section],
) -> Result<usize> {
    let html = page::render(&escape(title), &page::summary_table(rows), sections);
    write_bytes_atomic(path, html.as_bytes())?;
    Ok(html.len())
}

impl ModularReport {
    /// A few lines for the terminal: grokking epoch, key frequencies, clusters, phase boundaries.
    pub fn text(&self) -> String {
        let a = &self.analysis;
        let mut out = self.headline();
        for note in &a.notes {
            out += &format!("note: {note}\n");
        }
        out += &format!(
            "grokking epoch (test acc >= 99%): {}\n",
            epoch(a.grokking_epoch)
        );
        out += &format!("key frequencies (embedding): {:?}\n", a.embed.key_freqs);
        if let Some(n) = &a.neurons {
            out += &format!(
                "neuron clusters (> {CLUSTER_THRESHOLD} of variance): frequencies {:?}, {:.1}% of neurons\n",
                n.fourier.cluster_freqs(),
                100.0 * n.fourier.clustered_fraction()
            );
            for d in n.fourier.disagreements(&a.embed.key_freqs) {
                out += &format!("note: {d}\n");
            }
        }
        out += &format!(
            "phases: memorisation ends {}, circuit formation ends {}, cleanup ends {}",
            epoch(a.phases.memorisation_end),
            epoch(a.phases.circuit_formation_end),
            epoch(a.phases.cleanup_end)
        );
        if let Some(q) = &a.quantized {
            out += &format!(
                "\nquantized weights settle ({:.0}% at their final level for good) at epoch {}",
                100.0 * SETTLED_FRACTION,
                q.trajectory
                    .settled_epoch()
                    .map_or("- (still changing at the end)".to_string(), |e| e
                        .to_string())
            );
        }
        out
    }
}

/// An epoch, or "not reached" for a milestone the run did not get to.
fn epoch(e: Option<usize>) -> String {
    e.map_or("not reached".to_string(), |e| e.to_string())
}

/// A run's last evaluation in one line, for summary tables.
pub(crate) fn last_evaluation(r: &crate::run::MetricsRow) -> String {
    format!(
        "epoch {} · train loss {:.3e}, acc {:.2}% · test loss {:.3e}, acc {:.2}%",
        r.epoch,
        r.train_loss,
        100.0 * r.train_acc,
        r.test_loss,
        100.0 * r.test_acc
    )
}

/// Analyses the run in `dir` and writes `dir/report.html`.
pub fn write_modular_report(dir: &Path) -> Result<ModularReport> {
    write_page(dir, analyze_modular_run, |a| (summary_rows(a), sections(a)))
}

/// The summary table's rows.
fn summary_rows(a: &ModularAnalysis) -> Vec<(String, String)> {
    let t = &a.cfg.task;
    let last = a.metrics.last();
    let mut rows = vec![
        ("Task", t.describe()),
        ("Model", a.cfg.model.describe()),
        ("Model analysed (epoch)", a.final_epoch.to_string()),
    ];
    rows.extend(a.notes.iter().map(|n| ("Note", n.clone())));
    if let Some(r) = last {
        rows.push(("Last evaluation", last_evaluation(r)));
    }
    rows.push(("Grokking epoch (test acc ≥ 99%)", epoch(a.grokking_epoch)));
    rows.push((
        "Key frequencies (embedding)",
        format!("{:?}", a.embed.key_freqs),
    ));
    if let Some(n) = &a.neurons {
        rows.push((
            "Neuron clusters (frequency: neurons)",
            format!(
                "{} — {:.1}% of {} neurons",
                n.fourier.cluster_sizes(),
                100.0 * n.fourier.clustered_fraction(),
                n.fourier.dominant.len()
            ),
        ));
        let notes = n.fourier.disagreements(&a.embed.key_freqs);
        rows.push((
            "Embedding vs clusters",
            if notes.is_empty() {
                "the same frequencies".to_string()
            } else {
                notes.join("; ")
            },
        ));
    }
    rows.push((
        "Phases end (memorisation / circuit formation / cleanup)",
        format!(
            "{} / {} / {}",
            epoch(a.phases.memorisation_end),
            epoch(a.phases.circuit_formation_end),
            epoch(a.phases.cleanup_end)
        ),
    ));
    if let Some(q) = &a.quantized {
        rows.push((
            "Quantized weights settle (epoch)",
            format!(
                "{} ({:.0}% of the quantized weights hold their final level for good from then on)",
                q.trajectory
                    .settled_epoch()
                    .map_or("still changing at the end".to_string(), |e| e.to_string()),
                100.0 * SETTLED_FRACTION
            ),
        ));
    }
    rows.push((
        "Checkpoints analysed",
        format!(
            "{} (+ the initial weights)",
            a.progress.len().saturating_sub(1)
        ),
    ));
    rows.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
