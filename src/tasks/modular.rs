//! Binary operations modulo p over all pairs (a, b): token layouts, labels and the seeded split.

use serde::{Deserialize, Serialize};

use super::{pow_mod, shuffled_split, Dataset, Split, SplitRule};
use crate::error::{GrokError, Result};
use crate::rng::RngKind;

/// A binary operation on Z_p. The polynomial ones are from Power et al. (2022).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// a + b
    #[serde(rename = "add")]
    Add,
    /// a − b
    #[serde(rename = "sub")]
    Sub,
    /// a · b
    #[serde(rename = "mul")]
    Mul,
    /// a · b⁻¹ for b ≠ 0 (needs prime p)
    #[serde(rename = "div")]
    Div,
    /// a² + b²
    #[serde(rename = "x2+y2")]
    SquareSum,
    /// a² + ab + b²
    #[serde(rename = "x2+xy+y2")]
    QuadraticForm,
    /// a² + ab + b² + a
    #[serde(rename = "x2+xy+y2+x")]
    QuadraticFormPlusX,
    /// a³ + ab
    #[serde(rename = "x3+xy")]
    CubePlusXY,
    /// a³ + ab² + b
    #[serde(rename = "x3+xy2+y")]
    CubePlusXY2PlusY,
}

impl Operation {
    /// Every operation with its config name.
    pub const ALL: [(Operation, &'static str); 9] = [
        (Operation::Add, "add"),
        (Operation::Sub, "sub"),
        (Operation::Mul, "mul"),
        (Operation::Div, "div"),
        (Operation::SquareSum, "x2+y2"),
        (Operation::QuadraticForm, "x2+xy+y2"),
        (Operation::QuadraticFormPlusX, "x2+xy+y2+x"),
        (Operation::CubePlusXY, "x3+xy"),
        (Operation::CubePlusXY2PlusY, "x3+xy2+y"),
    ];

    /// The result for `(a, b)` modulo `p`, or `None` where it is undefined (division by zero).
    pub fn apply(self, a: u64, b: u64, p: u64) -> Option<u64> {
        let (a, b) = (a % p, b % p);
        Some(match self {
            Operation::Add => (a + b) % p,
            Operation::Sub => (a + p - b) % p,
            Operation::Mul => a * b % p,
            Operation::Div => {
                if b == 0 {
                    return None;
                }
                a * pow_mod(b, p - 2, p) % p
            }
            Operation::SquareSum => (a * a + b * b) % p,
            Operation::QuadraticForm => (a * a + a * b + b * b) % p,
            Operation::QuadraticFormPlusX => (a * a + a * b + b * b + a) % p,
            Operation::CubePlusXY => (a * a % p * a + a * b) % p,
            Operation::CubePlusXY2PlusY => (a * a % p * a + a * (b * b % p) + b) % p,
        })
    }
}

/// True when `n` is prime.
pub fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// How an example is written as tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[a, b, =]` with `=` = token p (the TransformerLens grokking demo).
    ABEq,
    /// `[a, op, b, =]` with op = token p and `=` = token p+1 (seed 002).
    AOpBEq,
}

impl Layout {
    /// Sequence length.
    pub fn len(self) -> usize {
        match self {
            Layout::ABEq => 3,
            Layout::AOpBEq => 4,
        }
    }

    /// Always false: a layout has at least three tokens.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Number of distinct input tokens for modulus `p`.
    pub fn vocab(self, p: usize) -> usize {
        match self {
            Layout::ABEq => p + 1,
            Layout::AOpBEq => p + 2,
        }
    }

    /// Positions of the operands a and b in a row.
    pub fn operand_positions(self) -> (usize, usize) {
        match self {
            Layout::ABEq => (0, 1),
            Layout::AOpBEq => (0, 2),
        }
    }

    fn write(self, a: u32, b: u32, p: u32, out: &mut Vec<u32>) {
        match self {
            Layout::ABEq => out.extend_from_slice(&[a, b, p]),
            Layout::AOpBEq => out.extend_from_slice(&[a, p, b, p + 1]),
        }
    }
}

