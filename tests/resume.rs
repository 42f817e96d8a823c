//! Resume: a run interrupted (cleanly, by a simulated crash mid-write, or by SIGKILL) and resumed
//! produces the same metrics and weights as one that never stopped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use groklens::presets::preset;
use groklens::run::{checkpoint, metrics, MetricsRow, RunDir};
use groklens::tensor_io;
use groklens::train::Trainer;
use groklens::RunConfig;

mod common;
use common::bin::{groklens, wait_until};

fn config() -> RunConfig {
    let mut c = preset("quick").unwrap();
    c.train.epochs = 300;
    c.train.eval_every = 10;
    c.train.checkpoint_every = 100;
    c.train.stop_at_test_acc = 0.0;
    c.train.threads = 2;
    for s in ["model.d_model=32", "model.d_head=8", "model.d_mlp=64"] {
        c.set(s).unwrap();
    }
    c
}

/// Every metric except wall time (the output layer's spectral norm too: its warm-started power
/// iteration resumes from the vector stored in the checkpoint).
fn comparable(rows: &[MetricsRow]) -> Vec<[f64; 8]> {
    rows.iter()
        .map(|r| {
            [
                r.epoch as f64,
                r.train_loss,
                r.train_acc,
                r.test_loss,
                r.test_acc,
                r.lr,
                r.weight_norm_sq,
                r.output_spectral_norm,
            ]
        })
        .collect()
}

fn uninterrupted(root: &Path) -> RunDir {
    let dir = RunDir::new(root.join("straight"));
    Trainer::create(config(), &dir)
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    dir
}

fn assert_same_run(a: &RunDir, b: &RunDir) {
    let (ma, mb) = (
        metrics::read(&a.metrics_path()).unwrap(),
        metrics::read(&b.metrics_path()).unwrap(),
    );
    assert_eq!(ma.len(), 31, "one row per 10 epochs plus epoch 1");
    assert_eq!(comparable(&ma), comparable(&mb));
    let (fa, fb) = (
        tensor_io::read(&a.final_path()).unwrap(),
        tensor_io::read(&b.final_path()).unwrap(),
    );
    assert_eq!(fa.tensors.len(), fb.tensors.len());
    for (name, t) in &fa.tensors {
        assert!(fb.get(name) == Some(t), "final weights differ in {name}");
    }
}

#[test]
fn resume_after_a_crash_mid_write_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = uninterrupted(tmp.path());

    let dir = RunDir::new(tmp.path().join("crashed"));
    let mut t = Trainer::create(config(), &dir).unwrap();
    t.run_until(250, &mut |_| {}).unwrap();
    drop(t);
    // What a crash while writing the epoch-300 checkpoint and a metrics row could leave behind.
    let ck = dir.checkpoint_dir();
    let good = std::fs::read(checkpoint::model_path(&ck, 200)).unwrap();
    std::fs::write(checkpoint::model_path(&ck, 300), &good[..good.len() / 2]).unwrap();
    std::fs::write(ck.join("epoch_000300.optim.safetensors.tmp"), &good[..100]).unwrap();
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.metrics_path())
        .unwrap();
    std::io::Write::write_all(&mut m, b"260,0.12,0.9").unwrap();

    let (mut resumed, skipped) = Trainer::resume(&dir, &[]).unwrap();
    assert!(
        !ck.join("epoch_000300.optim.safetensors.tmp").exists(),
        "a stray temp file is removed on the next start"
    );
    assert_eq!(resumed.epoch, 200);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("epoch_000300"), "{skipped:?}");
    resumed.run(&mut |_| {}).unwrap();
    assert_same_run(&straight, &dir);
}

