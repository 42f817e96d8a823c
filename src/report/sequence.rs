//! The report of a previous-token run (seed 003's notebook as a page): training, loss per position,
//! attention, direct logit attribution, the folded model's circuits, MLP activations and the
//! mean-ablation of every hook point, with what they show said in words.

use std::path::Path;

use crate::analysis::sequence::{analyze_sequence_run, SequenceAnalysis, CIRCUIT_TOKENS};
use crate::error::Result;
use crate::linalg::Matrix;
use crate::report::figures::{bars, heatmap, lines, training_curves};
use crate::report::page::Section;
use crate::report::{write_page, Written};

/// What the sequence report wrote and found.
pub type SequenceReport = Written<SequenceAnalysis>;

impl SequenceReport {
    /// A few lines for the terminal: final loss, the findings, the top ablation rows.
    pub fn text(&self) -> String {
        let a = &self.analysis;
        let mut out = self.headline();
        if let Some(r) = a.metrics.last() {
            out += &format!(
                "step {}: evaluation loss {:.4e}, accuracy {:.2}%\n",
                r.epoch,
                r.test_loss,
                100.0 * r.test_acc
            );
        }
        for f in a.findings() {
            out += &format!("{f}\n");
        }
        let clean = a.ablation.first().map_or(0.0, |r| r.loss);
        out += &format!("mean-ablation (clean loss {clean:.4e}), largest first:\n");
        for r in a.ablation_sorted().into_iter().take(5) {
            out += &format!("  {:<36} {:.4e}\n", r.hook, r.loss);
        }
        out.trim_end().to_string()
    }
}

/// Analyses the previous-token run in `dir` and writes `dir/report.html`.
pub fn write_sequence_report(dir: &Path) -> Result<SequenceReport> {
    write_page(dir, analyze_sequence_run, |a| (summary(a), sections(a)))
}

/// The summary table's rows.
fn summary(a: &SequenceAnalysis) -> Vec<(String, String)> {
    let mut rows = vec![
        ("Task".to_string(), a.cfg.task.describe()),
        ("Model".to_string(), a.cfg.model.describe()),
        (
            "Model analysed (step)".to_string(),
            a.final_step.to_string(),
        ),
    ];
    if let Some(r) = a.metrics.last() {
        rows.push((
            "Last evaluation".to_string(),
            format!(
                "step {} · batch loss {:.3e} · evaluation loss {:.3e}, accuracy {:.2}%",
                r.epoch,
                r.train_loss,
                r.test_loss,
                100.0 * r.test_acc
            ),
        ));
    }
    rows.extend(a.findings().into_iter().map(|f| ("Finding".to_string(), f)));
    rows
}

