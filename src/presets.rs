//! Named, ready-to-run configurations.

use crate::config::RunConfig;
use crate::config::TrainConfig;
use crate::error::{GrokError, Result};
use crate::model::transformer::config::{Normalization, PositionalEmbedding};
use crate::model::{BitNetConfig, MlpConfig, ModelConfig, Quant, TransformerConfig};
use crate::rng::{torch::DEFAULT_SEED, RngKind};
use crate::tasks::{
    CompoundTask, Layout, ModularTask, Operation, SequenceTask, SplitRule, TaskConfig,
};

/// Preset names with one-line descriptions; the first is the default.
pub const PRESETS: [(&str, &str); 14] = [
    (
        "tl-grokking-demo",
        "TransformerLens grokking demo (seed 004): a+b mod 113, 30% train, 1 layer, 25k epochs",
    ),
    (
        "nanda-2023",
        "Nanda et al. 2023: the demo's setup with a 10-step linear warm-up, 40k epochs",
    ),
    (
        "seed-001",
        "seed 001: a+b mod 97, 30% train, d_model 128, 4 heads, d_mlp 512, 30k epochs",
    ),
    (
        "quick",
        "a+b mod 31, 60% train, small model, weight decay 3: groks in seconds, for demos and tests",
    ),
    (
        "seed-002",
        "seed 002's MLP: a+b mod 97 as [a, +, b, =], 80% train, minibatches of 512, wd 0.01, 20k epochs",
    ),
    (
        "quick-mlp",
        "a small MLP on a+b mod 31: groks in seconds, for demos and tests",
    ),
    (
        "bitnet-binary",
        "seed 004's binarized BitNet transformer on the demo's task and training, 25k epochs",
    ),
    (
        "bitnet-ternary",
        "seed 004's BitNet transformer with ternary (absmean) weights, 25k epochs",
    ),
    (
        "quick-bitnet-binary",
        "a small binarized BitNet on a+b mod 31: groks in seconds, for demos and tests",
    ),
    (
        "quick-bitnet-ternary",
        "a small ternary BitNet on a+b mod 31: groks in seconds, for demos and tests",
    ),
    (
        "seed-003",
        "seed 003: 2-layer LayerNorm model without positional embeddings predicting the previous token, 4k steps",
    ),
    (
        "quick-prev-token",
        "a small seed-003 model on short sequences: learns the previous token in seconds, for tests",
    ),
    (
        "seed-000",
        "seed 000: ( a * b + c ) ^ d mod 53 over all 7.9M inputs, 50% train, full batch, 50k epochs",
    ),
    (
        "compound-small",
        "seed 000's expression mod 7 (2 401 inputs), 50% train, a smaller model: minutes on 2 cores",
    ),
];

/// Presets that train several runs one after the other and compare them (`groklens grok --preset
/// NAME`): name, description, member presets.
pub const COMPARISONS: [(&str, &str, &[&str]); 2] = [
    (
        "seed-004",
        "seed 004: tl-grokking-demo and bitnet-binary, each trained and reported, then compared",
        &["tl-grokking-demo", "bitnet-binary"],
    ),
    (
        "quick-seed-004",
        "seed 004 in seconds: quick and quick-bitnet-binary, each trained and reported, then compared",
        &["quick", "quick-bitnet-binary"],
    ),
];

/// The member presets of comparison preset `name`, if it is one.
pub fn comparison(name: &str) -> Option<&'static [&'static str]> {
    COMPARISONS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, members)| *members)
}

/// The resolved config of preset `name` (vocabulary and context derived from its task).
pub fn preset(name: &str) -> Result<RunConfig> {
    preset_template(name)?.resolve()
}

