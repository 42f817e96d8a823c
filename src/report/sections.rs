//! The report's sections, one function each, in page order: Training, Progress measures, Embedding,
//! Neurons, Logits, Attention. Each turns part of a [`ModularAnalysis`] into a paragraph and figures.

use crate::analysis::{
    embedding, neurons::neuron_map, quantized::SETTLED_FRACTION, ModularAnalysis, ProgressPoint,
    CLUSTER_THRESHOLD, PCA_SECOND_OPERAND,
};
use crate::linalg::Matrix;
use crate::run::MetricsRow;
use crate::tasks::Layout;

use super::figures::{bars, category_lines, heatmap, labelled_points, lines, with_vlines};
use super::page::Section;

/// The report's sections in page order; those that do not apply to the model (neurons without an
/// MLP, attention without attention layers) are left out.
pub fn sections(a: &ModularAnalysis) -> Vec<Section> {
    [
        Some(training_section(a)),
        Some(progress_section(a)),
        Some(embedding_section(a)),
        neurons_section(a),
        logits_section(a),
        attention_section(a),
        quantized_section(a),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn phase_lines(a: &ModularAnalysis) -> Vec<(String, f64)> {
    [
        ("memorisation ends", a.phases.memorisation_end),
        ("circuit formation ends", a.phases.circuit_formation_end),
        ("cleanup ends", a.phases.cleanup_end),
    ]
    .into_iter()
    .filter_map(|(l, e)| e.map(|e| (l.to_string(), e as f64)))
    .collect()
}

fn column(rows: &[MetricsRow], f: impl Fn(&MetricsRow) -> f64) -> Vec<f32> {
    rows.iter().map(|r| f(r) as f32).collect()
}

fn training_section(a: &ModularAnalysis) -> Section {
    let m = &a.metrics;
    let x: Vec<f64> = m.iter().map(|r| r.epoch as f64).collect();
    let loss = lines(
        "Loss",
        "epoch",
        "cross-entropy loss",
        &x,
        &[
            ("train", column(m, |r| r.train_loss)),
            ("test", column(m, |r| r.test_loss)),
        ],
        true,
    );
    let acc = lines(
        "Accuracy",
        "epoch",
        "accuracy",
        &x,
        &[
            ("train", column(m, |r| r.train_acc)),
            ("test", column(m, |r| r.test_acc)),
        ],
        false,
    );
    let norm = lines(
        "Total sum of squared weights",
        "epoch",
        "Σ w²",
        &x,
        &[("weights", column(m, |r| r.weight_norm_sq))],
        false,
    );
    let mut figures = vec![loss, acc, norm];
    // Rows written before the column existed hold NaN; draw the curve when any row has a value.
    let spectral: Vec<&MetricsRow> = m
        .iter()
        .filter(|r| r.output_spectral_norm.is_finite())
        .collect();
    if !spectral.is_empty() {
        let xs: Vec<f64> = spectral.iter().map(|r| r.epoch as f64).collect();
        let ys = spectral
            .iter()
            .map(|r| r.output_spectral_norm as f32)
            .collect();
        figures.push(lines(
            "Spectral norm of the output layer (seed 002)",
            "epoch",
            "largest singular value",
            &xs,
            &[("output layer", ys)],
            false,
        ));
    }
    Section {
        id: "training",
        title: "Training",
        intro: "Loss (log scale) and accuracy on the train and test splits at every evaluation, the \
                total sum of squared weights that weight decay pushes down, and the largest singular \
                value of the output layer's weight."
            .into(),
        figures,
    }
}

fn progress_section(a: &ModularAnalysis) -> Section {
    let x: Vec<f64> = a.progress.iter().map(|p| p.epoch as f64).collect();
    let vlines = phase_lines(a);
    // One value per checkpoint; `None` (a measure this model does not have) is drawn as a gap.
    let per_checkpoint = |f: &dyn Fn(&ProgressPoint) -> Option<f64>| -> Vec<f32> {
        a.progress
            .iter()
            .map(|p| f(p).map_or(f32::NAN, |v| v as f32))
            .collect()
    };
    // A metrics column at the checkpoint epochs, from the last evaluation at or before each.
    let metric = |f: fn(&MetricsRow) -> f64| {
        per_checkpoint(&|p| a.metrics.iter().rev().find(|r| r.epoch <= p.epoch).map(f))
    };
    let phased = |title: &str, y_title: &str, series: &[(&str, Vec<f32>)], log_y: bool| {
        let mut plot = lines(title, "epoch", y_title, &x, series, log_y);
        with_vlines(&mut plot, &vlines);
        plot
    };

    let mut loss_series = vec![
        ("train", metric(|r| r.train_loss)),
        ("test", metric(|r| r.test_loss)),
    ];
    if a.progress.iter().any(|p| p.restricted_loss.is_some()) {
        loss_series.push((
            "restricted (key frequencies only)",
            per_checkpoint(&|p| p.restricted_loss),
        ));
        loss_series.push((
            "excluded (key frequencies removed, train)",
            per_checkpoint(&|p| p.excluded_loss),
        ));
    }
    let mut gini_series = vec![(
        "Gini of W_E Fourier norms",
        per_checkpoint(&|p| Some(p.gini_embed)),
    )];
    if a.progress.iter().any(|p| p.gini_logit.is_some()) {
        gini_series.push((
            "Gini of W_L = W_out·W_U Fourier norms",
            per_checkpoint(&|p| p.gini_logit),
        ));
    }
    let figures = vec![
        phased("Progress measures: losses", "loss", &loss_series, true),
        phased(
            "Accuracy at each checkpoint",
            "accuracy",
            &[
                ("train", metric(|r| r.train_acc)),
                ("test", metric(|r| r.test_acc)),
            ],
            false,
        ),
        phased(
            "Sparsity in frequency (Gini coefficient)",
            "Gini",
            &gini_series,
            false,
        ),
        phased(
            "Total sum of squared weights at each checkpoint",
            "Σ w²",
            &[("weights", per_checkpoint(&|p| Some(p.weight_norm_sq)))],
            false,
        ),
    ];
    Section {
        id: "progress",
        title: "Progress measures",
        intro: format!(
            "Nanda et al. (2023)'s measures at the initial weights and each of {} checkpoints, using the final model's key \
             frequencies {:?}. Restricted loss keeps only the key-frequency directions of the logits \
             (over all inputs); excluded loss removes them (on the train set). Dashed lines: end of \
             memorisation (train accuracy ≥ 99%), end of circuit formation and end of cleanup (test loss \
             10% and 90% of the way down, on a log scale, from its peak to its minimum). Computed in {:.1} s.",
            a.progress.len().saturating_sub(1),
            a.embed.key_freqs,
            a.progress_seconds
        ),
        figures,
    }
}

fn freq_labels(n: usize) -> Vec<String> {
    (1..=n).map(|k| format!("freq {k}")).collect()
}

fn embedding_section(a: &ModularAnalysis) -> Section {
    let b = &a.basis;
    let p = b.p();
    let names = b.names();
    let dims: Vec<String> = (0..a.embed.fourier.cols).map(|i| i.to_string()).collect();
    let mut figures = vec![
        heatmap(
            "Embedding in the Fourier basis",
            "residual stream dimension",
            "Fourier component",
            &a.embed.fourier,
            Some(&dims),
            Some(names),
        ),
        category_lines(
            "Norms of the embedding in the Fourier basis",
            "Fourier component",
            "norm",
            names,
            &[("‖(B·W_E)[i]‖", a.embed.component_norms.clone())],
        ),
        category_lines(
            "Embedding norm per frequency (key frequencies stand out)",
            "frequency",
            "norm",
            &freq_labels(b.n_freqs()),
            &[("√(‖sin k‖² + ‖cos k‖²)", a.embed.freq_norms.clone())],
        ),
    ];
    let (key_names, gram) = &a.key_dots;
    if !key_names.is_empty() {
        figures.push(heatmap(
            "Dot products of the key Fourier components of the embedding",
            "component",
            "component",
            gram,
            Some(key_names),
            Some(key_names),
        ));
    }
    let xs: Vec<f64> = (0..p).map(|x| x as f64).collect();
    let mut cos_series: Vec<(String, Vec<f32>)> = a
        .embed
        .key_freqs
        .iter()
        .map(|&k| (format!("Cos {k}"), b.row(b.cos_index(k)).to_vec()))
        .collect();
    cos_series.push((
        "mean (constructive interference)".into(),
        a.interference.clone(),
    ));
    let series: Vec<(&str, Vec<f32>)> = cos_series
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    figures.push(lines(
        "Cosines of the key frequencies and their mean: constructive interference at x = 0",
        "x",
        "value",
        &xs,
        &series,
        false,
    ));
    let idx: Vec<f64> = (0..a.svd.singular_values.len()).map(|i| i as f64).collect();
    figures.push(lines(
        "Singular values of W_E and of a random Gaussian control",
        "index",
        "singular value",
        &idx,
        &[
            ("W_E", a.svd.singular_values.clone()),
            ("Gaussian control", a.svd.control_singular_values.clone()),
        ],
        false,
    ));
    for (title, pcs) in [
        (
            "Principal components of the embedding (left singular vectors)",
            &a.svd.top_components,
        ),
        (
            "Principal components of the Gaussian control",
            &a.svd.control_top_components,
        ),
    ] {
        let labels: Vec<String> = (0..pcs.rows).map(|i| format!("PC {i}")).collect();
        let series: Vec<(&str, Vec<f32>)> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l.as_str(),
                    pcs.data[i * pcs.cols..(i + 1) * pcs.cols].to_vec(),
                )
            })
            .collect();
        figures.push(lines(title, "input x", "value", &xs, &series, false));
    }
    let numbers: Vec<String> = (0..p).map(|x| x.to_string()).collect();
    for &k in a.embed.key_freqs.iter().take(4) {
        figures.push(labelled_points(
            &format!("Key frequency {k}: number embeddings lie on a circle"),
            &format!("along the embedding's Cos {k} direction"),
            &format!("along the embedding's Sin {k} direction"),
            &embedding::key_plane(b, &a.embed, &a.numbers_embedding, k),
            &numbers,
        ));
    }
    let pct = |v: &[f32], i: usize| 100.0 * v.get(i).copied().unwrap_or(0.0);
    figures.push(labelled_points(
        &format!(
            "PCA of the number embeddings ({:.0}% + {:.0}% of variance)",
            pct(&a.embed_pca.explained, 0),
            pct(&a.embed_pca.explained, 1)
        ),
        "PC 1",
        "PC 2",
        &a.embed_pca.coords,
        &numbers,
    ));
    figures.push(labelled_points(
        &format!(
            "PCA of the output logits for inputs (x, {}) ({:.0}% + {:.0}% of variance)",
            PCA_SECOND_OPERAND % p,
            pct(&a.output_pca.explained, 0),
            pct(&a.output_pca.explained, 1)
        ),
        "PC 1",
        "PC 2",
        &a.output_pca.coords,
        &numbers,
    ));
    Section {
        id: "embedding",
        title: "Embedding",
        intro: format!(
            "W_E's rows for the numbers 0..{} in the Fourier basis over Z_{p} (Constant, then Sin k / Cos k \
             for k = 1..{}). A grokked model uses a few key frequencies — found here as {:?} by cutting the \
             sorted per-frequency norms at their largest ratio — and its singular values fall off a cliff \
             the Gaussian control does not have.",
            p - 1,
            b.n_freqs(),
            a.embed.key_freqs
        ),
        figures,
    }
}

