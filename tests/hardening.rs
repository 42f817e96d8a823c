//! Probes of a hostile-but-fair user (issue 21): each either works correctly or is refused with an
//! error naming the file or key, a non-zero exit, and no file changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use groklens::sweep::spec::SweepSpec;

mod common;
use common::bin::{fails_with, groklens, output, succeeds, text, wait_until};

/// Asserts `dir` holds exactly the files of `before`, byte for byte, naming those that differ.
fn assert_unchanged(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let after = snapshot(dir);
    let differ: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(differ.is_empty(), "{what} changed {differ:?}");
}

/// Every file under `dir` with its bytes (but the lock file, which holds its last holder's PID).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `groklens cache` of run `r`'s final model on `tokens` into `out`, which must fail naming `needles`.
fn cache_fails_with(r: &Path, tokens: &Path, out: &Path, needles: &[&str]) {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let list = [
        "cache".to_string(),
        "--checkpoint".into(),
        path(&r.join("final.safetensors")),
        "--model-config".into(),
        path(&r.join("model_config.json")),
        "--tokens".into(),
        path(tokens),
        "--out".into(),
        path(out),
    ];
    fails_with(&args(&list), needles);
}

/// A small quick run of `epochs` (checkpoints every 10), with extra `--set`s.
fn small_run(dir: &Path, epochs: usize, sets: &[&str]) {
    let epochs = format!("train.epochs={epochs}");
    let mut args = vec![
        "train",
        "--preset",
        "quick",
        "--quiet",
        "--out",
        dir.to_str().unwrap(),
    ];
    for s in [
        epochs.as_str(),
        "train.eval_every=10",
        "train.checkpoint_every=10",
        "train.stop_at_test_acc=0",
        "model.d_model=32",
        "model.d_head=8",
        "model.d_mlp=64",
    ]
    .iter()
    .chain(sets)
    {
        args.extend(["--set", s]);
    }
    succeeds(&args);
}

#[test]
fn a_new_run_never_writes_into_a_directory_of_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("D");
    std::fs::create_dir_all(d.join("checkpoints")).unwrap();
    std::fs::write(d.join("metrics.csv"), "keep\n").unwrap();
    std::fs::write(d.join("data.tmp"), "x").unwrap();
    let before = snapshot(&d);
    let t = fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--quiet",
            "--out",
            d.to_str().unwrap(),
        ],
        &["is not empty", "metrics.csv", "--out"],
    );
    assert!(t.contains(d.to_str().unwrap()), "{t}");
    assert_unchanged(&d, &before, "a refused run");

    // Foreign checkpoints alone are refused too.
    let c = tmp.path().join("C");
    std::fs::create_dir_all(c.join("checkpoints")).unwrap();
    std::fs::write(c.join("checkpoints/epoch_000300.safetensors"), "x").unwrap();
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--quiet",
            "--out",
            c.to_str().unwrap(),
        ],
        &["is not empty", "checkpoints"],
    );
    // An existing empty directory is fine.
    let e = tmp.path().join("E");
    std::fs::create_dir_all(&e).unwrap();
    small_run(&e, 10, &[]);
    assert!(e.join("final.safetensors").is_file());
}

#[test]
fn writers_refuse_their_inputs_and_files_inside_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r2) = (tmp.path().join("R1"), tmp.path().join("R2"));
    small_run(&r1, 20, &[]);
    small_run(&r2, 20, &["model.seed=7"]);
    let (a, b) = (r1.to_str().unwrap(), r2.to_str().unwrap());
    let before = snapshot(&r1);
    for target in [
        "final.safetensors",
        "metrics.csv",
        "checkpoints/epoch_000010.safetensors",
        "notes.html",
    ] {
        let out = r1.join(target);
        fails_with(
            &["compare", a, b, "--out", out.to_str().unwrap()],
            &["inside the run directory", "R1"],
        );
    }
    let tokens = r1.join("split.safetensors");
    cache_fails_with(&r1, &tokens, &r1.join("config.toml"), &["config.toml"]);
    fails_with(
        &[
            "ablate",
            a,
            "--out",
            r1.join("metrics.csv").to_str().unwrap(),
        ],
        &["metrics.csv"],
    );
    assert_unchanged(&r1, &before, "a refused write");
    // Outside the run, compare writes its page.
    let page = tmp.path().join("cmp.html");
    succeeds(&["compare", a, b, "--out", page.to_str().unwrap()]);
    assert!(page.is_file());
}

