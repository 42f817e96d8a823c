//! The fast engines' dispatched passes give bit-identical training on every SIMD build this CPU runs
//! (baseline, AVX2 + FMA, AVX-512): the same steps, the same weights and metrics, to the last bit.
//! Its own test binary, since it caps the build process-wide while it runs.

use groklens::api::build_config;
use groklens::linalg::kernels::{limit_simd_build, simd_build, SimdBuild};
use groklens::train::Trainer;

/// Weights' bits and every metric's bits after `epochs` of `preset` (small widths) on `build`.
fn train_on(build: SimdBuild, preset: &str, sets: &[&str], epochs: usize) -> (Vec<u32>, Vec<u64>) {
    limit_simd_build(Some(build));
    assert_eq!(simd_build(), build, "the cap did not take");
    let mut all: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    all.extend([
        format!("train.epochs={epochs}"),
        "train.eval_every=1".into(),
        "train.threads=2".into(),
        "train.stop_at_test_acc=0".into(),
    ]);
    let cfg = build_config(Some(preset), None, &all).unwrap();
    let mut t = Trainer::new(cfg).unwrap();
    assert!(
        t.engine_name().contains("fast"),
        "{preset}: {}",
        t.engine_name()
    );
    t.run(&mut |_| {}).unwrap();
    limit_simd_build(None);
    let weights = t
        .params
        .iter()
        .flat_map(|p| p.data.iter().map(|x| x.to_bits()))
        .collect();
    let metrics = t
        .history
        .iter()
        .flat_map(|r| {
            [
                r.train_loss,
                r.test_loss,
                r.train_acc,
                r.test_acc,
                r.output_spectral_norm,
            ]
        })
        .map(f64::to_bits)
        .collect();
    (weights, metrics)
}

#[test]
fn every_build_trains_bit_identically() {
    let builds = SimdBuild::supported();
    eprintln!(
        "SIMD builds this CPU runs: {}",
        builds
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let small = ["model.d_model=32", "model.d_head=8", "model.d_mlp=64"];
    let cases: [(&str, &[&str], usize); 5] = [
        ("quick", &small, 4),
        ("quick-mlp", &[], 4),
        (
            "quick-bitnet-binary",
            &["model.d_model=32", "model.d_mlp=64"],
            3,
        ),
        (
            "quick-bitnet-ternary",
            &["model.d_model=32", "model.d_mlp=64"],
            3,
        ),
        ("quick-prev-token", &[], 3),
    ];
    for (preset, sets, epochs) in cases {
        let reference = train_on(SimdBuild::Baseline, preset, sets, epochs);
        for &build in &builds[1..] {
            let got = train_on(build, preset, sets, epochs);
            assert!(
                got.0 == reference.0,
                "{preset}: weights differ between the baseline and the {} build",
                build.name()
            );
            assert!(
                got.1 == reference.1,
                "{preset}: metrics differ between the baseline and the {} build",
                build.name()
            );
        }
    }
}