fn neurons_section(a: &ModularAnalysis) -> Option<Section> {
    let n = a.neurons.as_ref()?;
    let p = a.basis.p();
    let names = a.basis.names();
    let nums: Vec<String> = (0..p).map(|x| x.to_string()).collect();
    let mut figures = Vec::new();
    for neuron in 0..4.min(n.acts.cols) {
        figures.push(heatmap(
            &format!("Neuron {neuron}: activation over inputs (a, b)"),
            "b",
            "a",
            &neuron_map(&n.acts, p, neuron),
            Some(&nums),
            Some(&nums),
        ));
    }
    let mut shown = vec![0];
    if let Some(big) = n.fourier.clusters.iter().max_by_key(|c| c.neurons.len()) {
        if big.neurons[0] != 0 {
            shown.push(big.neurons[0]);
        }
    }
    for &neuron in &shown {
        let mut ft = a.basis.transform_2d(&neuron_map(&n.acts, p, neuron));
        ft.data[0] = 0.0; // the constant term dwarfs the rest and is not part of the analysis
        figures.push(heatmap(
            &format!(
                "2-D Fourier transform of neuron {neuron} (frequency {}, {:.0}% explained)",
                n.fourier.dominant[neuron].0,
                100.0 * n.fourier.dominant[neuron].1
            ),
            "component of b",
            "component of a",
            &ft,
            Some(names),
            Some(names),
        ));
    }
    let neuron_ids: Vec<String> = (0..n.acts.cols).map(|i| i.to_string()).collect();
    figures.push(heatmap(
        "Fraction of each neuron's variance explained by each frequency",
        "neuron",
        "frequency",
        &n.fourier.frac_explained,
        Some(&neuron_ids),
        Some(&freq_labels(a.basis.n_freqs())),
    ));
    let mut best: Vec<f32> = n.fourier.dominant.iter().map(|d| d.1).collect();
    best.sort_by(f32::total_cmp);
    let xs: Vec<f64> = (0..best.len()).map(|i| i as f64).collect();
    figures.push(lines(
        "Largest fraction explained by one frequency, neurons sorted",
        "neuron (sorted)",
        "fraction of variance",
        &xs,
        &[
            ("max over frequencies", best),
            ("cluster threshold", vec![CLUSTER_THRESHOLD; xs.len()]),
        ],
        false,
    ));
    let labels: Vec<String> = n
        .fourier
        .clusters
        .iter()
        .map(|c| format!("freq {}", c.freq))
        .collect();
    let counts: Vec<f32> = n
        .fourier
        .clusters
        .iter()
        .map(|c| c.neurons.len() as f32)
        .collect();
    if !labels.is_empty() {
        figures.push(bars(
            "Neurons per frequency cluster",
            "cluster",
            "neurons",
            &labels,
            &counts,
        ));
    }
    Some(Section {
        id: "neurons",
        title: "Neurons",
        intro: format!(
            "The last block's MLP activations at the last position over all {} inputs. A neuron joins \
             frequency k's cluster when k explains more than {CLUSTER_THRESHOLD} of its variance (the 2-D \
             components built from Constant, Sin k and Cos k, the constant term left out): {:.1}% of \
             neurons fall in a cluster, at frequencies {:?}.",
            p * p,
            100.0 * n.fourier.clustered_fraction(),
            n.fourier.cluster_freqs()
        ),
        figures,
    })
}