#[test]
fn a_run_is_one_run_refusing_foreign_pieces_and_restoring_derived_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, other, seeded) = (
        tmp.path().join("R"),
        tmp.path().join("OTHER"),
        tmp.path().join("SEEDED"),
    );
    small_run(&r, 20, &[]);
    small_run(&other, 20, &["task.data_seed=5"]);
    small_run(&seeded, 30, &["model.seed=9"]);
    let rs = r.to_str().unwrap();

    // A refused resume changes nothing, config.toml included.
    let before = snapshot(&r);
    fails_with(
        &[
            "train",
            "--resume",
            rs,
            "--set",
            "train.epochs=5",
            "--quiet",
        ],
        &["train.epochs", "at least 20"],
    );
    assert_unchanged(&r, &before, "a refused resume");

    // A split of another run.
    let split = std::fs::read(r.join("split.safetensors")).unwrap();
    std::fs::copy(other.join("split.safetensors"), r.join("split.safetensors")).unwrap();
    let before = snapshot(&r);
    fails_with(
        &[
            "train",
            "--resume",
            rs,
            "--set",
            "train.epochs=40",
            "--quiet",
        ],
        &["split.safetensors", "belongs to another run"],
    );
    fails_with(
        &["report", rs],
        &["split.safetensors", "belongs to another run"],
    );
    assert_unchanged(&r, &before, "a refused resume");
    std::fs::write(r.join("split.safetensors"), split).unwrap();

    // A checkpoint of another run, newer than the run's own.
    for f in ["epoch_000030.safetensors", "epoch_000030.optim.safetensors"] {
        std::fs::copy(
            seeded.join("checkpoints").join(f),
            r.join("checkpoints").join(f),
        )
        .unwrap();
    }
    let before = snapshot(&r);
    fails_with(
        &[
            "train",
            "--resume",
            rs,
            "--set",
            "train.epochs=40",
            "--quiet",
        ],
        &["epoch_000030", "belongs to another run"],
    );
    assert_unchanged(&r, &before, "a refused resume");
    for f in ["epoch_000030.safetensors", "epoch_000030.optim.safetensors"] {
        std::fs::remove_file(r.join("checkpoints").join(f)).unwrap();
    }

    // model_config.json is derived: rewritten when missing or edited.
    let json = std::fs::read_to_string(r.join("model_config.json")).unwrap();
    std::fs::remove_file(r.join("model_config.json")).unwrap();
    let t = succeeds(&[
        "train",
        "--resume",
        rs,
        "--set",
        "train.epochs=30",
        "--quiet",
    ]);
    assert!(
        t.contains("model_config.json") && t.contains("missing"),
        "{t}"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("model_config.json")).unwrap(),
        json
    );
    std::fs::write(
        r.join("model_config.json"),
        json.replace("\"d_model\": 32", "\"d_model\": 64"),
    )
    .unwrap();
    let t = succeeds(&["report", rs]);
    assert!(t.contains("model_config.json"), "{t}");
    assert_eq!(
        std::fs::read_to_string(r.join("model_config.json")).unwrap(),
        json
    );

    // The resumed run's pieces all carry its identity.
    let id = groklens::run::RunDir::new(&r)
        .load_config()
        .unwrap()
        .run_id();
    for f in [
        "split.safetensors",
        "final.safetensors",
        "checkpoints/epoch_000030.safetensors",
        "checkpoints/epoch_000030.optim.safetensors",
    ] {
        let meta = groklens::tensor_io::read_metadata(&r.join(f)).unwrap();
        assert_eq!(meta.get("run_id"), Some(&id), "{f}");
    }
}

