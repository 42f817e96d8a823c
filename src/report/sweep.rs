//! `groklens sweep report DIR`: one offline page over a sweep — grokking epoch and final test accuracy
//! against each swept key with the spread over seeds, a phase diagram when two keys are swept, the
//! key frequencies over seeds, and a table linking every point's own report.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::analysis::embedding::embedding_fourier;
use crate::analysis::fourier::FourierBasis;
use crate::error::Result;
use crate::linalg::Matrix;
use crate::report::figures::{bars, grouped_bars, heatmap, lines};
use crate::report::page::{escape, Section};
use crate::report::{write_html, Written};
use crate::sweep::spec::value_text;
use crate::sweep::{IndexRow, Point, Status, SweepDir, SweepSpec};

/// A point's outcome class, as Omnigrok and Doshi et al. draw phase diagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Neither fits the training set nor generalises.
    Neither = 0,
    /// Train accuracy ≥ 99 %, test accuracy below.
    Memorised = 1,
    /// Test accuracy ≥ 99 %.
    Grokked = 2,
    /// A non-finite loss (training stopped there).
    Diverged = 3,
}

impl Phase {
    /// The phase of a point's last evaluation.
    pub fn of(row: &IndexRow) -> Option<Phase> {
        if row.status == Status::Diverged {
            return Some(Phase::Diverged);
        }
        let (train, test, loss) = (row.train_acc?, row.test_acc?, row.test_loss?);
        Some(if !loss.is_finite() {
            Phase::Diverged
        } else if test >= crate::run::GROKKED_ACCURACY {
            Phase::Grokked
        } else if train >= crate::run::GROKKED_ACCURACY {
            Phase::Memorised
        } else {
            Phase::Neither
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        ["neither", "memorised", "grokked", "diverged"][self as usize]
    }
}

/// What the sweep page wrote and read.
pub type SweepPage = Written<SweepOutcome>;

/// The points' outcomes behind the page.
pub struct SweepOutcome {
    /// The index rows it read.
    pub rows: Vec<IndexRow>,
    /// Per point (same order): key frequencies of its final embedding, for grokked modular runs.
    pub key_freqs: Vec<Option<Vec<usize>>>,
}

/// Rebuilds the index and writes `DIR/sweep.html`.
pub fn write_sweep_page(dir: &SweepDir) -> Result<SweepPage> {
    let started = Instant::now();
    let spec = dir.spec()?;
    let points = spec.points()?;
    let rows = dir.write_index(&spec, &points)?;
    let key_freqs: Vec<Option<Vec<usize>>> = points
        .iter()
        .zip(&rows)
        .map(|(p, r)| {
            // Only a grokked embedding is sparse in frequency; a memorising one has no key frequencies.
            (r.status == Status::Finished && r.grokking_epoch.is_some())
                .then(|| point_key_freqs(dir, p))
                .flatten()
        })
        .collect();
    let sections = sections(&spec, &points, &rows, &key_freqs);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.status.name()).or_default() += 1;
    }
    let summary = vec![
        ("Sweep".to_string(), spec.name.clone()),
        (
            "Base".to_string(),
            spec.preset.clone().map_or_else(
                || {
                    spec.config
                        .as_ref()
                        .map_or(String::new(), |c| c.display().to_string())
                },
                |p| format!("preset {p}"),
            ),
        ),
        ("Swept keys".to_string(), spec.swept_keys().join(", ")),
        (
            "Seeds".to_string(),
            spec.seeds.as_ref().map_or("none".to_string(), |s| {
                format!("{} (setting {})", s.count, s.keys.join(", "))
            }),
        ),
        (
            "Points".to_string(),
            format!(
                "{} ({})",
                rows.len(),
                counts
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    ];
    let path = dir.root.join("sweep.html");
    let title = format!("groklens sweep — {}", spec.name);
    let bytes = write_html(&path, &title, &summary, &sections)?;
    Ok(Written {
        path,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        analysis: SweepOutcome { rows, key_freqs },
    })
}

/// The key frequencies of a finished modular point's final embedding.
fn point_key_freqs(dir: &SweepDir, point: &Point) -> Option<Vec<usize>> {
    let task = point.config.task.modular()?;
    let run = dir.run(&point.name);
    let params = run.load_params(&run.final_path(), &point.config).ok()?;
    let basis = FourierBasis::new(task.p);
    Some(embedding_fourier(&basis, &point.config.model.embedding(&params)).key_freqs)
}

/// The swept value of `key` at a point, as text.
fn value(point: &Point, key: &str) -> String {
    point.setting(key).map_or(String::new(), value_text)
}

/// A key's distinct values in first-seen order.
fn values_of(points: &[Point], key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in points {
        let v = value(p, key);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn sections(
    spec: &SweepSpec,
    points: &[Point],
    rows: &[IndexRow],
    key_freqs: &[Option<Vec<usize>>],
) -> Vec<Section> {
    let keys = spec.swept_keys();
    let grid_keys: Vec<String> = spec.grid.keys().cloned().collect();
    let mut out = Vec::new();
    if !spec.points.is_empty() {
        out.push(configurations(points, rows));
    }
    let mut figures = Vec::new();
    for key in &grid_keys {
        let values = values_of(points, key);
        let numeric: Option<Vec<f64>> = values.iter().map(|v| v.parse().ok()).collect();
        // Per value: (mean, min, max) over seeds of the grokking epoch (grokked points only) and of
        // the final test accuracy.
        let stats = |f: &dyn Fn(&IndexRow) -> Option<f64>| -> [Vec<f32>; 3] {
            let mut mean = Vec::new();
            let (mut lo, mut hi) = (Vec::new(), Vec::new());
            for v in &values {
                let xs: Vec<f64> = points
                    .iter()
                    .zip(rows)
                    .filter(|(p, _)| value(p, key) == *v)
                    .filter_map(|(_, r)| f(r))
                    .collect();
                if xs.is_empty() {
                    mean.push(f32::NAN);
                    lo.push(f32::NAN);
                    hi.push(f32::NAN);
                } else {
                    mean.push((xs.iter().sum::<f64>() / xs.len() as f64) as f32);
                    lo.push(xs.iter().copied().fold(f64::INFINITY, f64::min) as f32);
                    hi.push(xs.iter().copied().fold(f64::NEG_INFINITY, f64::max) as f32);
                }
            }
            [mean, lo, hi]
        };
        let x: Vec<f64> = numeric
            .clone()
            .unwrap_or_else(|| (0..values.len()).map(|i| i as f64).collect());
        let x_title = if numeric.is_some() {
            key.clone()
        } else {
            format!("{key} ({})", values.join(", "))
        };
        let [mean, lo, hi] = stats(&|r| r.grokking_epoch.map(|e| e as f64));
        figures.push(lines(
            &format!("Grokking epoch (test acc ≥ 99%) against {key}"),
            &x_title,
            "epoch (log scale)",
            &x,
            &[("mean over seeds", mean), ("min", lo), ("max", hi)],
            true,
        ));
        let [share, ..] = stats(&|r| {
            r.status
                .ended()
                .then(|| f64::from(u8::from(r.grokking_epoch.is_some())))
        });
        figures.push(lines(
            &format!("Share of seeds that grokked against {key}"),
            &x_title,
            "share of finished runs",
            &x,
            &[("grokked", share)],
            false,
        ));
        let [mean, lo, hi] = stats(&|r| r.test_acc);
        figures.push(lines(
            &format!("Final test accuracy against {key}"),
            &x_title,
            "test accuracy",
            &x,
            &[("mean over seeds", mean), ("min", lo), ("max", hi)],
            false,
        ));
    }
    if !figures.is_empty() {
        out.push(Section {
        id: "trends",
        title: "Against each swept key",
        intro: "Grokking epoch (first evaluation with test accuracy ≥ 99 %, over the points that reach \
                it), the share of seeds that reach it within the budget, and final test accuracy for \
                each value of each swept key: the mean over seeds and the spread (min, max)."
            .into(),
        figures,
    });
    }
    if grid_keys.len() == 2 {
        let keys = &grid_keys;
        let (xs, ys) = (values_of(points, &keys[0]), values_of(points, &keys[1]));
        let mut z = vec![f32::NAN; ys.len() * xs.len()];
        for (yi, yv) in ys.iter().enumerate() {
            for (xi, xv) in xs.iter().enumerate() {
                let phases: Vec<Phase> = points
                    .iter()
                    .zip(rows)
                    .filter(|(p, _)| value(p, &keys[0]) == *xv && value(p, &keys[1]) == *yv)
                    .filter_map(|(_, r)| Phase::of(r))
                    .collect();
                // The most common phase over seeds (ties: the later phase).
                let mut counts = [0usize; 4];
                for ph in &phases {
                    counts[*ph as usize] += 1;
                }
                if !phases.is_empty() {
                    let best = (0..4).max_by_key(|&i| (counts[i], i)).unwrap_or(0);
                    z[yi * xs.len() + xi] = best as f32;
                }
            }
        }
        out.push(Section {
            id: "phases",
            title: "Phase diagram",
            intro: format!(
                "Each cell's most common outcome over seeds: 0 = neither (train accuracy < 99 %), \
                 1 = memorised (train ≥ 99 %, test < 99 %), 2 = grokked (test ≥ 99 %), 3 = diverged \
                 (non-finite loss), over {} × {}.",
                escape(&keys[0]),
                escape(&keys[1])
            ),
            figures: vec![heatmap(
                "Phase (0 neither, 1 memorised, 2 grokked, 3 diverged)",
                &keys[0],
                &keys[1],
                &Matrix::new(ys.len(), xs.len(), z).expect("grid cells"),
                Some(&xs),
                Some(&ys),
            )],
        });
    }
    let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
    for f in key_freqs.iter().flatten().flatten() {
        *histogram.entry(*f).or_default() += 1;
    }
    if !histogram.is_empty() {
        let labels: Vec<String> = histogram.keys().map(|k| k.to_string()).collect();
        let counts: Vec<f32> = histogram.values().map(|&c| c as f32).collect();
        let runs = key_freqs.iter().flatten().count();
        out.push(Section {
            id: "frequencies",
            title: "Key frequencies over seeds",
            intro: format!(
                "How many of the {runs} runs that grokked have each frequency among their embedding's \
                 key frequencies (W_E in the Fourier basis, as each run's report finds them)."
            ),
            figures: vec![bars(
                "Runs with each key frequency",
                "frequency k",
                "runs",
                &labels,
                &counts,
            )],
        });
    }
    out.push(Section {
        id: "points",
        title: "Every point",
        intro: points_table(&keys, points, rows, key_freqs),
        figures: Vec::new(),
    });
    out
}

/// A point's settings without its seed, keys without their section: `grokfast=ema, lr=0.001`, or
/// `baseline`.
fn configuration(point: &Point) -> String {
    if point.settings.is_empty() {
        return "baseline".into();
    }
    point
        .settings
        .iter()
        .map(|(k, v)| {
            let field = k.split_once('.').map_or(k.as_str(), |(_, f)| f);
            format!("{field}={}", value_text(v))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One bar group per configuration (the listed points, over their seeds): grokking epoch and the
/// share of seeds that grokked — the comparison an intervention sweep asks for.
fn configurations(points: &[Point], rows: &[IndexRow]) -> Section {
    let of_point: Vec<String> = points.iter().map(configuration).collect();
    let mut labels: Vec<String> = Vec::new();
    for c in &of_point {
        if !labels.contains(c) {
            labels.push(c.clone());
        }
    }
    let of = |label: &str| -> Vec<&IndexRow> {
        of_point
            .iter()
            .zip(rows)
            .filter(|(c, r)| *c == label && r.status.ended())
            .map(|(_, r)| r)
            .collect()
    };
    let (mut mean, mut lo, mut hi, mut share) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for l in &labels {
        let runs = of(l);
        let epochs: Vec<f32> = runs
            .iter()
            .filter_map(|r| r.grokking_epoch.map(|e| e as f32))
            .collect();
        let n = epochs.len().max(1) as f32;
        mean.push(if epochs.is_empty() {
            f32::NAN
        } else {
            epochs.iter().sum::<f32>() / n
        });
        lo.push(epochs.iter().copied().fold(f32::NAN, f32::min));
        hi.push(epochs.iter().copied().fold(f32::NAN, f32::max));
        share.push(epochs.len() as f32 / runs.len().max(1) as f32);
    }
    Section {
        id: "configurations",
        title: "By configuration",
        intro:
            "Each listed configuration over its seeds: the grokking epoch (test accuracy ≥ 99 %; \
                mean, min and max over the seeds that reach it) and the share of seeds that grok \
                within the budget."
                .into(),
        figures: vec![
            grouped_bars(
                "Grokking epoch by configuration",
                "configuration",
                "epoch",
                &labels,
                &[("mean", mean), ("min", lo), ("max", hi)],
            ),
            bars(
                "Share of seeds that grokked",
                "configuration",
                "share",
                &labels,
                &share,
            ),
        ],
    }
}

/// The table of points, each linking to its report.
fn points_table(
    keys: &[String],
    points: &[Point],
    rows: &[IndexRow],
    key_freqs: &[Option<Vec<usize>>],
) -> String {
    let mut h = String::from("</p><table class=\"summary\"><tr><th>point</th><th>status</th>");
    for k in keys {
        h += &format!("<th>{}</th>", escape(k));
    }
    h += "<th>seed</th><th>epochs</th><th>train acc</th><th>test acc</th><th>memorised</th>\
          <th>grokked</th><th>key frequencies</th></tr>";
    let pct = |x: Option<f64>| x.map_or(String::new(), |v| format!("{:.1}%", 100.0 * v));
    let ep = |x: Option<usize>| x.map_or("–".to_string(), |e| e.to_string());
    for ((p, r), kf) in points.iter().zip(rows).zip(key_freqs) {
        h += &format!(
            "<tr><td><a href=\"runs/{0}/report.html\">{0}</a></td><td>{1}</td>",
            escape(&p.name),
            r.status.name()
        );
        for k in keys {
            h += &format!("<td>{}</td>", escape(&value(p, k)));
        }
        h += &format!(
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.seed.map_or(String::new(), |s| s.to_string()),
            r.epochs,
            pct(r.train_acc),
            pct(r.test_acc),
            ep(r.memorised_epoch),
            ep(r.grokking_epoch),
            kf.as_ref().map_or(String::new(), |f| format!("{f:?}"))
        );
    }
    h += "</table><p>";
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status, train: f64, test: f64, loss: f64) -> IndexRow {
        IndexRow {
            name: "p".into(),
            status,
            epochs: 100,
            train_acc: Some(train),
            test_acc: Some(test),
            test_loss: Some(loss),
            memorised_epoch: None,
            grokking_epoch: None,
            elapsed_s: Some(1.0),
        }
    }

    #[test]
    fn phases_follow_the_last_evaluation() {
        let f = Status::Finished;
        assert_eq!(Phase::of(&row(f, 0.5, 0.1, 2.0)), Some(Phase::Neither));
        assert_eq!(Phase::of(&row(f, 1.0, 0.4, 3.0)), Some(Phase::Memorised));
        assert_eq!(Phase::of(&row(f, 1.0, 0.995, 0.01)), Some(Phase::Grokked));
        assert_eq!(
            Phase::of(&row(f, 0.1, 0.1, f64::NAN)),
            Some(Phase::Diverged)
        );
        assert_eq!(
            Phase::of(&row(Status::Diverged, 1.0, 1.0, 0.0)),
            Some(Phase::Diverged)
        );
        let mut pending = row(Status::Pending, 0.0, 0.0, 0.0);
        pending.test_acc = None;
        assert_eq!(Phase::of(&pending), None);
    }

    #[test]
    fn a_diverged_marker_is_an_outcome() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SweepDir::new(tmp.path());
        let run = dir.run("p");
        std::fs::create_dir_all(&run.root).unwrap();
        std::fs::write(run.config_path(), "").unwrap();
        assert_eq!(dir.status("p"), Status::Damaged, "no metrics.csv");
        crate::run::metrics::write_all(&run.metrics_path(), &[]).unwrap();
        assert_eq!(dir.status("p"), Status::Partial);
        std::fs::write(dir.diverged_marker("p"), "loss NaN").unwrap();
        assert_eq!(dir.status("p"), Status::Diverged);
        assert!(Status::Diverged.ended() && !Status::Partial.ended());
    }
}