#[test]
fn resume_after_sigkill_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = uninterrupted(tmp.path());
    let cfg_path = tmp.path().join("cfg.toml");
    std::fs::write(&cfg_path, config().to_toml()).unwrap();
    let out = tmp.path().join("killed");
    let mut child = groklens()
        .args([
            "train",
            "--config",
            cfg_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
        .spawn()
        .unwrap();
    let first = checkpoint::model_path(&out.join("checkpoints"), 100);
    wait_until("the first checkpoint", Duration::from_secs(120), || {
        first.exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !out.join("final.safetensors").exists(),
        "the run finished before it was killed; make it longer"
    );
    let status = groklens()
        .args(["train", "--resume", out.to_str().unwrap(), "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_same_run(&straight, &RunDir::new(out));
}

#[test]
fn one_process_writes_a_run_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path().join("run"));
    let mut cfg = config();
    cfg.train.epochs = 20;
    let mut first = Trainer::create(cfg.clone(), &dir).unwrap();
    first.run_until(10, &mut |_| {}).unwrap();
    let pid = std::process::id().to_string();
    // A second trainer, in this process or another, is refused while the first holds the run.
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(e.contains("in use") && e.contains(&pid), "{e}");
    let e = Trainer::create(cfg, &dir).err().unwrap().to_string();
    assert!(e.contains("already holds a run"), "{e}");
    let out = groklens()
        .args(["train", "--resume", dir.root.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&pid), "{err}");
    let rows = metrics::read(&dir.metrics_path()).unwrap().len();
    // Once the first lets go (here: dropped; a killed process lets go the same way), resume works.
    drop(first);
    let (mut again, _) = Trainer::resume(&dir, &[]).unwrap();
    again.run(&mut |_| {}).unwrap();
    let after = metrics::read(&dir.metrics_path()).unwrap();
    assert!(after.len() > rows);
    assert!(after.windows(2).all(|w| w[0].epoch < w[1].epoch));
}

#[test]
fn resume_never_restarts_over_a_history_it_cannot_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path().join("run"));
    let mut cfg = config();
    cfg.train.epochs = 300;
    Trainer::create(cfg, &dir)
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    let metrics_before = std::fs::read(dir.metrics_path()).unwrap();
    let final_before = std::fs::read(dir.final_path()).unwrap();
    let unchanged = || {
        assert_eq!(std::fs::read(dir.metrics_path()).unwrap(), metrics_before);
        assert_eq!(std::fs::read(dir.final_path()).unwrap(), final_before);
    };
    // Checkpoints deleted: with the folder gone, and with it empty.
    let ckpts = dir.checkpoint_dir();
    let saved = tmp.path().join("saved");
    std::fs::rename(&ckpts, &saved).unwrap();
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(
        e.contains("from scratch") && e.contains("final.safetensors"),
        "{e}"
    );
    unchanged();
    std::fs::create_dir(&ckpts).unwrap();
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(e.contains("overwrite the run's history"), "{e}");
    unchanged();
    // Only an old checkpoint left: resuming from it would shorten the history.
    std::fs::remove_dir(&ckpts).unwrap();
    std::fs::rename(&saved, &ckpts).unwrap();
    for e in checkpoint::list_epochs(&ckpts)
        .into_iter()
        .filter(|&e| e > 100)
    {
        std::fs::remove_file(checkpoint::model_path(&ckpts, e)).unwrap();
    }
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(e.contains("from epoch 100"), "{e}");
    unchanged();
    // The model's shape edited in config.toml: refused as a change of identity, naming the key.
    let toml = std::fs::read_to_string(dir.config_path()).unwrap();
    let wider = toml.replace("d_model = 32", "d_model = 48");
    std::fs::write(dir.config_path(), &wider).unwrap();
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(
        e.contains("identity") && e.contains("model.d_model 32 → 48"),
        "{e}"
    );
    unchanged();
    // Edited in the identity record too: the run's pieces carry the old identity, and that is an
    // error, not a restart.
    std::fs::write(dir.identity_path(), &wider).unwrap();
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(
        e.contains("belongs to another run") && e.contains("edited"),
        "{e}"
    );
    unchanged();
    assert!(std::fs::read_to_string(dir.root.join("model_config.json"))
        .unwrap()
        .contains("\"d_model\": 32"));
}

