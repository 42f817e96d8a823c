//! The `quick` preset groks: memorises first, then reaches high test accuracy.

use groklens::presets::preset;
use groklens::train::{grokking_epoch, Trainer};

#[test]
fn quick_preset_groks() {
    let mut t = Trainer::new(preset("quick").unwrap()).unwrap();
    let outcome = t.run(&mut |_| {}).unwrap();
    let last = outcome.last.unwrap();
    assert!(
        last.test_acc >= 0.95,
        "test accuracy {} after {} epochs",
        last.test_acc,
        outcome.epochs
    );
    let memorised = t
        .history
        .iter()
        .find(|r| r.train_acc >= 0.99)
        .map(|r| r.epoch)
        .unwrap();
    let generalised = grokking_epoch(&t.history, 0.95).unwrap();
    assert!(
        memorised < generalised,
        "train accuracy should saturate before test accuracy ({memorised} vs {generalised})"
    );
}
