//! What a grokked network learned and when: Fourier features of the embedding, neurons and logits,
//! attention, the embedding's SVD and PCA, and progress measures over every checkpoint (seed notebooks
//! 000, 002 and 004; Nanda et al. 2023). [`analyze_modular_run`] gathers all of it for a run directory; the
//! functions it calls are usable on their own.

pub mod compound;
pub mod embedding;
pub mod fourier;
pub mod grid;
pub mod neurons;
pub mod progress;
pub mod quantized;
pub mod sequence;
pub mod stats;

use crate::tasks::{Split, Target};
use std::path::Path;
use std::time::Instant;

use crate::config::RunConfig;
use crate::engine::{self, EngineKind};
use crate::error::{GrokError, Result};
use crate::linalg::Matrix;
use crate::memory::Estimate;
use crate::model::Params;
use crate::run::{checkpoint, grokking_epoch, metrics, MetricsRow, RunDir, GROKKED_ACCURACY};

pub use embedding::{EmbeddingFourier, EmbeddingSvd};
pub use fourier::FourierBasis;
pub use grid::AttentionSummary;
pub use neurons::{FrequencyUse, NeuronCluster, NeuronFourier, CLUSTER_THRESHOLD};
pub use progress::{Phases, ProgressPoint};
pub use quantized::{LevelsThroughFrequencies, QuantizedAnalysis, QuantizedTrajectory};
pub use stats::Pca;

/// Largest modulus the analysis takes: p² inputs are run and p × p maps drawn, and the report must
/// stay under ~15 MB.
pub const MAX_P: usize = 251;

/// Seed 002 plots the outputs for inputs (x, 8); the analysis uses the same second operand.
pub const PCA_SECOND_OPERAND: usize = 8;

/// The MLP side of the analysis.
pub struct NeuronAnalysis {
    /// Last-position activations of the last layer's neurons over the grid, `p² × neurons`.
    pub acts: Matrix,
    /// What maps the neurons to the logits (`W_out·W_U`, or the MLP's output weight transposed).
    pub logit_map_name: &'static str,
    /// Frequency fractions and clusters.
    pub fourier: NeuronFourier,
    /// Norms of W_logit's Fourier components over all neurons.
    pub logit_norms: Vec<f32>,
    /// The same per cluster, `(frequency, norms)`.
    pub cluster_logit_norms: Vec<(usize, Vec<f32>)>,
}

/// Everything the report shows about one run.
pub struct ModularAnalysis {
    /// The run's resolved config.
    pub cfg: RunConfig,
    /// Every metrics row.
    pub metrics: Vec<MetricsRow>,
    /// Epoch of the model analysed: the final one, or an unfinished run's newest loadable checkpoint.
    pub final_epoch: usize,
    /// What the reader must know about the run: unfinished, checkpoints skipped and why.
    pub notes: Vec<String>,
    /// Fourier basis over Z_p.
    pub basis: FourierBasis,
    /// W_E's rows for the numbers 0..p, `p × d_model`.
    pub numbers_embedding: Matrix,
    /// W_E in the Fourier basis and the key frequencies.
    pub embed: EmbeddingFourier,
    /// `(names, Gram matrix)` of the key components of the embedding.
    pub key_dots: (Vec<String>, Matrix),
    /// Mean of the key-frequency cosines over x.
    pub interference: Vec<f32>,
    /// SVD of W_E against a Gaussian control.
    pub svd: EmbeddingSvd,
    /// PCA of the number embeddings (the circle of seed 002).
    pub embed_pca: Pca,
    /// PCA of the last-position logits for inputs (x, [`PCA_SECOND_OPERAND`] mod p).
    pub output_pca: Pca,
    /// Neurons, clusters and W_logit (absent for attention-only models).
    pub neurons: Option<NeuronAnalysis>,
    /// Attention from the last position, per layer.
    pub attention: Vec<AttentionSummary>,
    /// Progress measures at the initial weights (epoch 0, rebuilt from `model.seed`) and every checkpoint.
    pub progress: Vec<ProgressPoint>,
    /// Phase boundaries.
    pub phases: Phases,
    /// First evaluated epoch with test accuracy ≥ 99 %.
    pub grokking_epoch: Option<usize>,
    /// Seconds spent on the progress measures.
    pub progress_seconds: f64,
    /// Levels, flips and the first FFN matrix of a quantized (BitNet) run.
    pub quantized: Option<QuantizedAnalysis>,
}

