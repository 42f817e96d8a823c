//! The library's one API (`groklens::api`): what the CLI does, a Rust program (or the Python package)
//! does with the same calls, for every task kind.

use groklens::api::{build_config, Analysis, Event, Report, Run, TrainOptions};

/// A small `quick` run of `epochs` with `extra` settings.
fn small_quick(epochs: usize, extra: &[&str]) -> groklens::RunConfig {
    let mut sets = vec![
        format!("train.epochs={epochs}"),
        "train.stop_at_test_acc=0".into(),
        "model.d_model=32".into(),
        "model.d_head=8".into(),
        "model.d_mlp=64".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    build_config(Some("quick"), None, &sets).unwrap()
}

fn quiet() -> TrainOptions {
    TrainOptions {
        estimate: false,
        stop_on_signal: false,
    }
}

#[test]
fn a_run_is_created_trained_read_analysed_and_reported_through_one_facade() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small_quick(40, &["train.eval_every=10", "train.checkpoint_every=20"]);
    let dir = tmp.path().join("run");
    let mut run = Run::create(cfg.clone(), &dir).unwrap();
    // Before training: no final model, and the error says what to do.
    let e = run.model(None).err().unwrap().to_string();
    assert!(
        e.contains("unfinished") && e.contains("train it first"),
        "{e}"
    );
    let mut evals = Vec::new();
    let trained = run
        .train(quiet(), &mut |e| {
            if let Event::Eval { row, total, .. } = e {
                evals.push((row.epoch, total));
            }
        })
        .unwrap();
    assert_eq!(trained.epochs, 40);
    assert_eq!(
        evals.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 10, 20, 30, 40]
    );
    assert!(evals.iter().all(|e| e.1 == 40));
    assert!(trained.text().contains("40 epochs"));

    // Opened again: the same config, history, checkpoints and models.
    let run = Run::open(&dir).unwrap();
    assert_eq!(run.config().run_id(), cfg.run_id());
    assert_eq!(run.metrics().unwrap().len(), 5);
    assert_eq!(run.checkpoints(), [20, 40]);
    let final_model = run.model(None).unwrap();
    let last = run.model(Some(40)).unwrap();
    assert_eq!(final_model.sum_of_squares(), last.sum_of_squares());
    let e = run.model(Some(30)).err().unwrap().to_string();
    assert!(e.contains("[20, 40]"), "{e}");
    let split = run.split().unwrap();
    assert_eq!(split.train.len() + split.test.len(), 31 * 31);
    match run.analyze().unwrap() {
        Analysis::Modular(a) => assert_eq!(a.final_epoch, 40),
        _ => panic!("a modular run gets the modular analysis"),
    }
    let report = run.write_report().unwrap();
    assert!(matches!(report, Report::Modular(_)));
    assert!(report.path().exists() && report.text().contains("key frequencies"));
}

#[test]
fn every_task_kind_gets_its_own_analysis_and_page() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let seq = build_config(Some("quick-prev-token"), None, &sets(&["train.epochs=20"])).unwrap();
    let mut run = Run::create(seq, tmp.path().join("seq")).unwrap();
    run.train(quiet(), &mut |_| {}).unwrap();
    assert!(matches!(run.analyze().unwrap(), Analysis::Sequence(_)));
    assert!(matches!(run.write_report().unwrap(), Report::Sequence(_)));

    let compound = build_config(
        Some("compound-small"),
        None,
        &sets(&[
            "task.p=5",
            "model.d_model=16",
            "model.n_heads=2",
            "model.d_head=8",
            "model.attn_only=true",
            "train.epochs=10",
            "train.eval_every=5",
            "train.checkpoint_every=5",
        ]),
    )
    .unwrap();
    let mut run = Run::create(compound, tmp.path().join("compound")).unwrap();
    run.train(quiet(), &mut |_| {}).unwrap();
    assert!(matches!(run.analyze().unwrap(), Analysis::Compound(_)));
    assert!(matches!(run.write_report().unwrap(), Report::Compound(_)));
}

#[test]
fn an_opened_run_resumes_when_trained_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut run = Run::create(small_quick(20, &[]), &dir).unwrap();
    run.train(quiet(), &mut |_| {}).unwrap();
    drop(run);
    let (run, _) = Run::resume(&dir, &["train.epochs=30".to_string()]).unwrap();
    drop(run);
    let mut notes = Vec::new();
    let mut run = Run::open(&dir).unwrap();
    let t = run
        .train(quiet(), &mut |e| {
            if let Event::Note(n) = e {
                notes.push(n)
            }
        })
        .unwrap();
    assert_eq!((t.first_epoch, t.epochs), (20, 30));
    assert!(notes.iter().any(|n| n.contains("resuming")), "{notes:?}");
}

#[test]
fn a_model_trained_elsewhere_is_imported_as_epoch_zero_and_analysed_like_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small_quick(30, &["train.eval_every=10", "train.checkpoint_every=10"]);
    let source = tmp.path().join("source");
    let mut run = Run::create(cfg.clone(), &source).unwrap();
    run.train(quiet(), &mut |_| {}).unwrap();
    let trained = Run::open(&source).unwrap();
    let params = trained.model(None).unwrap();
    let last = trained.metrics().unwrap().last().copied().unwrap();

    let dir = tmp.path().join("imported");
    let imported = Run::import(cfg.clone(), params.clone(), &dir).unwrap();
    // One evaluation at epoch 0 that scores the weights as the trainer did at their last epoch.
    let rows = imported.metrics().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].epoch, 0);
    assert!((rows[0].test_loss - last.test_loss).abs() < 1e-9 * last.test_loss.max(1.0));
    // (The trainer's train columns average the epoch's steps; here the split is scored as it is.)
    assert!(rows[0].train_loss.is_finite() && (0.0..=1.0).contains(&rows[0].train_acc));
    assert_eq!(imported.checkpoints(), [0]);
    assert_eq!(
        imported.model(None).unwrap().sum_of_squares(),
        params.sum_of_squares()
    );
    match (imported.analyze().unwrap(), trained.analyze().unwrap()) {
        (Analysis::Modular(a), Analysis::Modular(b)) => {
            assert_eq!(a.embed.key_freqs, b.embed.key_freqs);
            assert_eq!(a.final_epoch, 0);
        }
        _ => panic!("a modular run gets the modular analysis"),
    }
    assert!(imported.write_report().unwrap().path().exists());

    // Importing again into the same place, or weights of another shape, is refused.
    let e = Run::import(cfg.clone(), params.clone(), &dir)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already holds a run"), "{e}");
    let wider = small_quick(30, &["model.d_mlp=32"]);
    let e = Run::import(wider, params, tmp.path().join("other"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("do not fit") && e.contains("blocks.0.mlp.W_in"),
        "{e}"
    );
    assert!(!tmp.path().join("other").exists());

    // Training it further continues from the imported weights.
    let (mut more, _) = Run::resume(&dir, &["train.epochs=10".into()]).unwrap();
    more.train(quiet(), &mut |_| {}).unwrap();
    assert_eq!(Run::open(&dir).unwrap().checkpoints(), [0, 10]);
}
