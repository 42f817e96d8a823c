//! `groklens sweep`: many runs from one spec ([`spec`]), on this machine's cores ([`local`]) or as a
//! Slurm job array ([`slurm`]), and their index; the page over all of them is
//! `report::sweep` (a layer above).
//!
//! ```text
//! SWEEP_DIR/sweep.toml          the spec (a later call must give the same one)
//! SWEEP_DIR/configs/NAME.toml   each point's resolved config
//! SWEEP_DIR/runs/NAME/          each point's ordinary run directory (and its report.html)
//! SWEEP_DIR/logs/NAME.log       what the point's training and report printed
//! SWEEP_DIR/index.csv           points, status and summary figures, rebuilt from the run directories
//! SWEEP_DIR/sweep.html          the sweep's page (`groklens sweep report`)
//! ```
//! Points are disjoint directories, so shards (Slurm array tasks) never write the same file; the
//! index is rebuilt from the run directories by one process, never appended to concurrently.

pub mod local;
pub mod slurm;
pub mod spec;
pub mod worker;

use std::path::{Path, PathBuf};

use crate::error::{GrokError, Result};
use crate::run::{checkpoint, grokking_epoch, metrics, MetricsRow, RunDir, GROKKED_ACCURACY};
use crate::tensor_io::write_bytes_atomic;
pub use spec::{point_name, Point, Seeds, SweepSpec};

/// Built-in specs: name, description, TOML.
pub const BUILT_IN: [(&str, &str, &str); 2] = [
    (
        "power-2022-fraction",
        "Power et al. 2022: time to generalise against the training fraction, 7 fractions × 3 seeds",
        include_str!("specs/power-2022-fraction.toml"),
    ),
    (
        "interventions",
        "each grokking intervention (Grokfast EMA/MA, ⊥Grad, StableMax, fixed weight norm) and none, 3 seeds each",
        include_str!("specs/interventions.toml"),
    ),
];

/// A spec from a file path or the name of a built-in spec.
pub fn load_spec(spec: &str) -> Result<SweepSpec> {
    if let Some((_, _, text)) = BUILT_IN.iter().find(|(n, _, _)| *n == spec) {
        return SweepSpec::parse(text);
    }
    let path = Path::new(spec);
    if !path.exists() {
        let names: Vec<&str> = BUILT_IN.iter().map(|(n, _, _)| *n).collect();
        return Err(GrokError::file(
            path,
            format!(
                "is neither a sweep spec file nor a built-in spec ({})",
                names.join(", ")
            ),
        ));
    }
    SweepSpec::load(path)
}

/// Paths inside a sweep directory.
#[derive(Debug, Clone)]
pub struct SweepDir {
    /// The directory itself.
    pub root: PathBuf,
}

/// Where a point stands, read from its run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not started.
    Pending,
    /// Started and not finished: resumable from its last checkpoint.
    Partial,
    /// Trained to the end (its final model is newer than every checkpoint).
    Finished,
    /// Stopped by a non-finite loss: an outcome (a phase diagram's "diverged"), not a failure.
    Diverged,
    /// Its history (`metrics.csv`) is missing or unreadable: neither finished nor resumable.
    Damaged,
}

impl Status {
    /// `pending`, `partial`, `finished`, `diverged` or `damaged`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Partial => "partial",
            Status::Finished => "finished",
            Status::Diverged => "diverged",
            Status::Damaged => "damaged",
        }
    }

    /// Whether the point has an outcome (nothing left to run).
    pub fn ended(self) -> bool {
        matches!(self, Status::Finished | Status::Diverged)
    }
}