/// What the analysis holds at its peak: the grid's logits, neuron activations and attention maps
/// with their Fourier transforms, one chunk's full activations, and the fast engine's pass over the
/// grid that scores each checkpoint.
pub fn memory_needed(cfg: &RunConfig) -> Estimate {
    let m = &cfg.model;
    let rows = cfg.task.modular().map_or(0, |t| t.rows()) as f64;
    let width = |x: usize| x as f64;
    let neurons = m.transformer().map_or_else(
        || m.mlp().map_or(0.0, |c| width(c.d_hidden)),
        |c| width(c.d_mlp),
    );
    let per_row = m.activation_floats_per_row();
    Estimate::new()
        .floats(
            "grid maps",
            rows * (width(m.d_vocab_out())
                + 3.0 * neurons
                + width(m.attention_layers() * m.n_heads() * m.n_ctx())),
        )
        .floats(
            "one chunk's activations",
            rows.min(grid::CHUNK_ROWS as f64) * per_row * 2.0,
        )
        .floats("scoring a checkpoint", rows * per_row)
        .floats("parameters", m.n_params() * 4.0)
}

/// The run's stored split, refused (naming the file) when a row index is outside the task's `n_rows`.
pub(crate) fn checked_split(run: &RunDir, cfg: &RunConfig, n_rows: usize) -> Result<Split> {
    let split = run.load_split(cfg)?;
    if let Some(bad) = split
        .train
        .iter()
        .chain(&split.test)
        .find(|&&i| i >= n_rows)
    {
        return Err(GrokError::file(
            run.split_path(),
            format!(
                "row index {bad} is outside the task's {n_rows} examples: the split does not belong to this config"
            ),
        ));
    }
    Ok(split)
}

/// The model a report analyses, with what the reader must know about it.
pub(crate) struct AnalysedModel {
    /// Its epoch (step for a stream).
    pub epoch: usize,
    /// Its parameters.
    pub params: Params,
    /// Newer checkpoints that did not load.
    pub skipped: Vec<usize>,
    /// Notes for the reader: the run is unfinished, checkpoints were skipped and why.
    pub notes: Vec<String>,
}

/// Weights no trained model holds (|w| above 10¹², or not finite): what a diverged run leaves, on
/// which the analyses' SVDs and Fourier transforms would only fail or mislead.
fn overflowed(params: &Params) -> bool {
    params.largest_magnitude() > 1e12
}