fn logits_section(a: &ModularAnalysis) -> Option<Section> {
    let n = a.neurons.as_ref()?;
    let names = a.basis.names();
    let mut figures = vec![category_lines(
        &format!(
            "W_logit = {} in the Fourier basis (all neurons)",
            n.logit_map_name
        ),
        "Fourier component of the output",
        "norm",
        names,
        &[("all neurons", n.logit_norms.clone())],
    )];
    if !n.cluster_logit_norms.is_empty() {
        let labels: Vec<String> = n
            .cluster_logit_norms
            .iter()
            .map(|(k, _)| format!("freq {k} neurons"))
            .collect();
        let series: Vec<(&str, Vec<f32>)> = labels
            .iter()
            .zip(&n.cluster_logit_norms)
            .map(|(l, (_, v))| (l.as_str(), v.clone()))
            .collect();
        figures.push(category_lines(
            "W_logit in the Fourier basis, per neuron cluster",
            "Fourier component of the output",
            "norm",
            names,
            &series,
        ));
    }
    Some(Section {
        id: "logits",
        title: "Logits",
        intro: "How neurons write to the logits: each cluster's rows of W_logit should live on its own \
                frequency, so the logits are sums of cos(w(a + b − c)) terms."
            .into(),
        figures,
    })
}

