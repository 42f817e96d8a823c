//! The `groklens` binary: bad input is a clear error with a non-zero exit; a small run writes every file.

mod common;
use common::bin::{fails_with, output as groklens, succeeds};

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    fails_with(
        &["train", "--preset", "fastest", "--out", out],
        &["unknown preset", "tl-grokking-demo", "quick"],
    );
    fails_with(
        &[
            "train", "--preset", "quick", "--set", "task.p=1", "--out", out,
        ],
        &["task.p", "[2, 4096]"],
    );
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--set",
            "task.op=div",
            "--set",
            "task.p=12",
            "--out",
            out,
        ],
        &["task.p", "prime"],
    );
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--set",
            "task.train_frac=1.5",
            "--out",
            out,
        ],
        &["task.train_frac", "(0, 1)"],
    );
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--set",
            "model.d_vocab=10",
            "--out",
            out,
        ],
        &["model.d_vocab", "at least 32"],
    );
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--set",
            "train.beta2=1.5",
            "--out",
            out,
        ],
        &["train.beta2"],
    );
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--set",
            "train.nonsense=3",
            "--out",
            out,
        ],
        &["nonsense"],
    );
    fails_with(
        &["train", "--resume", tmp.path().to_str().unwrap()],
        &["config.toml", "run directory"],
    );
    fails_with(
        &["train", "--preset", "seed-004", "--out", out],
        &["seed-004", "groklens grok"],
    );
    let not_a_run = tmp.path().to_str().unwrap();
    fails_with(
        &["compare", not_a_run, not_a_run, "--out", out],
        &[not_a_run, "not a run directory"],
    );
    fails_with(&["compare", not_a_run], &["RUNS"]);
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[task]\np = \"many\"\n").unwrap();
    fails_with(
        &["train", "--config", cfg.to_str().unwrap(), "--out", out],
        &["bad.toml"],
    );
}

