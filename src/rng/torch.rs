//! PyTorch's CPU generator, bit for bit: what `torch.manual_seed(seed)` followed by `randperm`,
//! `normal_`/`randn`, `uniform_` and the `nn.init` defaults produce on a CPU with AVX2 (every x86-64
//! CPU PyTorch dispatches its AVX2 or AVX-512 kernels on; the scalar kernel of CPUs without AVX2
//! calls the C library's `logf`/`sincosf` and is not reproduced).
//!
//! Ported from the verified Python re-implementation in `shared/torch-rng/` (sources: ATen's
//! `MT19937RNGEngine.h`, `CPUGeneratorImpl.cpp`, `DistributionsHelper.h`,
//! `cpu/DistributionTemplates.h`, `avx_mathfun.h`, `TensorFactories.cpp`). Every function here is
//! checked against vectors written by torch 2.15 (`tests/torch_rng.rs`).

use super::cephes::{log_f32, sincos_f32};

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_B0DF;

/// torch's default CPU seed (`default_rng_seed_val`), what a process that never calls
/// `manual_seed` draws from.
pub const DEFAULT_SEED: u64 = 67_280_421_310_721;

/// `at::CPUGeneratorImpl`: an MT19937 engine plus the cached second sample of the scalar normal.
#[derive(Clone)]
pub struct TorchGenerator {
    state: [u32; N],
    /// Index of the next word of `state` to temper; `N` means a twist is due.
    pos: usize,
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// The generator after `torch.manual_seed(seed)`: MT19937 seeded with the seed's low 32 bits.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for j in 1..N {
            let p = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(p ^ (p >> 30))
                .wrapping_add(j as u32);
        }
        TorchGenerator {
            state,
            pos: N,
            next_double_normal: None,
        }
    }

    fn twist(&mut self) {
        let st = &mut self.state;
        for i in 0..N {
            let y = (st[i] & 0x8000_0000) | (st[(i + 1) % N] & 0x7FFF_FFFF);
            let mag = if st[(i + 1) % N] & 1 == 1 {
                MATRIX_A
            } else {
                0
            };
            st[i] = st[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// `generator->random()`: the next 32-bit output.
    pub fn random(&mut self) -> u32 {
        if self.pos >= N {
            self.twist();
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9D2C_5680;
        y ^= (y << 15) & 0xEFC6_0000;
        y ^ (y >> 18)
    }

    /// `generator->random64()`: two outputs, the first in the high half.
    pub fn random64(&mut self) -> u64 {
        let hi = self.random() as u64;
        (hi << 32) | self.random() as u64
    }

    /// A float in [0, 1) from 24 random bits (`uniform_real_distribution<float>`).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0x00FF_FFFF) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A double in [0, 1) from 53 random bits (`uniform_real_distribution<double>`).
    pub fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `torch.empty((), dtype=torch.int64).random_(generator=g).item()`: what a `DataLoader`
    /// iterator draws as its base seed each time it is created.
    pub fn random_i64(&mut self) -> i64 {
        (self.random64() % (1u64 << 63)) as i64
    }

    /// `torch.randint(lo, hi, (n,), generator=g)` for a range below 2³² (one 32-bit draw each,
    /// `random() % (hi − lo) + lo`, drawn serially on the CPU).
    pub fn randint(&mut self, n: usize, lo: u32, hi: u32) -> Vec<u32> {
        debug_assert!(hi > lo);
        let range = hi - lo;
        (0..n).map(|_| self.random() % range + lo).collect()
    }

    /// Advances the generator past `n` 32-bit draws (what `randint` of `n` values takes).
    pub fn skip(&mut self, n: u64) {
        (0..n).for_each(|_| {
            self.random();
        });
    }

    /// Advances the generator exactly as `randperm(n)` does, without building the permutation.
    pub fn skip_randperm(&mut self, n: usize) {
        if n < (u32::MAX / 20) as usize {
            (1..n).for_each(|_| {
                self.random();
            });
        } else {
            (0..n).for_each(|_| {
                self.random64();
            });
        }
    }

    /// `torch.randperm(n, generator=g)`.
    pub fn randperm(&mut self, n: usize) -> Vec<usize> {
        let mut a: Vec<usize> = (0..n).collect();
        if n < (u32::MAX / 20) as usize {
            for i in 0..n.saturating_sub(1) {
                let j = i + (self.random() as usize) % (n - i);
                a.swap(i, j);
            }
        } else {
            // torch's "inside-out" Fisher–Yates for large n.
            for i in 0..n {
                let z = (self.random64() % (i as u64 + 1)) as usize;
                a[i] = a[z];
                a[z] = i;
            }
        }
        a
    }

    /// `torch.empty(n).normal_(mean, std)` (f32, contiguous).
    pub fn normal(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        if n < 16 {
            return (0..n)
                .map(|_| self.scalar_normal().mul_add(std, mean) as f32)
                .collect();
        }
        let (mean, std) = (mean as f32, std as f32);
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            fill16(block, mean, std);
        }
        if !n.is_multiple_of(16) {
            // The tail: 16 fresh uniforms into the last 16 slots, transformed again.
            let tail = &mut data[n - 16..];
            tail.iter_mut().for_each(|v| *v = self.uniform_f32());
            fill16(tail, mean, std);
        }
        data
    }

    /// `at::normal_distribution<double>` with the generator's cached second sample: the path of
    /// tensors with fewer than 16 elements.
    fn scalar_normal(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.empty(n).uniform_(lo, hi)` (f32): `fma(u, hi − lo, lo)`, a result equal to `hi`
    /// replaced by `lo` as the kernel does.
    pub fn uniform(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        let (lo, hi) = (lo as f32, hi as f32);
        (0..n)
            .map(|_| {
                let v = self.uniform_f32().mul_add(hi - lo, lo);
                if v == hi {
                    lo
                } else {
                    v
                }
            })
            .collect()
    }

    /// `nn.init.kaiming_uniform_` on a `[fan_out, fan_in]` weight with leaky-ReLU slope `a`, gain
    /// computed in f64 as Python does (`nn.Linear`'s default uses `a = √5`).
    pub fn kaiming_uniform(&mut self, fan_out: usize, fan_in: usize, a: f64) -> Vec<f32> {
        let gain = (2.0 / (1.0 + a * a)).sqrt();
        let bound = 3f64.sqrt() * (gain / (fan_in as f64).sqrt());
        self.uniform(fan_out * fan_in, -bound, bound)
    }

    /// `nn.init.kaiming_normal_(w, nonlinearity="relu")` on a `[fan_out, fan_in]` weight.
    pub fn kaiming_normal_relu(&mut self, fan_out: usize, fan_in: usize) -> Vec<f32> {
        let std = 2f64.sqrt() / (fan_in as f64).sqrt();
        self.normal(fan_out * fan_in, 0.0, std)
    }

    /// `nn.Linear(fan_in, fan_out)`'s construction-time draws: the weight (kaiming-uniform, a = √5),
    /// then the bias, uniform in ±1/√fan_in.
    pub fn linear(&mut self, fan_in: usize, fan_out: usize) -> (Vec<f32>, Vec<f32>) {
        let w = self.kaiming_uniform(fan_out, fan_in, 5f64.sqrt());
        let bound = if fan_in > 0 {
            1.0 / (fan_in as f64).sqrt()
        } else {
            0.0
        };
        (w, self.uniform(fan_out, -bound, bound))
    }
}

/// `normal_fill_16_AVX2`: Box–Muller on the pairs (j, j + 8) of 16 uniforms, in place.
fn fill16(d: &mut [f32], mean: f32, std: f32) {
    const TWO_PI: f32 = f32::from_bits(0x40c9_0fdb); // (float)(2π)
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let u2 = d[j + 8];
        let radius = (-2.0 * log_f32(u1)).sqrt();
        let (s, c) = sincos_f32(TWO_PI * u2);
        d[j] = (radius * c).mul_add(std, mean);
        d[j + 8] = (radius * s).mul_add(std, mean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // The reference MT19937 (init_genrand(5489)) starts 3499211612, 581869302, 3890346734.
        let mut g = TorchGenerator::new(5489);
        assert_eq!(
            [g.random(), g.random(), g.random()],
            [3_499_211_612, 581_869_302, 3_890_346_734]
        );
        // Its 10 000th output is 4123659995 (C++11 std::mt19937's conformance check).
        let mut g = TorchGenerator::new(5489);
        let last = (0..10_000).map(|_| g.random()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn randperm_is_a_permutation_on_both_paths() {
        let mut g = TorchGenerator::new(1);
        let mut p = g.randperm(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
        assert!(TorchGenerator::new(1).randperm(0).is_empty());
        assert_eq!(TorchGenerator::new(1).randperm(1), [0]);
        for n in [0, 1, 2, 50] {
            let (mut a, mut b) = (TorchGenerator::new(9), TorchGenerator::new(9));
            a.randperm(n);
            b.skip_randperm(n);
            assert_eq!(a.random(), b.random(), "n = {n}");
        }
    }
}
