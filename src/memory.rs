//! Memory estimates checked before allocating: a run, report, cache or ablation that would not fit
//! is refused with its estimate and the memory the machine has, instead of meeting the OOM killer.

use crate::error::{GrokError, Result};

/// Bytes per f32.
const F32: u64 = 4;

/// What a job will hold at its peak, as named parts in bytes.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    parts: Vec<(String, u64)>,
}

impl Estimate {
    /// An empty estimate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `floats` f32 values (saturating) under `what`.
    pub fn floats(mut self, what: impl Into<String>, floats: f64) -> Self {
        let bytes = (floats.max(0.0) * F32 as f64).min(u64::MAX as f64) as u64;
        self.parts.push((what.into(), bytes));
        self
    }

    /// The total in bytes.
    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |a, (_, b)| a.saturating_add(*b))
    }

    /// Refuses the job (`what`, e.g. "training this run") when the estimate exceeds the memory
    /// available to this process; `fix` says which settings make it smaller. Passes where the
    /// available memory cannot be read.
    pub fn ensure_fits(&self, what: &str, fix: &str) -> Result<()> {
        match available_bytes() {
            Some(free) if self.total() > free => Err(self.refusal(what, free, fix)),
            _ => Ok(()),
        }
    }

    /// The error for an estimate over `free` bytes, listing the largest parts first.
    pub fn refusal(&self, what: &str, free: u64, fix: &str) -> GrokError {
        let mut parts = self.parts.clone();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let parts: Vec<String> = parts
            .iter()
            .filter(|(_, b)| *b > 0)
            .take(3)
            .map(|(w, b)| format!("{w} {}", human(*b)))
            .collect();
        GrokError::Resources(format!(
            "{what} needs about {} of memory ({}), but {} is available; {fix}",
            human(self.total()),
            parts.join(", "),
            human(free)
        ))
    }
}

/// Bytes as a short human figure (`1.5 GB`, `320 MB`).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= 1e12 => format!("{:.1} TB", b / 1e12),
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.0} MB", b / 1e6),
        b => format!("{:.0} kB", b / 1e3),
    }
}

/// Memory this process may still allocate: the smaller of the kernel's `MemAvailable` and the room
/// left under a cgroup (v2) limit; `None` where neither can be read.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let cgroup =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_estimate_its_largest_parts_and_the_fix() {
        let e = Estimate::new()
            .floats("weights", 4e9)
            .floats("activations", 1e6)
            .floats("dataset", 0.0);
        assert_eq!(e.total(), 16_004_000_000);
        let msg = e
            .refusal("training this run", 8_000_000_000, "reduce model.d_mlp")
            .to_string();
        assert!(
            msg.contains("16.0 GB")
                && msg.contains("weights 16.0 GB, activations 4 MB")
                && msg.contains("8.0 GB is available")
                && msg.contains("model.d_mlp"),
            "{msg}"
        );
        assert!(!msg.contains("dataset"), "{msg}");
        assert!(Estimate::new().floats("x", 1e30).total() == u64::MAX);
        if let Some(free) = available_bytes() {
            assert!(free > 0);
            assert!(Estimate::new()
                .floats("x", 1.0)
                .ensure_fits("x", "")
                .is_ok());
            assert!(Estimate::new()
                .floats("x", 1e30)
                .ensure_fits("x", "")
                .is_err());
        }
    }
}