/// Preset `name` before resolution: the fields derived from the task are still 0, so overrides of
/// the task (`--set task.layout=a_b_eq`) carry through to the model.
pub fn preset_template(name: &str) -> Result<RunConfig> {
    let demo = RunConfig {
        rng: RngKind::Torch,
        task: TaskConfig::grokking_demo(),
        model: ModelConfig::Transformer(TransformerConfig::grokking_demo()),
        train: TrainConfig::grokking_demo(),
    };
    let demo_model = TransformerConfig::grokking_demo();
    let cfg = match name {
        "tl-grokking-demo" => demo,
        "nanda-2023" => RunConfig {
            train: TrainConfig {
                epochs: 40_000,
                warmup_steps: 10,
                ..demo.train
            },
            ..demo
        },
        "seed-001" => RunConfig {
            task: TaskConfig::Modular(ModularTask {
                op: Operation::Add,
                p: 97,
                layout: Layout::ABEq,
                train_frac: 0.3,
                // The notebook never seeds: its randperm draws from torch's default generator.
                data_seed: DEFAULT_SEED,
                split: SplitRule::FirstFraction,
            }),
            model: ModelConfig::Transformer(TransformerConfig {
                seed: 0,
                ..demo_model
            }),
            train: TrainConfig {
                epochs: 30_000,
                ..demo.train
            },
            ..demo
        },
        "quick" => RunConfig {
            task: quick_task(),
            model: ModelConfig::Transformer(TransformerConfig {
                d_model: 64,
                n_heads: 4,
                d_head: 16,
                d_mlp: 256,
                seed: 0,
                ..demo_model
            }),
            train: TrainConfig {
                lr: 3e-3,
                weight_decay: 3.0,
                epochs: 3000,
                checkpoint_every: 100,
                stop_at_test_acc: 0.999,
                ..demo.train
            },
            // groklens's own demos, tuned with (and tested on) the ChaCha streams.
            rng: RngKind::Chacha,
        },
        "seed-002" => RunConfig {
            task: TaskConfig::Modular(ModularTask {
                op: Operation::Add,
                p: 97,
                layout: Layout::AOpBEq,
                train_frac: 0.8,
                // `random_split(data, [0.8, 0.2], generator=Generator().manual_seed(21))`, the same
                // generator then shuffling both DataLoaders.
                data_seed: 21,
                split: SplitRule::RandomSplit,
            }),
            // The notebook builds its MLP from torch's default (never seeded) generator.
            model: ModelConfig::Mlp(MlpConfig {
                seed: DEFAULT_SEED,
                ..MlpConfig::seed_002()
            }),
            train: TrainConfig {
                weight_decay: 0.01,
                epochs: 20_000,
                batch_size: 512,
                freeze: Vec::new(),
                eval_every: 1,
                checkpoint_every: 200,
                ..demo.train
            },
            ..demo
        },
        "quick-mlp" => RunConfig {
            task: TaskConfig::Modular(ModularTask {
                op: Operation::Add,
                p: 31,
                layout: Layout::AOpBEq,
                train_frac: 0.8,
                data_seed: 0,
                split: SplitRule::FirstFraction,
            }),
            model: ModelConfig::Mlp(MlpConfig {
                d_embed: 32,
                d_hidden: 128,
                ..MlpConfig::seed_002()
            }),
            train: TrainConfig {
                lr: 3e-3,
                weight_decay: 1.0,
                epochs: 3000,
                batch_size: 256,
                freeze: Vec::new(),
                eval_every: 10,
                checkpoint_every: 50,
                stop_at_test_acc: 0.999,
                ..demo.train
            },
            // groklens's own demos, tuned with (and tested on) the ChaCha streams.
            rng: RngKind::Chacha,
        },
        "bitnet-binary" => bitnet_seed_004(Quant::Binary, demo),
        "bitnet-ternary" => bitnet_seed_004(Quant::Ternary, demo),
        "quick-bitnet-binary" => quick_bitnet(Quant::Binary, demo),
        "quick-bitnet-ternary" => quick_bitnet(Quant::Ternary, demo),
        "seed-003" => seed_003(),
        "quick-prev-token" => {
            let seed = seed_003();
            let model = seed.model.transformer().expect("seed-003 is a transformer");
            RunConfig {
                task: TaskConfig::PreviousToken(SequenceTask {
                    d_vocab: 24,
                    n_ctx: 12,
                    eval_rows: 256,
                    ..SequenceTask::seed_003()
                }),
                model: ModelConfig::Transformer(TransformerConfig {
                    d_model: 32,
                    d_head: 32,
                    d_mlp: 64,
                    seed: 0,
                    ..model.clone()
                }),
                train: TrainConfig {
                    lr: 3e-3,
                    epochs: 400,
                    batch_size: 64,
                    warmup_steps: 20,
                    eval_every: 20,
                    checkpoint_every: 50,
                    ..seed.train
                },
                ..seed
            }
        }
        "seed-000" => seed_000(demo),
        "compound-small" => {
            let seed = seed_000(demo);
            RunConfig {
                task: TaskConfig::Compound(CompoundTask {
                    p: 7,
                    ..CompoundTask::seed_000()
                }),
                model: ModelConfig::Transformer(TransformerConfig {
                    d_model: 128,
                    d_head: 32,
                    d_mlp: 512,
                    ..seed
                        .model
                        .transformer()
                        .expect("seed-000 is a transformer")
                        .clone()
                }),
                train: TrainConfig {
                    epochs: 5000,
                    micro_batch: 0,
                    eval_every: 10,
                    checkpoint_every: 100,
                    ..seed.train
                },
                ..seed
            }
        }
        other => {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            let message = if comparison(other).is_some() {
                "trains several runs: only `groklens grok` takes it".to_string()
            } else {
                format!("unknown preset; choose one of {}", names.join(", "))
            };
            return Err(GrokError::config("--preset", other, message));
        }
    };
    Ok(cfg)
}