/// What to learn: an operation mod p, its layout and the train/test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModularTask {
    /// The operation.
    pub op: Operation,
    /// The modulus.
    pub p: usize,
    /// Token layout.
    pub layout: Layout,
    /// Fraction of all pairs used for training, in (0, 1).
    pub train_frac: f64,
    /// Seed of the split shuffle.
    pub data_seed: u64,
    /// How many rows the train set gets: the first ⌊n·train_frac⌋ of the shuffle (seeds 000, 001,
    /// 004) or `random_split`'s rounding (seed 002).
    #[serde(default)]
    pub split: SplitRule,
}

impl ModularTask {
    /// The TransformerLens demo task: a + b mod 113, 30 % train, data seed 598.
    pub fn grokking_demo() -> Self {
        ModularTask {
            op: Operation::Add,
            p: 113,
            layout: Layout::ABEq,
            train_frac: 0.3,
            data_seed: 598,
            split: SplitRule::FirstFraction,
        }
    }

    /// Checks p, the train fraction, and that division has a prime modulus.
    pub fn validate(&self) -> Result<()> {
        if self.p < 2 || self.p > 4096 {
            return Err(GrokError::config("task.p", self.p, "must be in [2, 4096]"));
        }
        if self.op == Operation::Div && !is_prime(self.p as u64) {
            return Err(GrokError::config(
                "task.p",
                self.p,
                "must be prime for op = \"div\" (b⁻¹ must exist)",
            ));
        }
        if !(self.train_frac > 0.0 && self.train_frac < 1.0) {
            return Err(GrokError::config(
                "task.train_frac",
                self.train_frac,
                "must be in the open interval (0, 1)",
            ));
        }
        let n = self.rows();
        let n_train = (self.train_frac * n as f64).floor() as usize;
        if n_train == 0 || n_train == n {
            return Err(GrokError::config(
                "task.train_frac",
                self.train_frac,
                format!("leaves an empty train or test set of {n} rows; pick a fraction further from 0 and 1"),
            ));
        }
        Ok(())
    }

    /// Every example in (a, b) order: rows of `layout.len()` tokens plus labels in [0, p).
    pub fn dataset(&self) -> Dataset {
        let p = self.p as u32;
        let mut tokens = Vec::new();
        let mut labels = Vec::new();
        for (a, b, y) in self.examples() {
            self.layout.write(a, b, p, &mut tokens);
            labels.push(y);
        }
        Dataset {
            seq_len: self.layout.len(),
            tokens,
            labels,
        }
    }

    /// `(a, b, label)` of every pair where the operation is defined, in (a, b) order: the rows of
    /// [`ModularTask::dataset`].
    fn examples(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        let p = self.p as u64;
        (0..p * p).filter_map(move |i| {
            let (a, b) = (i / p, i % p);
            self.op
                .apply(a, b, p)
                .map(|y| (a as u32, b as u32, y as u32))
        })
    }

    /// Rows for every pair (a, b) ∈ Z_p², row index a·p + b, whether or not the operation is defined
    /// there (the analysis looks at functions on the whole grid).
    pub fn grid_tokens(&self) -> Vec<u32> {
        let p = self.p as u32;
        let mut tokens = Vec::with_capacity(self.p * self.p * self.layout.len());
        for a in 0..p {
            for b in 0..p {
                self.layout.write(a, b, p, &mut tokens);
            }
        }
        tokens
    }

    /// For each dataset row (in [`ModularTask::dataset`] order), its grid index a·p + b and its label.
    pub fn grid_examples(&self) -> Vec<(usize, u32)> {
        self.examples()
            .map(|(a, b, y)| (a as usize * self.p + b as usize, y))
            .collect()
    }

    /// Rows of the dataset: every pair where the operation is defined.
    pub fn rows(&self) -> usize {
        match self.op {
            Operation::Div => self.p * (self.p - 1),
            _ => self.p * self.p,
        }
    }