#[test]
fn a_small_run_writes_the_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    // `grok` trains, writes the report and prints its summary.
    let out = groklens(&[
        "grok",
        "--preset",
        "quick",
        "--set",
        "train.epochs=200",
        "--set",
        "train.stop_at_test_acc=0",
        "--out",
        d,
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("200 epochs") && text.contains("report.html") && text.contains("phases:"),
        "{text}"
    );
    for f in [
        "config.toml",
        "model_config.json",
        "split.safetensors",
        "metrics.csv",
        "final.safetensors",
        "report.html",
        "checkpoints/epoch_000100.safetensors",
        "checkpoints/epoch_000200.optim.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model_config.json")).unwrap())
            .unwrap();
    assert_eq!(json["d_vocab"], 32);
    assert_eq!(json["d_vocab_out"], 31);
    assert_eq!(json["normalization_type"], serde_json::Value::Null);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(csv.starts_with(
        "epoch,train_loss,train_acc,test_loss,test_acc,lr,weight_norm_sq,elapsed_s,output_spectral_norm\n"
    ));
    assert_eq!(csv.lines().count(), 1 + 21);
    // A second run into the same directory is refused rather than overwriting it.
    fails_with(
        &["train", "--preset", "quick", "--out", d],
        &["already holds a run", "--resume"],
    );

    // The report again, on its own, then the ways a report can be refused.
    let out = groklens(&["report", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("report.html") && text.contains("key frequencies"),
        "{text}"
    );
    assert!(
        text.contains("grokking epoch (test acc >= 99%): not reached"),
        "{text}"
    );
    assert!(dir.join("report.html").is_file());
    fails_with(
        &["report", tmp.path().to_str().unwrap()],
        &["not a run directory", "config.toml"],
    );
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in [
        "config.toml",
        "model_config.json",
        "split.safetensors",
        "metrics.csv",
    ] {
        std::fs::copy(dir.join(f), bare.join(f)).unwrap();
    }
    fails_with(
        &["report", bare.to_str().unwrap()],
        &["neither final.safetensors nor a loadable checkpoint"],
    );
    std::fs::copy(
        dir.join("final.safetensors"),
        bare.join("final.safetensors"),
    )
    .unwrap();
    groklens::tensor_io::write_atomic(
        &bare.join("split.safetensors"),
        &[
            (
                "train".into(),
                groklens::tensor_io::HostTensor::i64(vec![2], vec![0, 99_999]),
            ),
            (
                "test".into(),
                groklens::tensor_io::HostTensor::i64(vec![1], vec![1]),
            ),
        ],
        Default::default(),
    )
    .unwrap();
    fails_with(
        &["report", bare.to_str().unwrap()],
        &["split.safetensors", "99999", "does not belong"],
    );
    let ckpt = dir.join("checkpoints/epoch_000100.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    // A damaged checkpoint is skipped with a note, not a failed page.
    let text = succeeds(&["report", d]);
    assert!(
        text.contains("epoch 100 skipped") && text.contains("epoch_000100.safetensors"),
        "{text}"
    );
}

#[test]
fn cache_command_reproduces_transformer_lens_activations() {
    use safetensors::tensor::{Dtype, TensorView};
    let tmp = tempfile::tempdir().unwrap();
    let fixture = groklens::tensor_io::read(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tl_ln_2l.safetensors"),
    )
    .unwrap();
    // A checkpoint as TransformerLens saves it: state_dict names plus bool mask and IGNORE buffers.
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in fixture
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with("param."))
    {
        let data = t
            .to_f32(name)
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        bufs.push((
            name["param.".len()..].to_string(),
            Dtype::F32,
            t.shape.clone(),
            data,
        ));
    }
    for l in 0..2 {
        let mask: Vec<u8> = (0..64).map(|i| u8::from(i % 8 <= i / 8)).collect();
        bufs.push((
            format!("blocks.{l}.attn.mask"),
            Dtype::BOOL,
            vec![8, 8],
            mask,
        ));
        bufs.push((
            format!("blocks.{l}.attn.IGNORE"),
            Dtype::F32,
            vec![],
            (-1e5f32).to_le_bytes().to_vec(),
        ));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let ckpt = tmp.path().join("tl.safetensors");
    std::fs::write(&ckpt, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&fixture.metadata["config"]).unwrap();
    cfg["model_name"] = "custom".into();
    cfg["use_attn_result"] = false.into();
    let cfg_path = tmp.path().join("model_config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let tokens = fixture.get("tokens").unwrap().clone();
    let tok_path = tmp.path().join("tokens.safetensors");
    groklens::tensor_io::write_atomic(
        &tok_path,
        &[("tokens".to_string(), tokens)],
        Default::default(),
    )
    .unwrap();
    let out = tmp.path().join("out.safetensors");
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let res = groklens(&[
        "cache",
        "--checkpoint",
        &p(&ckpt),
        "--model-config",
        &p(&cfg_path),
        "--tokens",
        &p(&tok_path),
        "--out",
        &p(&out),
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let got = groklens::tensor_io::read(&out).unwrap();
    let mut compared = 0;
    for (name, want) in fixture
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with("cache.") || *n == "logits")
    {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("output lacks {name}"))
            .to_f32(name)
            .unwrap();
        let w = want.to_f32(name).unwrap();
        let d = g
            .iter()
            .zip(&w)
            .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "{name} differs by {d}");
        compared += 1;
    }
    assert_eq!(compared, got.tensors.len());
    // A wrong-shaped checkpoint is a clear error naming the tensor.
    std::fs::write(&cfg_path, serde_json::json!({"n_layers": 2, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 128, "act_fn": "gelu", "normalization_type": "LN", "d_vocab": 20, "n_ctx": 8}).to_string()).unwrap();
    fails_with(
        &[
            "cache",
            "--checkpoint",
            &p(&ckpt),
            "--model-config",
            &p(&cfg_path),
            "--tokens",
            &p(&tok_path),
            "--out",
            &p(&out),
        ],
        &["blocks.0.mlp.W_in", "[32, 64]", "[32, 128]"],
    );
}

#[test]
fn ablate_command_writes_one_row_per_hook_point() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    let out = groklens(&[
        "train",
        "--preset",
        "quick",
        "--set",
        "train.epochs=20",
        "--out",
        d,
        "--quiet",
    ]);
    assert!(out.status.success());
    let out = groklens(&["ablate", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.join("ablation.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "hook,loss,loss_increase");
    assert!(lines[1].starts_with("baseline,"));
    // 1 layer, no LayerNorm: 14 hook points besides hook_pos_embed and hook_result.
    assert_eq!(lines.len(), 2 + 14, "{csv}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("blocks.0.mlp.hook_post,")));
    fails_with(&["ablate", tmp.path().to_str().unwrap()], &["config.toml"]);
}

#[test]
fn mlp_config_errors_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    let q = ["train", "--preset", "quick-mlp", "--out", out, "--set"];
    let with = |set: &'static str| [&q[..], &[set]].concat();
    fails_with(&with("model.d_hidden=0"), &["model.d_hidden", "at least 1"]);
    fails_with(
        &with("model.n_hidden=100"),
        &["model.n_hidden", "at most 64"],
    );
    fails_with(&with("model.n_ctx=3"), &["model.n_ctx", "must be 4"]);
    fails_with(&with("model.d_model=64"), &["d_model", "unknown field"]);
    fails_with(&with("model.family=rnn"), &["rnn", "transformer", "mlp"]);
    assert!(!std::path::Path::new(out).join("final.safetensors").exists());
    // Task overrides carry through to the derived model fields (n_ctx 3 for [a, b, =]).
    let ok = groklens(&[
        "train",
        "--preset",
        "quick-mlp",
        "--set",
        "task.layout=a_b_eq",
        "--set",
        "train.epochs=5",
        "--out",
        out,
        "--quiet",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let toml = std::fs::read_to_string(std::path::Path::new(out).join("config.toml")).unwrap();
    assert!(
        toml.contains("n_ctx = 3") && toml.contains("d_vocab = 32"),
        "{toml}"
    );
}

#[test]
fn an_mlp_run_works_with_cache_and_ablate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    let out = groklens(&[
        "train",
        "--preset",
        "quick-mlp",
        "--set",
        "train.epochs=20",
        "--out",
        d,
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model_config.json")).unwrap())
            .unwrap();
    assert_eq!(json["family"], "mlp");
    assert_eq!(json["d_embed"], 32);
    // Tokens [a, +, b, =] for two inputs.
    let tokens = tmp.path().join("tokens.safetensors");
    let ids: Vec<u8> = [1i64, 31, 2, 32, 5, 31, 7, 32]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::I64, vec![2, 4], &ids)
            .unwrap();
    safetensors::tensor::serialize_to_file([("tokens", view)], None, &tokens).unwrap();
    let acts = tmp.path().join("acts.safetensors");
    let out = groklens(&[
        "cache",
        "--checkpoint",
        dir.join("final.safetensors").to_str().unwrap(),
        "--model-config",
        dir.join("model_config.json").to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--out",
        acts.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = groklens::tensor_io::read(&acts).unwrap();
    assert_eq!(f.get("logits").unwrap().shape, vec![2, 1, 33]);
    assert_eq!(f.get("cache.hook_embed").unwrap().shape, vec![2, 128]);
    assert_eq!(
        f.get("cache.blocks.0.mlp.hook_post").unwrap().shape,
        vec![2, 128]
    );
    let out = groklens(&["ablate", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2 + 3, "{csv}");
    // Outputs that would overwrite an input are refused, and the input is left as it was.
    let final_bytes = std::fs::read(dir.join("final.safetensors")).unwrap();
    let final_path = dir.join("final.safetensors");
    let f = final_path.to_str().unwrap();
    fails_with(&["ablate", d, "--out", f], &["--out", "input"]);
    let (m, t) = (dir.join("model_config.json"), tokens.to_str().unwrap());
    fails_with(
        &[
            "cache",
            "--checkpoint",
            f,
            "--model-config",
            m.to_str().unwrap(),
            "--tokens",
            t,
            "--out",
            t,
        ],
        &["--out", "input"],
    );
    assert_eq!(std::fs::read(&final_path).unwrap(), final_bytes);
    assert!(groklens::tensor_io::read(&tokens).is_ok());
}

#[test]
fn freeze_patterns_and_bench_iterations_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--set",
            "train.freeze=*.bias",
            "--out",
            o,
        ],
        &[
            "train.freeze",
            "*.bias",
            "matches no parameter",
            "blocks.0.attn.W_Q",
        ],
    );
    assert!(!out.join("config.toml").exists());
    // One pattern may be given without brackets.
    let ok = groklens(&[
        "train",
        "--preset",
        "quick",
        "--set",
        "train.freeze=*.b_*",
        "--set",
        "train.epochs=2",
        "--out",
        o,
        "--quiet",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    fails_with(&["bench", "--iters", "0"], &["--iters", "at least 1"]);
}

#[test]
fn oversized_runs_huge_numbers_and_nan_weights_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let quick = ["train", "--preset", "quick", "--quiet", "--out", o];
    let with = |sets: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = quick.iter().map(|s| s.to_string()).collect();
        for s in sets {
            a.push("--set".into());
            a.push(s.to_string());
        }
        a
    };
    let refused = |sets: &[&str], needles: &[&str]| {
        let args = with(sets);
        fails_with(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            needles,
        );
        assert!(!out.join("config.toml").exists());
    };
    if groklens::memory::available_bytes().is_some() {
        refused(
            &["model.d_model=65536", "model.d_mlp=65536"],
            &[
                "not enough memory",
                "parameters",
                "available",
                "model.d_model",
            ],
        );
        refused(
            &["task.p=4093"],
            &["not enough memory", "activations", "task.p"],
        );
        refused(&["model.n_heads=100000"], &["not enough memory"]);
    }
    refused(
        &["train.epochs=18446744073709551615"],
        &["train.epochs", "out of range"],
    );
    refused(
        &["train.epochs=9223372036854775807"],
        &["train.epochs", "at most"],
    );

    // NaN weights: report and ablate name the tensor instead of failing inside the maths.
    let args = with(&["train.epochs=20"]);
    succeeds(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let final_path = out.join("final.safetensors");
    let mut f = groklens::tensor_io::read(&final_path).unwrap();
    let w = f.tensors.get_mut("blocks.0.mlp.W_in").unwrap();
    if let groklens::tensor_io::HostData::F32(v) = &mut w.data {
        v[3] = f32::NAN;
    }
    let tensors: Vec<_> = f.tensors.into_iter().collect();
    groklens::tensor_io::write_atomic(&final_path, &tensors, f.metadata.into_iter().collect())
        .unwrap();
    for cmd in ["report", "ablate"] {
        fails_with(
            &[cmd, o],
            &["final.safetensors", "blocks.0.mlp.W_in", "NaN"],
        );
    }
}

#[test]
fn interrupted_runs_report_honestly_and_resume_says_what_it_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    succeeds(&[
        "train",
        "--preset",
        "quick",
        "--quiet",
        "--out",
        o,
        "--set",
        "train.epochs=300",
        "--set",
        "train.stop_at_test_acc=0",
        "--set",
        "train.checkpoint_every=100",
    ]);
    // What a kill between checkpoints leaves: no final, metrics past the newest checkpoint; and a
    // damaged checkpoint in the middle.
    std::fs::remove_file(out.join("final.safetensors")).unwrap();
    let ck = out.join("checkpoints");
    std::fs::remove_file(ck.join("epoch_000300.safetensors")).unwrap();
    std::fs::write(ck.join("epoch_000100.safetensors"), b"not a checkpoint").unwrap();
    let text = succeeds(&["report", o]);
    assert!(
        text.contains("Unfinished run")
            && text.contains("metrics reach epoch 300 of 300")
            && text.contains("checkpoint, epoch 200")
            && text.contains("epoch 100 skipped"),
        "{text}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Unfinished run") && html.contains("epoch 100 skipped"));

    // Resume: train longer explicitly; the summary counts every epoch and says what this process did.
    std::fs::copy(
        ck.join("epoch_000200.safetensors"),
        ck.join("epoch_000100.safetensors"),
    )
    .unwrap();
    fails_with(
        &["train", "--resume", o, "--set", "train.lr=0.5"],
        &["train.lr", "identity"],
    );
    let text = succeeds(&[
        "train",
        "--resume",
        o,
        "--quiet",
        "--set",
        "train.epochs=400",
    ]);
    assert!(
        text.contains("changed since creation: train.epochs 300 → 400")
            && text.contains("400 epochs (200 before this resume, 200 now"),
        "{text}"
    );
    let text = succeeds(&["report", o]);
    assert!(!text.contains("Unfinished"), "{text}");
}