fn sections(a: &SequenceAnalysis) -> Vec<Section> {
    let n_ctx = a.loss_by_position.len() + 1;
    let positions: Vec<f64> = (1..n_ctx).map(|p| p as f64).collect();
    let training = Section {
        id: "training",
        title: "Training",
        intro:
            "Every step trains on a fresh batch of random sequences, so the batch loss is already \
                a held-out loss; the evaluation set is a fixed batch drawn from its own seed."
                .into(),
        figures: training_curves(&a.metrics, "step", ["batch", "evaluation"]),
    };
    let per_position = Section {
        id: "positions",
        title: "Loss by position",
        intro:
            "Mean loss of predicting token i − 1 at position i over the evaluation rows analysed."
                .into(),
        figures: vec![lines(
            "Loss by position",
            "position",
            "loss",
            &positions,
            &[("loss", a.loss_by_position.clone())],
            true,
        )],
    };
    let mut attention_figures = Vec::new();
    for (h, (mean, example)) in a
        .heads
        .iter()
        .zip(a.mean_patterns.iter().zip(&a.example_patterns))
    {
        attention_figures.push(heatmap(
            &format!("{h}: mean attention"),
            "key position",
            "query position",
            mean,
            None,
            None,
        ));
        attention_figures.push(heatmap(
            &format!("{h}: attention on the first evaluation row"),
            "key position",
            "query position",
            example,
            None,
            None,
        ));
    }
    let all_positions: Vec<f64> = (0..n_ctx).map(|p| p as f64).collect();
    let bos: Vec<(&str, Vec<f32>)> = a
        .heads
        .iter()
        .zip(&a.bos_attention)
        .map(|(h, v)| (h.as_str(), v.clone()))
        .chain(std::iter::once((
            "1/(i+1)",
            (0..n_ctx).map(|i| 1.0 / (i as f32 + 1.0)).collect(),
        )))
        .collect();
    attention_figures.push(lines(
        "Attention to BOS by query position",
        "query position",
        "attention weight",
        &all_positions,
        &bos,
        false,
    ));
    let attention = Section {
        id: "attention",
        title: "Attention",
        intro: format!(
            "Mean attention pattern of every head over the analysed rows, one example's, and each head's \
             attention to BOS by position. Share of attention on the previous token: {}.",
            a.heads
                .iter()
                .zip(&a.previous_token_share)
                .map(|(h, s)| format!("{h} {:.0}%", 100.0 * s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        figures: attention_figures,
    };
    let dla_series: Vec<(&str, Vec<f32>)> = a
        .dla_labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), row(&a.dla, i)))
        .collect();
    let dla = Section {
        id: "dla",
        title: "Direct logit attribution",
        intro: "Each component's direct contribution to the logit of the correct previous token at each \
                position: its residual-stream output divided by the final LayerNorm's scale, through \
                ln_final.w·W_U, centred over the vocabulary (seed 003's plot), averaged over the rows."
            .into(),
        figures: vec![lines("Direct logit attribution to the previous token", "position", "logit contribution", &positions, &dla_series, false)],
    };
    let mut circuit_figures = Vec::new();
    for (h, (qk, ov)) in a.heads.iter().zip(a.full_qk.iter().zip(&a.full_ov)) {
        circuit_figures.push(heatmap(
            &format!("{h}: full QK circuit W_E W_Q W_Kᵀ W_Eᵀ"),
            "key token",
            "query token",
            qk,
            None,
            None,
        ));
        circuit_figures.push(heatmap(
            &format!("{h}: full OV circuit W_E W_V W_O W_U"),
            "output token",
            "attended token",
            ov,
            None,
            None,
        ));
    }
    let circuits = Section {
        id: "circuits",
        title: "Circuits of the folded model",
        intro: format!(
            "The model after fold_ln, centring of writing weights and of W_U, and folding of value biases \
             (TransformerLens's processing), on the first {CIRCUIT_TOKENS} tokens. Without positional \
             embeddings the QK circuit can only score tokens against tokens; an OV circuit that copies \
             shows as a bright diagonal."
        ),
        figures: circuit_figures,
    };
    let mut neuron_figures = Vec::new();
    for (l, (acts, active)) in a.neuron_acts.iter().zip(&a.active_share).enumerate() {
        neuron_figures.push(heatmap(
            &format!("Block {l} MLP: mean activation by position"),
            "neuron",
            "position",
            acts,
            None,
            None,
        ));
        neuron_figures.push(lines(
            &format!("Block {l} MLP: share of neurons active"),
            "position",
            "share active",
            &all_positions,
            &[("active", active.clone())],
            false,
        ));
    }
    let neurons = Section {
        id: "neurons",
        title: "MLP neurons by position",
        intro: "Mean post-activation of every neuron at every position; neurons whose activity changes \
                with position can carry the position forward."
            .into(),
        figures: neuron_figures,
    };
    let sorted = a.ablation_sorted();
    let clean = a.ablation.first().map_or(0.0, |r| r.loss);
    let names: Vec<String> = sorted.iter().map(|r| r.hook.clone()).collect();
    let losses: Vec<f32> = sorted.iter().map(|r| r.loss as f32).collect();
    let ablation = Section {
        id: "ablation",
        title: "Mean-ablation of every hook point",
        intro: format!(
            "The loss on a fresh batch (rows beyond every training step) when one hook point's activation \
             is replaced by its mean over the analysed rows, largest first; the clean loss is {clean:.4e}. \
             Top rows: {}.",
            sorted
                .iter()
                .take(5)
                .map(|r| format!("{} {:.3}", r.hook, r.loss))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        figures: vec![bars("Loss with the hook point mean-ablated", "hook point", "loss", &names, &losses)],
    };
    vec![
        training,
        per_position,
        attention,
        dla,
        circuits,
        neurons,
        ablation,
    ]
}

/// Row `i` of `m`.
fn row(m: &Matrix, i: usize) -> Vec<f32> {
    m.data[i * m.cols..(i + 1) * m.cols].to_vec()
}
