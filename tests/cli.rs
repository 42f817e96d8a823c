//! The `groklens` binary: bad input is a clear error with a non-zero exit; a small run writes every file.

use std::process::{Command, Output};

fn groklens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_groklens"))
        .args(args)
        .output()
        .unwrap()
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = groklens(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

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
    let out = groklens(&[
        "train",
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
    for f in [
        "config.toml",
        "model_config.json",
        "split.safetensors",
        "metrics.csv",
        "final.safetensors",
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
        "epoch,train_loss,train_acc,test_loss,test_acc,lr,weight_norm_sq,elapsed_s\n"
    ));
    assert_eq!(csv.lines().count(), 1 + 21);
    // A second run into the same directory is refused rather than overwriting it.
    fails_with(
        &["train", "--preset", "quick", "--out", d],
        &["already holds a run", "--resume"],
    );
}