fn attention_section(a: &ModularAnalysis) -> Option<Section> {
    if a.attention.is_empty() {
        return None;
    }
    let p = a.basis.p();
    let nums: Vec<String> = (0..p).map(|x| x.to_string()).collect();
    let positions: Vec<String> = match a.cfg.task.modular()?.layout {
        Layout::ABEq => vec!["a".into(), "b".into(), "=".into()],
        Layout::AOpBEq => vec!["a".into(), "op".into(), "b".into(), "=".into()],
    };
    let mut figures = Vec::new();
    for (layer, summary) in a.attention.iter().enumerate() {
        let heads: Vec<String> = (0..summary.mean_from_last.rows)
            .map(|h| format!("head {h}"))
            .collect();
        figures.push(heatmap(
            &format!("Layer {layer}: mean attention from the last position"),
            "source position",
            "head",
            &summary.mean_from_last,
            Some(&positions),
            Some(&heads),
        ));
        for (target, maps) in [("a", &summary.to_a), ("b", &summary.to_b)] {
            for (h, m) in maps.iter().enumerate() {
                figures.push(attention_map(layer, h, target, m, &nums));
            }
        }
    }
    Some(Section {
        id: "attention",
        title: "Attention",
        intro: "Attention from the last position: averaged over all inputs, and per head as a map over (a, b) \
                of the weight on operand a and on operand b."
            .into(),
        figures,
    })
}

fn attention_map(
    layer: usize,
    head: usize,
    target: &str,
    m: &Matrix,
    nums: &[String],
) -> plotly::Plot {
    heatmap(
        &format!("Layer {layer} head {head}: attention from the last position to {target}"),
        "b",
        "a",
        m,
        Some(nums),
        Some(nums),
    )
}