impl SweepDir {
    /// A handle on `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SweepDir { root: root.into() }
    }

    /// `sweep.toml`.
    pub fn spec_path(&self) -> PathBuf {
        self.root.join("sweep.toml")
    }

    /// `configs/NAME.toml`.
    pub fn config_path(&self, point: &str) -> PathBuf {
        self.root.join("configs").join(format!("{point}.toml"))
    }

    /// `runs/NAME`.
    pub fn run(&self, point: &str) -> RunDir {
        RunDir::new(self.root.join("runs").join(point))
    }

    /// `runs/NAME/DIVERGED`: written when the point's training stopped at a non-finite loss.
    pub fn diverged_marker(&self, point: &str) -> PathBuf {
        self.run(point).root.join("DIVERGED")
    }

    /// `logs/NAME.log`.
    pub fn log_path(&self, point: &str) -> PathBuf {
        self.root.join("logs").join(format!("{point}.log"))
    }

    /// `index.csv`.
    pub fn index_path(&self) -> PathBuf {
        self.root.join("index.csv")
    }

    /// Takes the sweep directory's lock (`sweep.lock`, creating the directory): exclusive for a run
    /// of the whole sweep, shared for a shard (a Slurm array's shards run at once, each on its own
    /// points). A second whole-sweep run, or a whole-sweep run beside shards, is refused as in use.
    /// Held until the returned file is dropped.
    pub fn lock(&self, shared: bool) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| GrokError::file(&self.root, format!("cannot create: {e}")))?;
        let path = self.root.join("sweep.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| GrokError::file(&path, format!("cannot use the lock file: {e}")))?;
        let taken = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match taken {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(GrokError::file(
                &self.root,
                "is in use by another `groklens sweep run` (it holds sweep.lock); wait for it to \
                 finish or stop it, or give another --out",
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(GrokError::file(&path, format!("cannot lock: {e}")))
            }
        }
    }

    /// Creates the directory with the spec, or checks that the spec it holds is this one (a sweep
    /// directory holds one sweep), and writes every point's config. Returns the points.
    pub fn prepare(&self, spec: &SweepSpec) -> Result<Vec<Point>> {
        let points = spec.points()?;
        let text = spec.to_toml();
        let path = self.spec_path();
        match std::fs::read_to_string(&path) {
            Ok(existing) => {
                let held = SweepSpec::parse(&existing)?;
                if held != *spec {
                    return Err(GrokError::file(
                        &path,
                        "holds a different sweep spec: give the same spec to continue this sweep, or \
                         another --out for a new one",
                    ));
                }
            }
            Err(_) => {
                std::fs::create_dir_all(&self.root)
                    .map_err(|e| GrokError::file(&self.root, format!("cannot create: {e}")))?;
                write_bytes_atomic(&path, text.as_bytes())?;
            }
        }
        for dir in ["configs", "runs", "logs"] {
            let d = self.root.join(dir);
            std::fs::create_dir_all(&d)
                .map_err(|e| GrokError::file(&d, format!("cannot create: {e}")))?;
        }
        for p in &points {
            let path = self.config_path(&p.name);
            let text = p.config.to_toml();
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                write_bytes_atomic(&path, text.as_bytes())?;
            }
        }
        Ok(points)
    }

    /// The spec this directory holds.
    pub fn spec(&self) -> Result<SweepSpec> {
        let path = self.spec_path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            GrokError::file(
                &path,
                format!(
                    "cannot read ({e}): is this a sweep directory? `groklens sweep run` makes one"
                ),
            )
        })?;
        SweepSpec::parse(&text)
    }

    /// The error for a [`Status::Damaged`] point: its history is missing or unreadable.
    pub fn damaged(&self, point: &str) -> GrokError {
        let run = self.run(point);
        GrokError::file(
            run.metrics_path(),
            format!(
                "damaged: missing or unreadable, so the point is neither finished nor resumable; \
                 remove {} to train it again",
                run.root.display()
            ),
        )
    }

    /// Where `point` stands.
    pub fn status(&self, point: &str) -> Status {
        let run = self.run(point);
        if !run.config_path().exists() {
            return Status::Pending;
        }
        if self.diverged_marker(point).exists() {
            return Status::Diverged;
        }
        if metrics::read(&run.metrics_path()).is_err() {
            return Status::Damaged;
        }
        if !run.final_path().exists() {
            return Status::Partial;
        }
        let newest = checkpoint::list_epochs(&run.checkpoint_dir())
            .last()
            .copied()
            .unwrap_or(0);
        match run.final_epoch() {
            Some(e) if e >= newest => Status::Finished,
            _ => Status::Partial,
        }
    }

    /// One index row per point, read from the run directories.
    pub fn index(&self, points: &[Point]) -> Vec<IndexRow> {
        points
            .iter()
            .map(|p| {
                let status = self.status(&p.name);
                let history = metrics::read(&self.run(&p.name).metrics_path()).unwrap_or_default();
                IndexRow::new(p, status, &history)
            })
            .collect()
    }

    /// Rebuilds `index.csv` from the run directories; returns its rows.
    pub fn write_index(&self, spec: &SweepSpec, points: &[Point]) -> Result<Vec<IndexRow>> {
        let rows = self.index(points);
        let keys = spec.swept_keys();
        let mut csv = String::from("point,status");
        for k in &keys {
            csv += &format!(",{k}");
        }
        csv +=
            ",seed,epochs,train_acc,test_acc,test_loss,memorised_epoch,grokking_epoch,elapsed_s\n";
        for (r, p) in rows.iter().zip(points) {
            csv += &format!("{},{}", r.name, r.status.name());
            for k in &keys {
                let v = p.setting(k).map_or(String::new(), |v| v.to_string());
                csv += &format!(",{}", v.replace(',', ";"));
            }
            let opt = |x: Option<usize>| x.map_or(String::new(), |e| e.to_string());
            let f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
            csv += &format!(
                ",{},{},{},{},{},{},{},{}\n",
                p.seed.map_or(String::new(), |s| s.to_string()),
                r.epochs,
                f(r.train_acc),
                f(r.test_acc),
                f(r.test_loss),
                opt(r.memorised_epoch),
                opt(r.grokking_epoch),
                f(r.elapsed_s),
            );
        }
        write_bytes_atomic(&self.index_path(), csv.as_bytes())?;
        Ok(rows)
    }
}