    /// Shuffles all row indices with the data seed (with `rng = "torch"`, `torch.randperm(n)` after
    /// `torch.manual_seed(data_seed)`); the first [`SplitRule::train_rows`] are train.
    pub fn split(&self, rng: RngKind) -> Split {
        shuffled_split(
            self.rows(),
            self.train_frac,
            self.split,
            self.data_seed,
            rng,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(op: Operation, p: usize) -> ModularTask {
        ModularTask {
            op,
            p,
            ..ModularTask::grokking_demo()
        }
    }

    #[test]
    fn operations_match_hand_computed_values() {
        let p = 7;
        assert_eq!(Operation::Add.apply(5, 4, p), Some(2));
        assert_eq!(Operation::Sub.apply(2, 5, p), Some(4));
        assert_eq!(Operation::Mul.apply(3, 5, p), Some(1));
        assert_eq!(Operation::Div.apply(3, 5, p), Some(2)); // 5⁻¹ = 3, 3·3 = 9 = 2
        assert_eq!(Operation::Div.apply(3, 0, p), None);
        assert_eq!(Operation::SquareSum.apply(3, 4, p), Some(25 % 7));
        assert_eq!(Operation::QuadraticForm.apply(2, 3, p), Some(19 % 7));
        assert_eq!(Operation::QuadraticFormPlusX.apply(2, 3, p), Some(21 % 7));
        assert_eq!(Operation::CubePlusXY.apply(2, 3, p), Some(14 % 7));
        assert_eq!(Operation::CubePlusXY2PlusY.apply(2, 3, p), Some(29 % 7));
    }

    #[test]
    fn division_inverts_multiplication() {
        for a in 0..13 {
            for b in 1..13 {
                let q = Operation::Div.apply(a, b, 13).unwrap();
                assert_eq!(q * b % 13, a);
            }
        }
    }

    #[test]
    fn dataset_layouts_and_sizes() {
        let d = task(Operation::Add, 5).dataset();
        assert_eq!(d.len(), 25);
        assert_eq!(&d.tokens[3 * 7..3 * 8], &[1, 2, 5]); // row 7 = (a=1, b=2)
        assert_eq!(d.labels[7], 3);
        let t = ModularTask {
            layout: Layout::AOpBEq,
            ..task(Operation::Div, 5)
        };
        let d = t.dataset();
        assert_eq!(d.len(), 20);
        assert_eq!(&d.tokens[..4], &[0, 5, 1, 6]);
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let t = task(Operation::Add, 23);
        for rng in [RngKind::Torch, RngKind::Chacha] {
            let s = t.split(rng);
            assert_eq!(s, t.split(rng));
            assert_eq!(s.train.len(), (0.3f64 * 529.0).floor() as usize);
            let mut all: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
            all.sort();
            assert_eq!(all, (0..529).collect::<Vec<_>>());
            let other = ModularTask {
                data_seed: 1,
                ..t.clone()
            }
            .split(rng);
            assert_ne!(s.train, other.train);
        }
        assert_ne!(t.split(RngKind::Torch), t.split(RngKind::Chacha));
    }

    #[test]
    fn random_split_deals_leftover_rows_to_train_first() {
        // random_split(9409, [0.8, 0.2]): 7527 + 1881 = 9408, the one left over goes to train.
        assert_eq!(SplitRule::RandomSplit.train_rows(9409, 0.8), 7528);
        assert_eq!(SplitRule::FirstFraction.train_rows(9409, 0.8), 7527);
        // Nothing left over: both rules agree.
        assert_eq!(SplitRule::RandomSplit.train_rows(100, 0.3), 30);
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let e = task(Operation::Add, 1).validate().unwrap_err().to_string();
        assert!(e.contains("task.p") && e.contains("[2, 4096]"), "{e}");
        let e = task(Operation::Div, 12).validate().unwrap_err().to_string();
        assert!(e.contains("task.p") && e.contains("prime"), "{e}");
        let e = ModularTask {
            train_frac: 1.0,
            ..task(Operation::Add, 7)
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("task.train_frac") && e.contains("(0, 1)"), "{e}");
    }
}