#[test]
fn settings_that_would_do_nothing_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("run");
    let o = d.to_str().unwrap();
    fails_with(
        &[
            "train",
            "--preset",
            "quick-bitnet-ternary",
            "--set",
            "model.weight_scale=true",
            "--out",
            o,
        ],
        &["model.weight_scale", "binary weights only"],
    );
    fails_with(
        &[
            "train",
            "--preset",
            "quick",
            "--set",
            "train.grokfast=ma",
            "--set",
            "train.grokfast_window=1000000000",
            "--out",
            o,
        ],
        &["train.grokfast_window", "longer than the run"],
    );
    assert!(!d.exists(), "a refused config created the run directory");

    // A comparison member trained with other settings is neither reused nor retrained over.
    let g = tmp.path().join("G");
    small_run(&g.join("quick"), 10, &[]);
    let before = snapshot(&g);
    fails_with(
        &[
            "grok",
            "--preset",
            "quick-seed-004",
            "--set",
            "train.lr=0.01",
            "--out",
            g.to_str().unwrap(),
            "--quiet",
        ],
        &["other settings", "train.lr", "model.d_model", "quick"],
    );
    assert_unchanged(&g, &before, "a refused comparison");
}

#[test]
fn sweep_specs_with_overridden_or_duplicate_points_are_refused() {
    let err = |spec: &str| {
        SweepSpec::parse(spec)
            .unwrap()
            .points()
            .unwrap_err()
            .to_string()
    };
    let e = err(
        "name = \"s\"\npreset = \"quick\"\n[set]\n\"train.lr\" = 0.001\n[grid]\n\"train.lr\" = [0.003, 0.01]\n",
    );
    assert!(e.contains("train.lr") && e.contains("also swept"), "{e}");
    let e = err(
        "name = \"s\"\npreset = \"quick\"\npoints = [{ \"task.train_frac\" = 0.5 }, {}]\n[grid]\n\"task.train_frac\" = [0.5]\n",
    );
    assert!(e.contains("same config"), "{e}");
    let e = err("name = \"s\"\npreset = \"quick\"\npoints = [{}, { \"train.lr\" = 0.003 }]\n");
    assert!(e.contains("same config"), "{e}");
    // Distinct points still expand.
    let ok = SweepSpec::parse(
        "name = \"s\"\npreset = \"quick\"\npoints = [{}, { \"train.lr\" = 0.01 }]\n",
    )
    .unwrap()
    .points()
    .unwrap();
    assert_eq!(ok.len(), 2);
}

#[test]
fn workers_die_with_a_killed_sweep_after_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("spec.toml");
    std::fs::write(
        &spec,
        "name = \"orphans\"\npreset = \"quick\"\n\
         set = { \"train.epochs\" = 100000, \"train.checkpoint_every\" = 50, \"train.stop_at_test_acc\" = 0.0 }\n\
         [grid]\n\"task.train_frac\" = [0.3]\n",
    )
    .unwrap();
    let dir = tmp.path().join("sweep");
    let mut sweep = groklens()
        .args(["sweep", "run"])
        .arg(&spec)
        .arg("--out")
        .arg(&dir)
        .args(["--workers", "1", "--quiet", "--no-reports"])
        .spawn()
        .unwrap();
    let run = groklens::run::RunDir::new(dir.join("runs").join("task.train_frac-0.3"));
    wait_until("a checkpoint", std::time::Duration::from_secs(120), || {
        !groklens::run::checkpoint::list_epochs(&run.checkpoint_dir()).is_empty()
    });
    // SIGKILL of the sweep's own PID only, as a scheduler or a closed terminal does.
    sweep.kill().unwrap();
    sweep.wait().unwrap();
    assert!(
        groklens::run::RunLock::wait_until_free(&run.root, std::time::Duration::from_secs(60)),
        "the worker kept training after its sweep died"
    );
    let log = std::fs::read_to_string(dir.join("logs").join("task.train_frac-0.3.log")).unwrap();
    assert!(
        log.contains("interrupted") && log.contains("--resume"),
        "{log}"
    );
    // Its last checkpoint is where it stopped, off the every-50 schedule unless by chance.
    let last = *groklens::run::checkpoint::list_epochs(&run.checkpoint_dir())
        .last()
        .unwrap();
    let history = groklens::run::metrics::read(&run.metrics_path()).unwrap();
    assert!(last >= history.last().unwrap().epoch, "{last}");
    // A second sweep of the same directory is refused while one runs, not spliced.
    let hold = groklens::sweep::SweepDir::new(&dir).lock(false).unwrap();
    fails_with(
        &[
            "sweep",
            "run",
            spec.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
            "--quiet",
        ],
        &["in use", "sweep.lock"],
    );
    drop(hold);
}