/// The run's `final.safetensors`, or for an unfinished run the newest of its checkpoints `epochs`
/// that loads (saying which were skipped and why).
pub(crate) fn analysed_model(
    run: &RunDir,
    cfg: &RunConfig,
    epochs: &[usize],
    metrics: &[MetricsRow],
) -> Result<AnalysedModel> {
    let last_evaluated = metrics.last().map_or(0, |r| r.epoch);
    let unit = cfg.task.unit();
    let (mut skipped, mut notes) = (Vec::new(), Vec::new());
    notes.extend(run.sync_model_config(cfg)?);
    if run.final_path().exists() {
        let epoch = run.final_epoch().unwrap_or(last_evaluated);
        // A run extended with `--resume` past its first end keeps the old final model until it
        // finishes again: then the checkpoints are newer.
        let newest_checkpoint = epochs.last().copied().unwrap_or(0);
        let params = run.load_params(&run.final_path(), cfg)?;
        if epoch >= newest_checkpoint && !overflowed(&params) {
            return Ok(AnalysedModel {
                epoch,
                params,
                skipped,
                notes,
            });
        }
        notes.push(if overflowed(&params) {
            format!(
                "{}: its weights reach {:e}, far beyond a trained model's (the run diverged); the \
                 newest checkpoint with finite, bounded weights is analysed instead.",
                run.final_path().display(),
                params.largest_magnitude()
            )
        } else {
            format!(
                "final.safetensors holds {unit} {epoch}, but the run was extended past it (checkpoints reach \
                 {unit} {newest_checkpoint}); the newer checkpoint is analysed."
            )
        });
    }
    let newest = epochs.iter().rev().find_map(|&e| {
        let path = checkpoint::model_path(&run.checkpoint_dir(), e);
        match run.load_params(&path, cfg) {
            Ok(params) if overflowed(&params) => {
                skipped.push(e);
                notes.push(format!(
                    "Checkpoint of {unit} {e} skipped: {}: its weights reach {:e} (the run diverged there)",
                    path.display(),
                    params.largest_magnitude()
                ));
                None
            }
            Ok(params) => Some((e, params)),
            Err(err) => {
                skipped.push(e);
                notes.push(format!("Checkpoint of {unit} {e} skipped: {err}"));
                None
            }
        }
    });
    let Some((epoch, params)) = newest else {
        return Err(GrokError::file(
            &run.root,
            "holds neither final.safetensors nor a loadable checkpoint: train (or resume) the run first",
        ));
    };
    if !run.final_path().exists() {
        notes.insert(
            0,
            format!(
                "Unfinished run: its metrics reach {unit} {last_evaluated} of \
             {}, and the model analysed here is its newest complete checkpoint, {unit} {epoch}. \
             `groklens train --resume` continues it.",
                cfg.train.epochs
            ),
        );
    }
    Ok(AnalysedModel {
        epoch,
        params,
        skipped,
        notes,
    })
}