/// The quick demos' task: a+b mod 31 as `[a, b, =]`, the first 60 % of a ChaCha shuffle (or of
/// torch's `randperm` after seed 0, under torch seeding) train.
fn quick_task() -> TaskConfig {
    TaskConfig::Modular(ModularTask {
        op: Operation::Add,
        p: 31,
        layout: Layout::ABEq,
        train_frac: 0.6,
        data_seed: 0,
        split: SplitRule::FirstFraction,
    })
}

/// Seed 003: the previous-token model without positional embeddings, trained on a fresh batch of
/// random sequences every step.
fn seed_003() -> RunConfig {
    RunConfig {
        rng: RngKind::Torch,
        task: TaskConfig::PreviousToken(SequenceTask::seed_003()),
        model: ModelConfig::Transformer(TransformerConfig {
            n_layers: 2,
            d_model: 64,
            n_heads: 1,
            d_head: 64,
            d_mlp: 256,
            normalization_type: Some(Normalization::LN),
            positional_embedding_type: PositionalEmbedding::None,
            // `HookedTransformer(cfg)` draws from torch's default (never seeded) generator.
            seed: DEFAULT_SEED,
            ..TransformerConfig::grokking_demo()
        }),
        train: TrainConfig {
            lr: 1e-4,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            epochs: 4000,
            batch_size: 256,
            // `LambdaLR(lambda i: min(i / 100, 1.0))` (the seed notes that `max` was a bug).
            warmup_steps: 100,
            grad_clip: 1.0,
            freeze: Vec::new(),
            eval_every: 100,
            checkpoint_every: 200,
            ..TrainConfig::grokking_demo()
        },
    }
}