#[test]
fn a_sweep_point_without_its_history_is_damaged_not_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("spec.toml");
    std::fs::write(
        &spec,
        "name = \"damaged\"\npreset = \"quick\"\n\
         set = { \"train.epochs\" = 20, \"model.d_model\" = 32, \"model.d_head\" = 8, \"model.d_mlp\" = 64 }\n\
         [grid]\n\"task.train_frac\" = [0.3]\n",
    )
    .unwrap();
    let dir = tmp.path().join("sweep");
    let (s, d) = (spec.to_str().unwrap(), dir.to_str().unwrap());
    succeeds(&["sweep", "run", s, "--out", d, "--quiet", "--no-reports"]);
    let run = dir.join("runs").join("task.train_frac-0.3");
    std::fs::remove_file(run.join("metrics.csv")).unwrap();
    succeeds(&["sweep", "report", d]);
    let index = std::fs::read_to_string(dir.join("index.csv")).unwrap();
    assert!(
        index.contains(",damaged,") && !index.contains(",finished,"),
        "{index}"
    );
    let t = fails_with(
        &["sweep", "run", s, "--out", d, "--quiet", "--no-reports"],
        &["damaged", "metrics.csv"],
    );
    assert!(t.contains("1 failed"), "{t}");
}

#[test]
fn small_mistakes_get_messages_that_name_the_key_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = out.to_str().unwrap();
    let quick = |sets: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["train", "--preset", "quick", "--quiet", "--out", o]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for s in sets {
            a.extend(["--set".to_string(), s.to_string()]);
        }
        a
    };
    fails_with(
        &args(&quick(&["task.train_frac=nan"])),
        &["task.train_frac", "finite"],
    );
    fails_with(
        &args(&quick(&["model.family=mlp"])),
        &["model.family", "cannot switch", "quick-mlp"],
    );
    // A diverging run exits with its own code and names the setting that made it diverge.
    let diverged = output(&args(&quick(&["train.weight_norm_scale=1e30"])));
    assert_eq!(diverged.status.code(), Some(3), "{}", text(&diverged));
    assert!(
        text(&diverged).contains("train.weight_norm_scale"),
        "{}",
        text(&diverged)
    );
    std::fs::remove_dir_all(&out).ok();
    // A loss that explodes without becoming infinite is warned about.
    let t = succeeds(&args(&quick(&[
        "train.lr=1e3",
        "train.weight_decay=0",
        "train.epochs=50",
        "model.d_model=32",
        "model.d_head=8",
        "model.d_mlp=64",
    ])));
    assert!(t.contains("warning") && t.contains("train.lr"), "{t}");

    let r = tmp.path().join("R");
    small_run(&r, 20, &[]);
    let rs = r.to_str().unwrap();
    // An empty tokens tensor.
    let tokens = tmp.path().join("tokens.safetensors");
    groklens::tensor_io::write_atomic(
        &tokens,
        &[(
            "tokens".to_string(),
            groklens::tensor_io::HostTensor::i64(vec![0, 3], vec![]),
        )],
        BTreeMap::new(),
    )
    .unwrap();
    cache_fails_with(
        &r,
        &tokens,
        &tmp.path().join("cache.safetensors"),
        &["tokens", "[0, 3]", "at least one row"],
    );
    // Ablating an unfinished run points at its checkpoints.
    std::fs::rename(r.join("final.safetensors"), tmp.path().join("final.bak")).unwrap();
    fails_with(
        &["ablate", rs],
        &["unfinished", "--checkpoint", "epoch_000020"],
    );
    std::fs::rename(tmp.path().join("final.bak"), r.join("final.safetensors")).unwrap();
    // A NaN typed into metrics.csv is refused by line, not carried through resume.
    let metrics = std::fs::read_to_string(r.join("metrics.csv")).unwrap();
    let mut lines: Vec<String> = metrics.lines().map(str::to_string).collect();
    let mut fields: Vec<String> = lines[2].split(',').map(str::to_string).collect();
    fields[3] = "NaN".into();
    lines[2] = fields.join(",");
    std::fs::write(r.join("metrics.csv"), lines.join("\n") + "\n").unwrap();
    fails_with(
        &[
            "train",
            "--resume",
            rs,
            "--set",
            "train.epochs=30",
            "--quiet",
        ],
        &["metrics.csv", "line 3", "NaN"],
    );
}