fn quantized_section(a: &ModularAnalysis) -> Option<Section> {
    let q = a.quantized.as_ref()?;
    let t = &q.trajectory;
    let x: Vec<f64> = t.epochs.iter().map(|&e| e as f64).collect();
    let vlines = phase_lines(a);
    let mut figures = Vec::new();
    let levels: &[(i8, &str)] = if t.has_zeros() {
        &[(1, "+1"), (0, "0"), (-1, "−1")]
    } else {
        &[(1, "+1"), (-1, "−1")]
    };
    for &(level, name) in levels {
        let series: Vec<(&str, Vec<f32>)> = t
            .matrices
            .iter()
            .enumerate()
            .map(|(m, label)| (label.as_str(), t.level_fraction(m, level)))
            .collect();
        let mut plot = lines(
            &format!("Fraction of each BitLinear weight at {name}"),
            "epoch",
            "fraction",
            &x,
            &series,
            false,
        );
        with_vlines(&mut plot, &vlines);
        figures.push(plot);
    }
    // No flips are counted before the first checkpoint: a gap, not a zero, on the log axis.
    let flips = |f: Vec<usize>| -> Vec<f32> {
        f.iter()
            .enumerate()
            .map(|(i, &n)| if i == 0 { f32::NAN } else { n as f32 })
            .collect()
    };
    let mut flip_series = vec![("all BitLinear weights", flips(t.total_flips()))];
    for (m, label) in t.matrices.iter().enumerate() {
        flip_series.push((
            label.as_str(),
            flips(t.flips.iter().map(|f| f[m]).collect()),
        ));
    }
    let mut plot = lines(
        "Quantized values that flipped since the previous checkpoint",
        "epoch",
        "weights flipped",
        &x,
        &flip_series,
        true,
    );
    with_vlines(&mut plot, &vlines);
    figures.push(plot);
    let total = t.total_weights() as f32;
    let mut plot = lines(
        "How far the discrete circuit is from its final form",
        "epoch",
        "fraction of quantized weights",
        &x,
        &[
            (
                "differ from the analysed model",
                t.total_from_final()
                    .iter()
                    .map(|&n| n as f32 / total)
                    .collect(),
            ),
            (
                "flipped since the previous checkpoint",
                t.total_flips().iter().map(|&n| n as f32 / total).collect(),
            ),
            ("hold their final level for good", t.fixed_for_good()),
        ],
        false,
    );
    with_vlines(&mut plot, &vlines);
    figures.push(plot);

    let f = &q.first_ffn;
    let neuron_labels: Vec<String> = f
        .order
        .iter()
        .zip(&f.best_freq)
        .map(|(n, k)| format!("{n} (freq {k})"))
        .collect();
    figures.push(heatmap(
        "Levels of the first FFN matrix W_in (neurons grouped by the frequency they read)",
        "residual stream dimension",
        "neuron (frequency it reads)",
        &f.levels,
        None,
        Some(&neuron_labels),
    ));
    figures.push(heatmap(
        "W_in's levels seen through the embedding: share of each neuron's input per frequency",
        "neuron (frequency it reads)",
        "frequency",
        &f.freq_share,
        Some(&neuron_labels),
        Some(&freq_labels(a.basis.n_freqs())),
    ));
    let settled = t.settled_epoch().map_or(
        "the last checkpoint, where all are by definition: the circuit was still changing"
            .to_string(),
        |e| format!("epoch {e}"),
    );
    Some(Section {
        id: "quantized",
        title: "Quantized weights",
        intro: format!(
            "The BitLinear weights as the forward pass uses them (centred, then {}), at the initial \
             weights and every checkpoint: the share at each level; how many changed level since the \
             previous checkpoint (weights whose latent sits near the matrix mean keep flipping as long \
             as training runs); and how many already hold, for good, the level they end with. \
             {:.0}% of the {} weights do by {settled}; dashed \
             lines mark the grokking phases. Last, the first \
             FFN matrix: as raw levels it shows no pattern (seed 004's plot), but multiplied by the \
             embedding in the Fourier basis, (B·W_E)·W_inᵀ, each neuron's row reads mostly one \
             frequency — {} of {} neurons read a key frequency {:?} most, with {:.0}% of their input \
             there on average.",
            a.cfg
                .model
                .bitnet()
                .map_or("quantized", |c| c.quant.describe()),
            100.0 * SETTLED_FRACTION,
            t.total_weights(),
            f.key_rows,
            f.order.len(),
            a.embed.key_freqs,
            100.0 * f.key_share
        ),
        figures,
    })
}
