//! The task kinds through the trainer: micro-batch accumulation equals the full-batch step, a
//! streamed run resumes exactly, and the compound task trains from row indices.

use groklens::presets::preset;
use groklens::run::RunDir;
use groklens::train::Trainer;
use groklens::RunConfig;

fn tiny_compound() -> RunConfig {
    let mut cfg = preset("compound-small").unwrap();
    for s in [
        "task.p=5",
        "model.d_model=32",
        "model.d_head=8",
        "model.d_mlp=64",
        "model.n_ctx=10",
        "train.epochs=3",
        "train.threads=2",
    ] {
        cfg.set(s).unwrap();
    }
    cfg.resolve().unwrap()
}

#[test]
fn micro_batches_sum_to_the_full_batch_step() {
    let full = tiny_compound();
    let mut micro = full.clone();
    micro.set("train.micro_batch=37").unwrap();
    let (mut a, mut b) = (Trainer::new(full).unwrap(), Trainer::new(micro).unwrap());
    assert_eq!(a.rows(), (312, 313));
    for _ in 0..3 {
        let (sa, _) = a.train_epoch().unwrap();
        let (sb, _) = b.train_epoch().unwrap();
        assert!(
            (sa.loss - sb.loss).abs() < 1e-6,
            "{} vs {}",
            sa.loss,
            sb.loss
        );
        assert_eq!(sa.predictions, sb.predictions);
    }
    for (p, q) in a.params.iter().zip(b.params.iter()) {
        let d = p
            .data
            .iter()
            .zip(&q.data)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d < 2e-6, "{}: {d}", p.name);
    }
    let (ta, tb) = (a.evaluate_test().unwrap(), b.evaluate_test().unwrap());
    assert!((ta.loss - tb.loss).abs() < 1e-5 && ta.predictions == 313);
}

#[test]
fn a_streamed_run_resumed_half_way_equals_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = preset("quick-prev-token").unwrap();
    cfg.set("train.epochs=40").unwrap();
    cfg.set("train.checkpoint_every=20").unwrap();
    let whole = RunDir::new(tmp.path().join("whole"));
    let mut t = Trainer::create(cfg.clone(), &whole).unwrap();
    t.run(&mut |_| {}).unwrap();
    let want = t.params.clone();
    drop(t);

    let halves = RunDir::new(tmp.path().join("halves"));
    let mut t = Trainer::create(cfg, &halves).unwrap();
    t.run_until(20, &mut |_| {}).unwrap();
    drop(t);
    let (mut t, _) = Trainer::resume(&halves, &[]).unwrap();
    assert_eq!(t.epoch, 20);
    t.run(&mut |_| {}).unwrap();
    assert_eq!(t.params, want, "the resumed stream drew different batches");
    let read = |d: &RunDir| groklens::run::metrics::read(&d.metrics_path()).unwrap();
    let (a, b) = (read(&whole), read(&halves));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.epoch, x.train_loss, x.test_loss),
            (y.epoch, y.train_loss, y.test_loss)
        );
    }
}

#[test]
fn bad_task_settings_name_the_field() {
    let mut cfg = preset("quick-prev-token").unwrap();
    cfg.set("train.batch_size=0").unwrap();
    let e = cfg.resolve().unwrap_err().to_string();
    assert!(e.contains("train.batch_size"), "{e}");
    let mut cfg = preset("quick-prev-token").unwrap();
    let e = cfg.set("task.kind=previous").unwrap_err().to_string();
    assert!(e.contains("previous_token"), "{e}");
    let mut cfg = preset("quick-prev-token").unwrap();
    cfg.set("model.d_vocab_out=10").unwrap();
    let e = cfg.resolve().unwrap_err().to_string();
    assert!(e.contains("model.d_vocab_out") && e.contains("24"), "{e}");
}