#[test]
fn a_diverged_final_model_is_reported_from_the_last_bounded_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("R");
    small_run(&r, 20, &[]);
    // What a run whose weights blew up (finite but huge) leaves as its final model.
    let f = groklens::tensor_io::read(&r.join("final.safetensors")).unwrap();
    let tensors: Vec<(String, groklens::tensor_io::HostTensor)> = f
        .tensors
        .iter()
        .map(|(n, t)| {
            let data = t.to_f32(n).unwrap().iter().map(|x| x * 1e25).collect();
            (
                n.clone(),
                groklens::tensor_io::HostTensor::f32(t.shape.clone(), data),
            )
        })
        .collect();
    let meta = f.metadata.clone().into_iter().collect();
    groklens::tensor_io::write_atomic(&r.join("final.safetensors"), &tensors, meta).unwrap();
    let t = succeeds(&["report", r.to_str().unwrap()]);
    assert!(
        t.contains("final.safetensors") && t.contains("diverged") && t.contains("checkpoint"),
        "{t}"
    );
}

#[test]
fn compare_sets_runs_of_any_task_kind_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let modular = tmp.path().join("modular");
    small_run(&modular, 20, &[]);
    let seq = tmp.path().join("prev");
    let seq_s = seq.to_str().unwrap();
    succeeds(&[
        "train",
        "--preset",
        "quick-prev-token",
        "--quiet",
        "--out",
        seq_s,
        "--set",
        "train.epochs=20",
    ]);
    let page = tmp.path().join("both.html");
    let t = succeeds(&[
        "compare",
        modular.to_str().unwrap(),
        seq_s,
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(
        t.contains("prev: grokked at") && t.contains("training curves only"),
        "{t}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    // Both runs' curves are drawn; the Fourier sections hold the modular run only, and the note
    // names the run they leave out.
    assert!(html.contains("prev train") && html.contains("modular train"));
    assert!(html.contains("id=\"frequencies\"") && html.contains("id=\"progress\""));
    assert!(
        html.contains("Note (prev)") && html.contains("task.kind = previous_token"),
        "note missing"
    );
    // Two runs of a task the Fourier sections cannot read: curves and milestones only.
    let seq2 = tmp.path().join("prev2");
    std::fs::create_dir(&seq2).unwrap();
    for f in ["config.toml", "metrics.csv"] {
        std::fs::copy(seq.join(f), seq2.join(f)).unwrap();
    }
    let page2 = tmp.path().join("seq.html");
    succeeds(&[
        "compare",
        seq_s,
        seq2.to_str().unwrap(),
        "--out",
        page2.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&page2).unwrap();
    assert!(html.contains("id=\"training\"") && !html.contains("id=\"frequencies\""));
}