/// Seed 000: the demo's model widened to d_model 256 over the 10-token compound expression, trained
/// full batch with the gradient summed over 2¹⁶-row micro-batches, stopping at test loss 0.01.
fn seed_000(demo: RunConfig) -> RunConfig {
    RunConfig {
        task: TaskConfig::Compound(CompoundTask::seed_000()),
        model: ModelConfig::Transformer(TransformerConfig {
            d_model: 256,
            n_heads: 4,
            d_head: 64,
            d_mlp: 1024,
            ..TransformerConfig::grokking_demo()
        }),
        train: TrainConfig {
            epochs: 50_000,
            // The seed sums 2¹⁶-row batches into each full-batch step; 2¹³-row micro-batches give
            // the same gradient (up to float rounding) in an eighth of the activation memory.
            micro_batch: 1 << 13,
            stop_at_test_loss: 0.01,
            ..demo.train
        },
        ..demo
    }
}

/// Seed 004's BitNet with `quant` weights on the demo's task and training (`demo`).
fn bitnet_seed_004(quant: Quant, demo: RunConfig) -> RunConfig {
    RunConfig {
        // Seed 004 passes `random_seed=999`, which its BitNet class gives only to the CUDA
        // generator; groklens seeds the CPU generator with it, as the seed's fixtures do.
        model: ModelConfig::BitNet(BitNetConfig {
            seed: 999,
            ..BitNetConfig::seed_004(quant)
        }),
        train: TrainConfig {
            freeze: Vec::new(),
            ..demo.train
        },
        ..demo
    }
}

/// A small BitNet with `quant` weights on the quick task, trained like `demo` but faster.
fn quick_bitnet(quant: Quant, demo: RunConfig) -> RunConfig {
    RunConfig {
        task: quick_task(),
        model: ModelConfig::BitNet(BitNetConfig {
            d_model: 64,
            d_mlp: 256,
            seed: 0,
            ..BitNetConfig::seed_004(quant)
        }),
        train: TrainConfig {
            lr: 3e-3,
            weight_decay: 1.0,
            epochs: 3000,
            freeze: Vec::new(),
            checkpoint_every: 100,
            stop_at_test_acc: 0.999,
            ..demo.train
        },
        ..demo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves() {
        for (name, _) in PRESETS {
            let c = preset(name).unwrap();
            assert_eq!(c.model.d_vocab(), c.task.vocab(), "{name}");
        }
        let demo = preset("tl-grokking-demo").unwrap();
        assert_eq!(
            (
                demo.task.modular().unwrap().p,
                demo.task.data_seed(),
                demo.model.seed(),
                demo.train.epochs
            ),
            (113, 598, 999, 25_000)
        );
    }

    #[test]
    fn notebook_presets_seed_like_torch() {
        for (name, _) in PRESETS {
            let want = if name == "quick" || name == "quick-mlp" {
                RngKind::Chacha
            } else {
                RngKind::Torch
            };
            assert_eq!(preset(name).unwrap().rng, want, "{name}");
        }
        // A config without `rng` is a run from before torch seeding.
        let text = preset("tl-grokking-demo").unwrap().to_toml();
        assert!(text.starts_with("rng = \"torch\"\n"), "{text}");
        let old = RunConfig::from_toml(&text.replace("rng = \"torch\"\n", ""), "old").unwrap();
        assert_eq!(old.rng, RngKind::Chacha);
    }

    #[test]
    fn comparisons_name_presets_on_one_task() {
        for (name, _, members) in COMPARISONS {
            let tasks: Vec<_> = members.iter().map(|m| preset(m).unwrap().task).collect();
            assert!(tasks.windows(2).all(|w| w[0] == w[1]), "{name}");
            assert!(preset(name)
                .unwrap_err()
                .to_string()
                .contains("groklens grok"));
        }
        assert_eq!(
            comparison("seed-004"),
            Some(&["tl-grokking-demo", "bitnet-binary"][..])
        );
        assert_eq!(comparison("quick"), None);
    }

    #[test]
    fn unknown_preset_lists_the_choices() {
        let e = preset("fast").unwrap_err().to_string();
        assert!(e.contains("quick") && e.contains("tl-grokking-demo"), "{e}");
    }
}
