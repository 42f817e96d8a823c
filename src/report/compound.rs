//! The report of a compound-expression run (seed 000's `( a * b + c ) ^ d =`): training, the shared
//! embedding's Fourier norms, each operand's spectrum and key frequencies, attention from the last
//! position to every position, and test accuracy by exponent, with what they show in words.

use std::path::Path;

use crate::analysis::compound::{analyze_compound_run, CompoundAnalysis, CONTEXTS};
use crate::error::Result;
use crate::report::figures::{bars, grouped_bars, heatmap, training_curves, with_vlines};
use crate::report::page::Section;
use crate::report::{last_evaluation, write_page, Written};
use crate::tasks::compound::{CompoundTask, SYMBOLS};

/// What the compound report wrote and found.
pub type CompoundReport = Written<CompoundAnalysis>;

impl CompoundReport {
    /// A few lines for the terminal: the last evaluation, grokking epoch, the findings.
    pub fn text(&self) -> String {
        let a = &self.analysis;
        let mut out = self.headline();
        if let Some(r) = a.metrics.last() {
            out += &format!(
                "epoch {}: train acc {:.2}%, test loss {:.4e}, test acc {:.2}%\n",
                r.epoch,
                100.0 * r.train_acc,
                r.test_loss,
                100.0 * r.test_acc
            );
        }
        out += &format!(
            "grokking epoch (test acc ≥ 99%): {}\nembedding key frequencies: {:?}\n",
            a.grokking_epoch
                .map_or("not reached".to_string(), |e| e.to_string()),
            a.embed.key_freqs
        );
        for f in a.findings() {
            out += &format!("{f}\n");
        }
        out.trim_end().to_string()
    }
}

/// Analyses the compound-expression run in `dir` and writes `dir/report.html`.
pub fn write_compound_report(dir: &Path) -> Result<CompoundReport> {
    write_page(dir, analyze_compound_run, |a| (summary(a), sections(a)))
}

/// The summary table's rows.
fn summary(a: &CompoundAnalysis) -> Vec<(String, String)> {
    let mut rows = vec![
        ("Task".to_string(), a.cfg.task.describe()),
        ("Model".to_string(), a.cfg.model.describe()),
        (
            "Model analysed (epoch)".to_string(),
            a.final_epoch.to_string(),
        ),
    ];
    rows.extend(a.notes.iter().map(|n| ("Note".to_string(), n.clone())));
    if let Some(r) = a.metrics.last() {
        rows.push(("Last evaluation".to_string(), last_evaluation(r)));
    }
    rows.push((
        "Grokking epoch (test acc ≥ 99%)".to_string(),
        a.grokking_epoch
            .map_or("not reached".to_string(), |e| e.to_string()),
    ));
    rows.push((
        "Key frequencies (embedding, shared by a, b, c, d)".to_string(),
        format!("{:?}", a.embed.key_freqs),
    ));
    for o in &a.operands {
        rows.push((
            format!("Key frequencies (operand {})", o.name),
            format!(
                "{:?} ({:.0}% of the response's variance)",
                o.key_freqs,
                100.0 * o.key_share
            ),
        ));
    }
    rows.extend(a.findings().into_iter().map(|f| ("Finding".to_string(), f)));
    rows
}

fn sections(a: &CompoundAnalysis) -> Vec<Section> {
    let p = a.task.p;
    let freqs: Vec<String> = (1..=p / 2).map(|k| k.to_string()).collect();
    let mut curves = training_curves(&a.metrics, "epoch", ["train", "test"]);
    if let Some(e) = a.grokking_epoch {
        for plot in &mut curves {
            with_vlines(plot, &[("grokked".to_string(), e as f64)]);
        }
    }
    let training = Section {
        id: "training",
        title: "Training",
        intro: format!(
            "Full-batch training over the train split of the p⁴ = {} expressions; the test curve is \
             the held-out split.",
            a.task.rows()
        ),
        figures: curves,
    };
    let embedding = Section {
        id: "embedding",
        title: "Embedding in the Fourier basis",
        intro: format!(
            "W_E's rows for the numbers 0..{p} in the Fourier basis over Z_{p}, one norm per frequency. \
             All four operands read the same table (only their positions differ), so this spectrum is \
             theirs in common; key frequencies {:?}.",
            a.embed.key_freqs
        ),
        figures: vec![bars(
            "Embedding norm per frequency",
            "frequency k",
            "norm",
            &freqs,
            &a.embed.freq_norms,
        )],
    };
    let series: Vec<(&str, Vec<f32>)> = a
        .operands
        .iter()
        .map(|o| (o.name, o.freq_share.clone()))
        .collect();
    let operands = Section {
        id: "operands",
        title: "Each operand's Fourier spectrum",
        intro: format!(
            "For each operand, every value 0..{p} substituted into the same {CONTEXTS} random contexts \
             (values of the other three), the mean of <code>{}</code> at the last position per value, \
             and that response's power per frequency over the value, as a share of its total. A \
             modular-arithmetic circuit concentrates it on a few key frequencies; the exponent d acts \
             multiplicatively, so its spectrum need not be sparse.",
            a.response_hook
        ),
        figures: vec![grouped_bars(
            "Share of the response's power per frequency, by operand",
            "frequency k",
            "share of power",
            &freqs,
            &series,
        )],
    };
    let positions: Vec<String> = (0..CompoundTask::LEN)
        .map(|i| position_label(i, &a.task))
        .collect();
    let attention = Section {
        id: "attention",
        title: "Attention from the last position",
        intro: "Mean attention from the final <code>=</code> to every position, per head, over the rows \
                the operand spectra read."
            .into(),
        figures: vec![heatmap(
            "Attention from the last position",
            "key position",
            "head",
            &a.attention_from_last,
            Some(&positions),
            Some(&a.heads),
        )],
    };
    let exponents: Vec<String> = (0..p).map(|d| d.to_string()).collect();
    let accuracy: Vec<f32> = a.accuracy_by_exponent.clone();
    let exponent = Section {
        id: "exponent",
        title: "Test accuracy by exponent",
        intro: format!(
            "Accuracy on the first {} rows of the shuffled test split, by the exponent d. d = 0 is \
             always 1 and d = 1 is a·b + c itself; larger exponents need the whole computation.",
            a.scored_rows
        ),
        figures: vec![bars(
            "Test accuracy by exponent",
            "exponent d",
            "accuracy",
            &exponents,
            &accuracy,
        )],
    };
    vec![training, embedding, operands, attention, exponent]
}

/// `"0 ("` … `"8 d"`: a position and what stands there.
fn position_label(i: usize, task: &CompoundTask) -> String {
    let mut tokens = Vec::new();
    task.write(0, &mut tokens);
    let t = tokens[i] as usize;
    let what = match CompoundTask::OPERAND_POSITIONS.iter().position(|&q| q == i) {
        Some(k) => crate::analysis::compound::OPERANDS[k],
        None => SYMBOLS[t - task.p],
    };
    format!("{i} {what}")
}