/// Analyses the run in `dir`: its final model (or latest checkpoint) and every checkpoint.
pub fn analyze_modular_run(dir: &Path) -> Result<ModularAnalysis> {
    let run = RunDir::new(dir);
    let cfg = run.load_config()?;
    let Some(task) = cfg.task.modular() else {
        return Err(GrokError::config(
            "task.kind",
            cfg.task.kind(),
            "this analysis reads functions of two operands and needs a modular task",
        ));
    };
    let model_cfg = &cfg.model;
    let p = task.p;
    if p > MAX_P {
        return Err(GrokError::config(
            "task.p",
            p,
            format!(
                "the analysis runs the model on all p² inputs and draws p × p maps; it supports p <= {MAX_P}"
            ),
        ));
    }
    memory_needed(&cfg).ensure_fits(
        "analysing this run",
        "analyse it on a machine with more memory",
    )?;
    let metrics = metrics::read(&run.metrics_path())?;
    let split = checked_split(&run, &cfg, task.rows())?;
    let epochs = checkpoint::list_epochs(&run.checkpoint_dir());
    let load_checkpoint =
        |epoch: usize| run.load_params(&checkpoint::model_path(&run.checkpoint_dir(), epoch), &cfg);
    let AnalysedModel {
        epoch: final_epoch,
        params,
        skipped,
        mut notes,
    } = analysed_model(&run, &cfg, &epochs, &metrics)?;

    let basis = FourierBasis::new(p);
    let w_e = model_cfg.embedding(&params);
    let embed = embedding::embedding_fourier(&basis, &w_e);
    let key_dots = embedding::key_component_dots(&basis, &embed);
    let interference = embedding::constructive_interference(&basis, &embed.key_freqs);
    let svd = embedding::embedding_svd(p, &w_e, model_cfg.seed())?;
    let numbers_embedding = w_e.select_rows(&(0..p).collect::<Vec<_>>());
    let embed_pca = stats::pca(&numbers_embedding, 2)?;

    let grid = grid::grid_activations(task, model_cfg, &params)?;
    let b0 = PCA_SECOND_OPERAND % p;
    let output_rows: Vec<usize> = (0..p).map(|x| x * p + b0).collect();
    let output_pca = stats::pca(&grid.logits.select_rows(&output_rows), 2)?;
    let neurons = match (&grid.neurons, model_cfg.neuron_logit_map(&params)) {
        (Some(acts), Some((logit_map, logit_map_name))) => {
            let w_l = logit_map.first_cols(p);
            let fourier = neurons::neuron_fourier(&basis, acts);
            let logit_norms = neurons::logit_fourier_norms(&basis, &w_l, &[]);
            let cluster_logit_norms = fourier
                .clusters
                .iter()
                .map(|c| {
                    (
                        c.freq,
                        neurons::logit_fourier_norms(&basis, &w_l, &c.neurons),
                    )
                })
                .collect();
            Some(NeuronAnalysis {
                acts: acts.clone(),
                logit_map_name,
                fourier,
                logit_norms,
                cluster_logit_norms,
            })
        }
        _ => None,
    };
    let attention = grid
        .patterns
        .iter()
        .map(|pat| grid::attention_summary(task, model_cfg.n_heads(), pat))
        .collect::<Result<_>>()?;

    let started = Instant::now();
    let keys = progress::KeyDirections::new(task, &embed.key_freqs, &split.train);
    let mut engine = engine::select(
        model_cfg,
        Target::LastPosition,
        EngineKind::Auto,
        cfg.train.threads,
    )?;
    let (grid_tokens, seq) = (task.grid_tokens(), task.layout.len());
    let mut progress = Vec::with_capacity(epochs.len() + 1);
    let bitnet = model_cfg.bitnet();
    let mut trajectory = bitnet.map(|c| QuantizedTrajectory::new(c, &params));
    // Epoch 0 is not saved, but the initial weights are a function of `model.seed`.
    for epoch in std::iter::once(0).chain(epochs.into_iter().filter(|&e| e > 0)) {
        let ckpt = match epoch {
            0 => Params::init(model_cfg, cfg.rng),
            e if skipped.contains(&e) => continue,
            e => match load_checkpoint(e) {
                Ok(params) => params,
                Err(err) => {
                    notes.push(format!("Checkpoint of epoch {e} skipped: {err}"));
                    continue;
                }
            },
        };
        if let (Some(t), Some(c)) = (trajectory.as_mut(), bitnet) {
            t.push(epoch, c, &ckpt);
        }
        let (gini_embed, gini_logit) = progress::weight_ginis(&basis, model_cfg, &ckpt);
        let losses = match &keys {
            Some(k) => Some(k.losses(&grid::grid_logits(
                &grid_tokens,
                seq,
                (model_cfg.d_vocab_out(), p),
                &ckpt,
                engine.as_mut(),
            )?)),
            None => None,
        };
        progress.push(ProgressPoint {
            epoch,
            restricted_loss: losses.map(|l| l.0),
            excluded_loss: losses.map(|l| l.1),
            gini_embed,
            gini_logit,
            weight_norm_sq: ckpt.sum_of_squares(),
        });
    }
    let progress_seconds = started.elapsed().as_secs_f64();
    let quantized = match (trajectory, bitnet) {
        (Some(trajectory), Some(c)) => Some(QuantizedAnalysis {
            trajectory,
            first_ffn: quantized::levels_through_frequencies(
                &basis,
                &embed.fourier,
                &quantized::first_ffn_levels(c, &params),
                &embed.key_freqs,
            )?,
        }),
        _ => None,
    };

    Ok(ModularAnalysis {
        phases: progress::phases(&metrics),
        grokking_epoch: grokking_epoch(&metrics, GROKKED_ACCURACY),
        cfg,
        metrics,
        final_epoch,
        notes,
        basis,
        numbers_embedding,
        embed,
        key_dots,
        interference,
        svd,
        embed_pca,
        output_pca,
        neurons,
        attention,
        progress,
        progress_seconds,
        quantized,
    })
}