/// A point's line in the index.
#[derive(Debug, Clone)]
pub struct IndexRow {
    /// The point's name.
    pub name: String,
    /// Where it stands.
    pub status: Status,
    /// Last evaluated epoch (0 when not started).
    pub epochs: usize,
    /// Last evaluation's train accuracy.
    pub train_acc: Option<f64>,
    /// Last evaluation's test accuracy.
    pub test_acc: Option<f64>,
    /// Last evaluation's test loss.
    pub test_loss: Option<f64>,
    /// First evaluated epoch with train accuracy ≥ 99 %.
    pub memorised_epoch: Option<usize>,
    /// First evaluated epoch with test accuracy ≥ 99 %.
    pub grokking_epoch: Option<usize>,
    /// Seconds of training recorded.
    pub elapsed_s: Option<f64>,
}

impl IndexRow {
    fn new(point: &Point, status: Status, history: &[MetricsRow]) -> Self {
        let last = history.last();
        IndexRow {
            name: point.name.clone(),
            status,
            epochs: last.map_or(0, |r| r.epoch),
            train_acc: last.map(|r| r.train_acc),
            test_acc: last.map(|r| r.test_acc),
            test_loss: last.map(|r| r.test_loss),
            memorised_epoch: history
                .iter()
                .find(|r| r.train_acc >= GROKKED_ACCURACY)
                .map(|r| r.epoch),
            grokking_epoch: grokking_epoch(history, GROKKED_ACCURACY),
            elapsed_s: last.map(|r| r.elapsed_s),
        }
    }
}

/// The points shard `i` of `n` runs: every n-th point from the i-th, so shards are disjoint and
/// together cover every point once.
pub fn shard(points: Vec<Point>, i: usize, n: usize) -> Vec<Point> {
    points
        .into_iter()
        .enumerate()
        .filter(|(k, _)| k % n.max(1) == i)
        .map(|(_, p)| p)
        .collect()
}

