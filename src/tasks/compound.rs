//! Seed 000's compound expression `( a * b + c ) ^ d =` mod p over all p⁴ inputs.
//!
//! Row `i = ((a·p + b)·p + c)·p + d` (the seed's `einops.repeat(…, "(i j k l)")` order) is written
//! from its index, so a split keeps only row indices and a minibatch's tokens exist only while it is
//! trained on. The label is the true value of (a·b + c)^d mod p, by modular exponentiation (0⁰ = 1,
//! as torch computes it); the seed computes `(a*b+c)**d % p` in int64, which overflows for most rows.

use serde::{Deserialize, Serialize};

use super::{pow_mod, SplitRule};
use crate::error::{GrokError, Result};

/// `( a * b + c ) ^ d =` with a, b, c, d ∈ Z_p and the seed's token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompoundTask {
    /// The modulus.
    pub p: usize,
    /// Fraction of all p⁴ rows used for training, in (0, 1).
    pub train_frac: f64,
    /// Seed of the split shuffle.
    pub data_seed: u64,
    /// How the shuffled rows are cut into train and test.
    #[serde(default)]
    pub split: SplitRule,
}

/// The symbols after the p number tokens, in token-id order (`=` is token p).
pub const SYMBOLS: [&str; 6] = ["=", "*", "+", "^", "(", ")"];

/// Largest modulus: p⁴ row indices (8 bytes each) must fit in memory.
const MAX_P: usize = 97;

impl CompoundTask {
    /// Tokens per row: `( a * b + c ) ^ d =`.
    pub const LEN: usize = 10;

    /// Positions of the operands a, b, c, d in a row.
    pub const OPERAND_POSITIONS: [usize; 4] = [1, 3, 5, 8];

    /// Seed 000: p = 53, half the rows for training, data seed 314159.
    pub fn seed_000() -> Self {
        CompoundTask {
            p: 53,
            train_frac: 0.5,
            data_seed: 314_159,
            split: SplitRule::FirstFraction,
        }
    }

    /// Distinct input tokens: the p numbers and the six symbols.
    pub fn vocab(&self) -> usize {
        self.p + SYMBOLS.len()
    }

    /// Rows: p⁴.
    pub fn rows(&self) -> usize {
        self.p.pow(4)
    }

    /// Checks p and the train fraction, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(2..=MAX_P).contains(&self.p) {
            return Err(GrokError::config(
                "task.p",
                self.p,
                format!("must be in [2, {MAX_P}] for the compound task (it has p⁴ rows)"),
            ));
        }
        let n = self.rows();
        let train = self.split.train_rows(n, self.train_frac);
        if !(self.train_frac > 0.0 && self.train_frac < 1.0) || train == 0 || train == n {
            return Err(GrokError::config(
                "task.train_frac",
                self.train_frac,
                format!("must leave non-empty train and test sets of the {n} rows: pick a value in (0, 1) further from the ends"),
            ));
        }
        Ok(())
    }

    /// The operands (a, b, c, d) of row `i`.
    pub fn operands(&self, i: usize) -> [usize; 4] {
        let p = self.p;
        [i / (p * p * p), i / (p * p) % p, i / p % p, i % p]
    }

    /// The index of the row with operands (a, b, c, d).
    pub fn index(&self, [a, b, c, d]: [usize; 4]) -> usize {
        ((a * self.p + b) * self.p + c) * self.p + d
    }

    /// (a·b + c)^d mod p.
    pub fn label(&self, [a, b, c, d]: [usize; 4]) -> u32 {
        let p = self.p as u64;
        pow_mod((a as u64 * b as u64 + c as u64) % p, d as u64, p) as u32
    }

    /// Appends row `i`'s tokens to `out` and returns its label.
    pub fn write(&self, i: usize, out: &mut Vec<u32>) -> u32 {
        let ops = self.operands(i);
        let [a, b, c, d] = ops.map(|x| x as u32);
        let p = self.p as u32;
        let [eq, star, plus, caret, open, close] = [0, 1, 2, 3, 4, 5].map(|k| p + k);
        out.extend_from_slice(&[open, a, star, b, plus, c, close, caret, d, eq]);
        self.label(ops)
    }

    /// The label the seed's int64 arithmetic `(a*b+c)**d % p` gives (wrapping on overflow, as torch's
    /// integer `pow` does); kept to measure how many of the seed's labels are wrong.
    pub fn seed_label(&self, [a, b, c, d]: [usize; 4]) -> u32 {
        let base = (a * b + c) as i64;
        let power = (0..d).fold(1i64, |acc, _| acc.wrapping_mul(base));
        power.rem_euclid(self.p as i64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(p: usize) -> CompoundTask {
        CompoundTask {
            p,
            ..CompoundTask::seed_000()
        }
    }

    #[test]
    fn labels_equal_brute_force_big_integer_powers() {
        // (a·b + c)^d computed exactly by repeated multiplication mod p, for every row of small p.
        for p in [2usize, 3, 5, 7] {
            let t = task(p);
            let mut tokens = Vec::new();
            for i in 0..t.rows() {
                tokens.clear();
                let y = t.write(i, &mut tokens);
                let [a, b, c, d] = t.operands(i);
                assert_eq!(i, ((a * p + b) * p + c) * p + d);
                assert_eq!(t.index([a, b, c, d]), i);
                let want = (0..d).fold(1 % p, |acc, _| acc * ((a * b + c) % p) % p);
                assert_eq!(y as usize, want, "p={p} row {i}");
                let (pu, v) = (p as u32, [a, b, c, d].map(|x| x as u32));
                let row = [
                    pu + 4,
                    v[0],
                    pu + 1,
                    v[1],
                    pu + 2,
                    v[2],
                    pu + 5,
                    pu + 3,
                    v[3],
                    pu,
                ];
                assert_eq!(tokens, row);
            }
        }
    }

    #[test]
    fn the_seeds_int64_labels_are_mostly_wrong_at_p_53() {
        // The seed's first printed rows: (0·0 + 0)^0 = 1 and 0^d = 0, right in both.
        let t = CompoundTask::seed_000();
        assert_eq!(t.seed_label([0, 0, 0, 0]), 1);
        assert_eq!(t.label([0, 0, 0, 0]), 1);
        assert_eq!(t.seed_label([0, 0, 0, 3]), 0);
        // 22⁹ fits in int64: both agree; 142³¹ does not.
        assert_eq!(t.seed_label([1, 6, 16, 9]), t.label([1, 6, 16, 9]));
        assert_ne!(t.seed_label([39, 3, 25, 31]), t.label([39, 3, 25, 31]));
        // Over a sample of rows, most of the seed's labels differ from the true value.
        let step = 997;
        let (wrong, n) = (0..t.rows()).step_by(step).fold((0, 0), |(w, n), i| {
            let ops = t.operands(i);
            (w + usize::from(t.seed_label(ops) != t.label(ops)), n + 1)
        });
        let share = wrong as f64 / n as f64;
        assert!((0.8..0.86).contains(&share), "{share}");
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = task(98).validate().unwrap_err().to_string();
        assert!(e.contains("task.p") && e.contains("97"), "{e}");
        let e = CompoundTask {
            train_frac: 0.0,
            ..task(5)
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("task.train_frac"), "{e}");
    }
}