#[test]
fn a_run_keeps_its_identity_and_may_train_longer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path().join("run"));
    let mut cfg = config();
    cfg.train.epochs = 200;
    Trainer::create(cfg.clone(), &dir)
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    // Identity keys cannot be set on resume, whatever the value.
    for set in ["train.lr=0.01", "model.d_model=48", "task.train_frac=0.5"] {
        let e = Trainer::resume(&dir, &[set.to_string()])
            .err()
            .unwrap()
            .to_string();
        let key = set.split('=').next().unwrap();
        assert!(e.contains(key) && e.contains("identity"), "{e}");
    }
    // A misspelt key is called unknown, not part of the identity.
    let e = Trainer::resume(&dir, &["task.frac_train=0.5".to_string()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("task.frac_train") && e.contains("unknown key"),
        "{e}"
    );
    // Nor edited in config.toml; the error lists every changed key.
    let toml = std::fs::read_to_string(dir.config_path()).unwrap();
    let edited = toml
        .replace("data_seed = 0", "data_seed = 5")
        .replace("epochs = 200", "epochs = 300");
    std::fs::write(dir.config_path(), &edited).unwrap();
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(
        e.contains("task.data_seed 0 → 5") && !e.contains("epochs 200"),
        "{e}"
    );
    std::fs::write(dir.config_path(), &toml).unwrap();
    // Training longer is accepted explicitly, recorded in config.toml, and continues the same run.
    let (mut longer, notes) = Trainer::resume(&dir, &["train.epochs=300".to_string()]).unwrap();
    assert!(
        notes.iter().any(|n| n.contains("train.epochs 200 → 300")),
        "{notes:?}"
    );
    assert_eq!(longer.epoch, 200);
    longer.run(&mut |_| {}).unwrap();
    drop(longer);
    assert!(std::fs::read_to_string(dir.config_path())
        .unwrap()
        .contains("epochs = 300"));
    let straight = uninterrupted(tmp.path());
    assert_same_run(&straight, &dir);
    // Fewer epochs than the run has reached is refused.
    let e = Trainer::resume(&dir, &["train.epochs=100".to_string()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("train.epochs") && e.contains("300"), "{e}");
}

#[test]
fn a_run_killed_while_being_created_can_be_created_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path().join("run"));
    let mut cfg = config();
    cfg.train.epochs = 20;
    Trainer::create(cfg.clone(), &dir).unwrap();
    // What a kill before the last write leaves: everything but config.toml, plus a temp file.
    std::fs::remove_file(dir.config_path()).unwrap();
    std::fs::write(dir.root.join("config.toml.tmp"), b"[task]").unwrap();
    let e = Trainer::resume(&dir, &[]).err().unwrap().to_string();
    assert!(e.contains("config.toml") && e.contains("not found"), "{e}");
    let mut t = Trainer::create(cfg, &dir).unwrap();
    t.run(&mut |_| {}).unwrap();
    assert!(dir.final_path().exists() && !dir.root.join("config.toml.tmp").exists());
}

#[test]
fn resume_refuses_metrics_with_gaps_it_cannot_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path().join("run"));
    let mut cfg = config();
    cfg.train.epochs = 200;
    let mut t = Trainer::create(cfg, &dir).unwrap();
    t.run_until(150, &mut |_| {}).unwrap();
    drop(t);
    let text = std::fs::read_to_string(dir.metrics_path()).unwrap();
    // Deleted, cut in the middle, garbled, and repeated: each refused, naming metrics.csv.
    let lines: Vec<&str> = text.lines().collect();
    let cut = [&lines[..3], &lines[8..]].concat().join("\n") + "\n";
    let garbled = text.replace(lines[5], "50,nan?,x");
    let repeated = format!("{text}{}\n", lines[4]);
    for (what, content) in [
        ("deleted", None),
        ("cut", Some(cut)),
        ("garbled", Some(garbled)),
        ("repeated", Some(repeated)),
    ] {
        match &content {
            None => std::fs::remove_file(dir.metrics_path()).unwrap(),
            Some(c) => std::fs::write(dir.metrics_path(), c).unwrap(),
        }
        let e = Trainer::resume(&dir, &[]).err().map(|e| e.to_string());
        let e = e.unwrap_or_else(|| panic!("{what}: resume should be refused"));
        assert!(e.contains("metrics.csv"), "{what}: {e}");
    }
    std::fs::write(dir.metrics_path(), &text).unwrap();
    let (mut resumed, _) = Trainer::resume(&dir, &[]).unwrap();
    resumed.run(&mut |_| {}).unwrap();
}

#[test]
fn the_thread_count_changes_no_number_and_a_resume_may_change_it() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = uninterrupted(tmp.path()); // 2 threads
    for threads in [1, 3] {
        let dir = RunDir::new(tmp.path().join(format!("threads{threads}")));
        let mut cfg = config();
        cfg.train.threads = threads;
        Trainer::create(cfg, &dir)
            .unwrap()
            .run(&mut |_| {})
            .unwrap();
        assert_same_run(&straight, &dir);
        assert_eq!(
            std::fs::read(dir.final_path()).unwrap(),
            std::fs::read(straight.final_path()).unwrap(),
            "{threads} threads: final.safetensors is byte-identical"
        );
    }
    // Trained on 1 thread to epoch 200, resumed on 3: the same run as the uninterrupted one.
    let dir = RunDir::new(tmp.path().join("moved"));
    let mut cfg = config();
    cfg.train.threads = 1;
    cfg.train.epochs = 200;
    Trainer::create(cfg, &dir)
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    let sets = [
        "train.threads=3".to_string(),
        "train.epochs=300".to_string(),
    ];
    let (mut resumed, _) = Trainer::resume(&dir, &sets).unwrap();
    resumed.run(&mut |_| {}).unwrap();
    assert_same_run(&straight, &dir);

    // The MLP family, minibatches with a partial last batch.
    let mut mlp = preset("quick-mlp").unwrap();
    mlp.train.batch_size = 300;
    let weights = |threads: usize| {
        let mut c = mlp.clone();
        c.train.threads = threads;
        let mut t = Trainer::new(c).unwrap();
        for _ in 0..5 {
            t.train_epoch().unwrap();
        }
        (t.params.clone(), t.evaluate_test().unwrap())
    };
    let one = weights(1);
    assert_eq!(weights(2), one);
    assert_eq!(weights(3), one);
}

