//! A sweep spec: a base (preset or config file) with fixed overrides, a grid and/or an explicit list of
//! points over any `--set` key, and seeds replicated over named keys; expanded into points with
//! stable names.
//!
//! ```toml
//! name = "power-2022-fraction"
//! preset = "quick"                     # or: config = "base.toml" (relative to the spec)
//! set = { "train.epochs" = 20000 }     # applied to every point
//!
//! [grid]                               # every combination, in key order
//! "task.train_frac" = [0.3, 0.5, 0.7]
//!
//! [seeds]                              # each point once per seed: keys = start, start + 1, …
//! count = 3
//! keys = ["model.seed", "task.data_seed"]
//! ```
//!
//! `points = [{ "train.lr" = 1e-3 }, …]` lists explicit points; with a grid as well, each listed point
//! is crossed with the grid.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::{GrokError, Result};
use crate::presets::preset_template;

/// A sweep as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The sweep's name (the page's title).
    pub name: String,
    /// Base preset (one of `preset` and `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Base config file, relative to the spec's directory (one of `preset` and `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// Overrides every point gets, as `--set` keys.
    #[serde(default)]
    pub set: toml::Table,
    /// Keys swept over every combination of their values.
    #[serde(default)]
    pub grid: toml::Table,
    /// Explicit points (each a table of `--set` keys).
    #[serde(default)]
    pub points: Vec<toml::Table>,
    /// Seed replication.
    #[serde(default)]
    pub seeds: Option<Seeds>,
}

/// Each point once per seed: every key in `keys` set to `start + i` for i in 0..count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seeds {
    /// Replicas per point.
    pub count: usize,
    /// Keys the seed sets (e.g. `model.seed`, `task.data_seed`, `train.seed`).
    pub keys: Vec<String>,
    /// First seed value.
    #[serde(default)]
    pub start: i64,
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Stable directory name derived from the swept settings.
    pub name: String,
    /// The swept settings, `(key, TOML value)`, in spec order (grid keys, listed keys, then seed).
    pub settings: Vec<(String, toml::Value)>,
    /// The seed index, if seeds are replicated.
    pub seed: Option<i64>,
    /// The point's resolved config.
    pub config: RunConfig,
}