/// `--shard I/N`, or under Slurm the array task's place (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`
/// of `SLURM_ARRAY_TASK_COUNT`); `None` runs every point.
pub fn shard_of(arg: Option<&str>) -> Result<Option<(usize, usize)>> {
    if let Some(s) = arg {
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        return match parsed {
            Some((i, n)) if n > 0 && i < n => Ok(Some((i, n))),
            _ => Err(GrokError::config(
                "--shard",
                s,
                "expected I/N with 0 <= I < N, e.g. 0/4",
            )),
        };
    }
    let var = |name: &str| -> Result<Option<usize>> {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                GrokError::config(name, &v, "must be a non-negative integer (set by Slurm)")
            }),
            Err(_) => Ok(None),
        }
    };
    match (var("SLURM_ARRAY_TASK_ID")?, var("SLURM_ARRAY_TASK_COUNT")?) {
        (Some(id), Some(count)) if count > 0 => {
            let i = id - var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0).min(id);
            if i >= count {
                return Err(GrokError::config(
                    "SLURM_ARRAY_TASK_ID",
                    id,
                    format!(
                        "is past SLURM_ARRAY_TASK_COUNT = {count}: submit the array as 0-{}",
                        count - 1
                    ),
                ));
            }
            Ok(Some((i, count)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_point_exactly_once() {
        let spec = load_spec("power-2022-fraction").unwrap();
        let points = spec.points().unwrap();
        assert_eq!(points.len(), 21);
        for n in [1, 2, 4, 5, 21, 30] {
            let mut seen: Vec<String> = (0..n)
                .flat_map(|i| shard(points.clone(), i, n))
                .map(|p| p.name)
                .collect();
            assert_eq!(seen.len(), points.len(), "n = {n}");
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), points.len(), "n = {n}: a point ran twice");
        }
    }

    #[test]
    fn shard_arguments_are_checked() {
        assert_eq!(shard_of(Some("1/4")).unwrap(), Some((1, 4)));
        for bad in ["4/4", "1", "a/b", "0/0"] {
            let e = shard_of(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("--shard") && e.contains("I/N"), "{e}");
        }
    }

    #[test]
    fn a_sweep_directory_holds_one_spec() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SweepDir::new(tmp.path().join("s"));
        let spec = load_spec("power-2022-fraction").unwrap();
        let points = dir.prepare(&spec).unwrap();
        assert!(dir.config_path(&points[0].name).exists());
        assert_eq!(dir.status(&points[0].name), Status::Pending);
        dir.prepare(&spec).unwrap();
        let mut other = spec.clone();
        other.name = "other".into();
        let e = dir.prepare(&other).unwrap_err().to_string();
        assert!(
            e.contains("sweep.toml") && e.contains("different sweep spec"),
            "{e}"
        );
        let e = load_spec("no-such-spec").unwrap_err().to_string();
        assert!(e.contains("power-2022-fraction"), "{e}");
    }

    #[test]
    fn a_config_base_is_found_from_the_spec_and_from_the_sweep_dirs_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let specs = tmp.path().join("specs");
        std::fs::create_dir_all(&specs).unwrap();
        let mut base = crate::presets::preset("quick").unwrap();
        base.train.epochs = 77;
        std::fs::write(specs.join("base.toml"), base.to_toml()).unwrap();
        std::fs::write(
            specs.join("s.toml"),
            "name = \"c\"\nconfig = \"base.toml\"\n[grid]\n\"train.lr\" = [1e-3, 2e-3]\n",
        )
        .unwrap();
        let spec = SweepSpec::load(&specs.join("s.toml")).unwrap();
        let points = spec.points().unwrap();
        assert_eq!(points[1].config.train.epochs, 77);
        assert_eq!(points[1].config.train.lr, 2e-3);
        let dir = SweepDir::new(tmp.path().join("out"));
        dir.prepare(&spec).unwrap();
        let copy = SweepSpec::load(&dir.spec_path()).unwrap();
        assert_eq!(copy, spec);
        dir.prepare(&copy).unwrap();
    }
}