/// Every intervention keeps resume exact: Grokfast's filter state (EMA μ, MA window) travels in the
/// checkpoint, the fixed weight norm is recomputed from the seed, StableMax is a pure function. A run
/// stopped at epoch 150 (its newest checkpoint at 100) and resumed equals the uninterrupted run, and
/// each intervention changes the run (so the switch is live).
#[test]
fn interventions_resume_exactly() {
    let plain = {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path().join("plain"));
        let mut t = Trainer::create(config(), &dir).unwrap();
        t.run(&mut |_| {}).unwrap();
        comparable(&t.history)
    };
    for sets in [
        &["train.grokfast=\"ema\""][..],
        &["train.grokfast=\"ma\"", "train.grokfast_window=30"],
        &["train.orthogonal_grad=true"],
        &["train.loss=\"stablemax\""],
        &["train.weight_norm_scale=0.7", "train.weight_decay=0.0"],
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config();
        for s in sets {
            cfg.set(s).unwrap();
        }
        let straight = RunDir::new(tmp.path().join("straight"));
        Trainer::create(cfg.clone(), &straight)
            .unwrap()
            .run(&mut |_| {})
            .unwrap();
        let dir = RunDir::new(tmp.path().join("stopped"));
        let mut t = Trainer::create(cfg, &dir).unwrap();
        t.run_until(150, &mut |_| {})
            .unwrap_or_else(|e| panic!("{sets:?}: training to epoch 150 failed: {e}"));
        drop(t);
        let (mut resumed, _) = Trainer::resume(&dir, &[]).unwrap();
        assert_eq!(resumed.epoch, 100, "{sets:?}");
        resumed.run(&mut |_| {}).unwrap();
        assert_same_run(&straight, &dir);
        let ran = comparable(&metrics::read(&dir.metrics_path()).unwrap());
        assert_ne!(ran, plain, "{sets:?} changed nothing");
    }
}

/// `groklens train` on [`config`] into `out`, with SIGINT at `sigint` (a terminal's default, or
/// ignored as a non-interactive shell's background jobs have it) whatever this test process has,
/// sent SIGINT once its first checkpoint is written; returns what it printed and how it exited.
fn sigint_after_the_first_checkpoint(
    root: &Path,
    out: &Path,
    sigint: libc::sighandler_t,
) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let cfg_path = root.join("cfg.toml");
    std::fs::write(&cfg_path, config().to_toml()).unwrap();
    let mut cmd = groklens();
    cmd.args(["train", "--config", cfg_path.to_str().unwrap(), "--out"])
        .arg(out)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    // SAFETY: between fork and exec the closure calls only `signal`, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGINT, sigint);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let first = checkpoint::model_path(&out.join("checkpoints"), 100);
    wait_until("the first checkpoint", Duration::from_secs(120), || {
        first.exists()
    });
    assert!(
        !out.join("final.safetensors").exists(),
        "the run finished before the signal; make it longer"
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sigint_checkpoints_says_how_to_resume_and_the_resumed_run_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = uninterrupted(tmp.path());
    let out = tmp.path().join("interrupted");
    let done = sigint_after_the_first_checkpoint(tmp.path(), &out, libc::SIG_DFL);
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(
        !out.join("final.safetensors").exists(),
        "the run finished before the signal arrived; make it longer: {err}"
    );
    assert_eq!(done.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted")
            && err.contains("train --resume")
            && err.contains("stopped at epoch"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let status = groklens()
        .args(["train", "--resume", out.to_str().unwrap(), "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_same_run(&straight, &RunDir::new(out));
}

/// A run started with SIGINT ignored (in the background by a script) keeps ignoring it: it trains to
/// its end, the same run as one never signalled.
#[test]
fn an_ignored_sigint_stays_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = uninterrupted(tmp.path());
    let out = tmp.path().join("ignoring");
    let done = sigint_after_the_first_checkpoint(tmp.path(), &out, libc::SIG_IGN);
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{err}");
    assert!(!err.contains("interrupted"), "{err}");
    assert_same_run(&straight, &RunDir::new(out));
}