impl Point {
    /// The value this point gives `key`, if it sweeps it.
    pub fn setting(&self, key: &str) -> Option<&toml::Value> {
        self.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl SweepSpec {
    /// Reads a spec file; its settings are checked when it is expanded ([`SweepSpec::points`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GrokError::file(path, format!("cannot read the sweep spec: {e}")))?;
        let mut spec: SweepSpec = toml::from_str(&text)
            .map_err(|e| GrokError::file(path, format!("is not a valid sweep spec: {e}")))?;
        if let Some(c) = &spec.config {
            if c.is_relative() {
                // Absolute, so the copy a sweep directory keeps (and Slurm tasks read) still finds it.
                let joined = path.parent().unwrap_or(Path::new(".")).join(c);
                spec.config = Some(std::path::absolute(&joined).unwrap_or(joined));
            }
        }
        Ok(spec)
    }

    /// Parses a spec from TOML text (a config path in it is taken as given).
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| GrokError::config("sweep spec", "(toml)", e.to_string()))
    }

    /// The spec as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec serialises")
    }

    /// The swept keys, in order: grid keys, then keys of the listed points, then the seed's.
    pub fn swept_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.grid.keys().cloned().collect();
        for p in &self.points {
            for k in p.keys() {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys
    }

    /// The base config before any sweep setting.
    fn base(&self) -> Result<RunConfig> {
        let mut cfg = match (&self.preset, &self.config) {
            (Some(p), None) => preset_template(p)?,
            (None, Some(f)) => RunConfig::load(f)?,
            _ => {
                return Err(GrokError::config(
                    "preset / config",
                    "(both or neither)",
                    "give exactly one of `preset = \"NAME\"` and `config = \"FILE\"`",
                ))
            }
        };
        for (k, v) in &self.set {
            apply(&mut cfg, k, v, "set")?;
        }
        Ok(cfg)
    }

    /// Every point, in order: listed points × grid × seeds, each with its resolved config. Errors name
    /// the key: an unknown key, an empty list, a value the config refuses, two points with one name.
    pub fn points(&self) -> Result<Vec<Point>> {
        if self.name.trim().is_empty() {
            return Err(GrokError::config("name", "\"\"", "give the sweep a name"));
        }
        let base = self.base()?;
        let swept: Vec<(&str, String)> = self
            .grid
            .keys()
            .map(|k| ("grid", k.clone()))
            .chain(
                self.points
                    .iter()
                    .flat_map(|p| p.keys().map(|k| ("points", k.clone()))),
            )
            .chain(
                self.seeds
                    .iter()
                    .flat_map(|s| s.keys.iter().map(|k| ("seeds.keys", k.clone()))),
            )
            .collect();
        if let Some((from, key)) = swept.iter().find(|(_, k)| self.set.contains_key(k)) {
            return Err(GrokError::config(
                &format!("set.\"{key}\""),
                &self.set[key],
                format!(
                    "is also swept by `{from}`, which would silently override it: give the key in \
                     one place only"
                ),
            ));
        }
        let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (k, v) in &self.grid {
            let values = match v {
                toml::Value::Array(a) if !a.is_empty() => a.clone(),
                toml::Value::Array(_) => {
                    return Err(GrokError::config(
                        &format!("grid.\"{k}\""),
                        "[]",
                        "list at least one value",
                    ))
                }
                other => {
                    return Err(GrokError::config(
                        &format!("grid.\"{k}\""),
                        other,
                        "must be a list of values, e.g. [0.3, 0.5]",
                    ))
                }
            };
            axes.push((k.clone(), values));
        }
        let listed = if self.points.is_empty() {
            vec![toml::Table::new()]
        } else {
            self.points.clone()
        };
        let seeds: Vec<Option<i64>> = match &self.seeds {
            None => vec![None],
            Some(s) => {
                if s.count == 0 {
                    return Err(GrokError::config("seeds.count", 0, "must be at least 1"));
                }
                if s.keys.is_empty() {
                    return Err(GrokError::config(
                        "seeds.keys",
                        "[]",
                        "name the keys the seed sets, e.g. [\"model.seed\", \"task.data_seed\"]",
                    ));
                }
                (0..s.count as i64).map(|i| Some(s.start + i)).collect()
            }
        };
        if axes.is_empty() && self.points.is_empty() && self.seeds.is_none() {
            return Err(GrokError::config(
                "grid / points / seeds",
                "(none)",
                "sweep at least one key, list points, or replicate seeds",
            ));
        }
        let mut out: Vec<Point> = Vec::new();
        for listed_point in &listed {
            for combo in product(&axes) {
                for &seed in &seeds {
                    let mut cfg = base.clone();
                    let mut settings: Vec<(String, toml::Value)> = Vec::new();
                    let listed = listed_point.iter().map(|(k, v)| (k.clone(), v.clone()));
                    for ((k, v), from) in combo
                        .iter()
                        .cloned()
                        .map(|kv| (kv, "grid"))
                        .chain(listed.map(|kv| (kv, "points")))
                    {
                        apply(&mut cfg, &k, &v, from)?;
                        settings.push((k, v));
                    }
                    if let (Some(s), Some(seed)) = (&self.seeds, seed) {
                        for k in &s.keys {
                            apply(&mut cfg, k, &toml::Value::Integer(seed), "seeds.keys")?;
                        }
                    }
                    let config = cfg.resolve().map_err(|e| {
                        GrokError::config(
                            "sweep point",
                            point_name(&settings, seed),
                            format!("its config is refused: {e}"),
                        )
                    })?;
                    let name = point_name(&settings, seed);
                    if out.iter().any(|p| p.name == name) {
                        return Err(GrokError::config(
                            "points",
                            &name,
                            "two points have the same settings; list each point once",
                        ));
                    }
                    if let Some(twin) = out.iter().find(|p| p.config == config) {
                        return Err(GrokError::config(
                            "points",
                            &name,
                            format!(
                                "resolves to the same config as point {} (a value equal to the base's, \
                                 or a listed point the grid also makes): it would train the same run \
                                 twice; list each point once",
                                twin.name
                            ),
                        ));
                    }
                    out.push(Point {
                        name,
                        settings,
                        seed,
                        config,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Sets `key` to `value` on `cfg`, naming where in the spec the setting came from on error.
fn apply(cfg: &mut RunConfig, key: &str, value: &toml::Value, from: &str) -> Result<()> {
    let raw = match value {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    cfg.set(&format!("{key}={raw}")).map_err(|e| match e {
        GrokError::Config {
            field,
            value,
            expected,
        } => GrokError::Config {
            field: format!("{from}: {field}"),
            value,
            expected,
        },
        other => other,
    })
}

/// Every combination of the axes' values, first axis outermost.
fn product(axes: &[(String, Vec<toml::Value>)]) -> Vec<Vec<(String, toml::Value)>> {
    axes.iter().fold(vec![Vec::new()], |acc, (k, values)| {
        acc.iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push((k.clone(), v.clone()));
                    next
                })
            })
            .collect()
    })
}

/// A setting's value as text: a string without its quotes, anything else as TOML writes it.
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `task.train_frac-0.3__seed-1`: each swept key and its value (`baseline` when none), then the seed;
/// characters a file name should not hold become `_`. The same settings always give the same name.
pub fn point_name(settings: &[(String, toml::Value)], seed: Option<i64>) -> String {
    let mut parts: Vec<String> = settings
        .iter()
        .map(|(k, v)| format!("{k}-{}", value_text(v)))
        .collect();
    if parts.is_empty() {
        parts.push("baseline".into());
    }
    if let Some(s) = seed {
        parts.push(format!("seed-{s}"));
    }
    parts
        .join("__")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: &str = r#"
        name = "t"
        preset = "quick"
        set = { "train.epochs" = 50 }
        [grid]
        "task.train_frac" = [0.3, 0.5]
        "train.lr" = [1e-3, 3e-3, 1e-2]
        [seeds]
        count = 2
        keys = ["model.seed", "task.data_seed"]
    "#;

    fn error(text: &str) -> String {
        SweepSpec::parse(text)
            .and_then(|s| s.points())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_grid_with_seeds_expands_to_every_combination_with_its_settings_applied() {
        let points = SweepSpec::parse(GRID).unwrap().points().unwrap();
        assert_eq!(points.len(), 2 * 3 * 2);
        let p = &points[7]; // train_frac 0.5, lr 1e-3, seed 1
        assert_eq!(p.name, "task.train_frac-0.5__train.lr-0.001__seed-1");
        let task = p.config.task.modular().unwrap();
        assert_eq!((task.train_frac, task.data_seed), (0.5, 1));
        assert_eq!(p.config.train.lr, 1e-3);
        assert_eq!(p.config.train.epochs, 50);
        assert_eq!(p.config.model.transformer().unwrap().seed, 1);
        let mut names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), points.len(), "names are distinct");
    }

    #[test]
    fn point_names_are_stable_and_file_safe() {
        let a = SweepSpec::parse(GRID).unwrap().points().unwrap();
        let b = SweepSpec::parse(GRID).unwrap().points().unwrap();
        let names = |p: &[Point]| p.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        let odd = [(
            "train.freeze".to_string(),
            toml::Value::String("a/b c".into()),
        )];
        assert_eq!(point_name(&odd, None), "train.freeze-a_b_c");
        assert_eq!(point_name(&[], Some(2)), "baseline__seed-2");
    }

    #[test]
    fn listed_points_cross_the_grid() {
        let spec = SweepSpec::parse(
            r#"
            name = "t"
            preset = "quick"
            points = [{ "train.weight_decay" = 1.0 }, { "train.weight_decay" = 0.0, "train.lr" = 1e-3 }]
            [grid]
            "task.train_frac" = [0.4, 0.6]
            "#,
        )
        .unwrap();
        let points = spec.points().unwrap();
        assert_eq!(points.len(), 4);
        assert_eq!(
            spec.swept_keys(),
            ["task.train_frac", "train.weight_decay", "train.lr"]
        );
        assert_eq!(
            points[3].name,
            "task.train_frac-0.6__train.lr-0.001__train.weight_decay-0.0"
        );
        assert_eq!(points[3].config.train.weight_decay, 0.0);
    }

    #[test]
    fn bad_specs_name_the_key_and_the_fix() {
        let unknown = error("name = \"t\"\npreset = \"quick\"\n[grid]\n\"train.nope\" = [1, 2]\n");
        assert!(
            unknown.contains("grid: train.nope") && unknown.contains("unknown field"),
            "{unknown}"
        );
        let empty = error("name = \"t\"\npreset = \"quick\"\n[grid]\n\"train.lr\" = []\n");
        assert!(
            empty.contains("grid.\"train.lr\"") && empty.contains("at least one"),
            "{empty}"
        );
        let scalar = error("name = \"t\"\npreset = \"quick\"\n[grid]\n\"train.lr\" = 0.1\n");
        assert!(scalar.contains("must be a list"), "{scalar}");
        let bad =
            error("name = \"t\"\npreset = \"quick\"\n[grid]\n\"task.train_frac\" = [0.5, 1.5]\n");
        assert!(
            bad.contains("task.train_frac-1.5") && bad.contains("train_frac"),
            "{bad}"
        );
        let wrong_type =
            error("name = \"t\"\npreset = \"quick\"\n[grid]\n\"train.epochs\" = [\"many\"]\n");
        assert!(wrong_type.contains("train.epochs"), "{wrong_type}");
        let preset = error(
            "name = \"t\"\npreset = \"nope\"\nseeds = { count = 2, keys = [\"model.seed\"] }\n",
        );
        assert!(preset.contains("unknown preset"), "{preset}");
        let both = error("name = \"t\"\nseeds = { count = 2, keys = [\"model.seed\"] }\n");
        assert!(both.contains("exactly one of"), "{both}");
        let nothing = error("name = \"t\"\npreset = \"quick\"\n");
        assert!(nothing.contains("sweep at least one key"), "{nothing}");
        let seeds = error(
            "name = \"t\"\npreset = \"quick\"\nseeds = { count = 0, keys = [\"model.seed\"] }\n",
        );
        assert!(seeds.contains("seeds.count"), "{seeds}");
        let field = error("name = \"t\"\npreset = \"quick\"\ngird = {}\n");
        assert!(field.contains("gird"), "{field}");
        let twice = error(
            "name = \"t\"\npreset = \"quick\"\npoints = [{ \"train.lr\" = 1e-3 }, { \"train.lr\" = 1e-3 }]\n",
        );
        assert!(twice.contains("same settings"), "{twice}");
    }
}
