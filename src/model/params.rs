//! Model parameters as named f32 buffers in TransformerLens's state_dict layout.
//!
//! The store is plain memory so that the optimizer and the hand-written fast path work on slices
//! directly; the candle forward borrows them as tensors when it runs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{GrokError, Result};
use crate::model::transformer::config::{ModelConfig, ParamKind};
use crate::tensor_io::{self, HostTensor};

/// One named parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// TransformerLens state_dict name.
    pub name: String,
    /// Shape as TransformerLens stores it.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// All parameters of a model, in state_dict order, addressable by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    entries: Vec<Param>,
    index: HashMap<String, usize>,
}

impl Params {
    /// TransformerLens's default init: `W_*` ~ N(0, std²), biases 0, LN weights 1, seeded by `cfg.seed`.
    pub fn init(cfg: &ModelConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let normal =
            Normal::new(0.0f32, cfg.init_std() as f32).expect("init std is finite and >= 0");
        let entries = cfg
            .param_specs()
            .into_iter()
            .map(|s| {
                let n: usize = s.shape.iter().product();
                let data = match s.kind {
                    ParamKind::Weight => (0..n).map(|_| normal.sample(&mut rng)).collect(),
                    ParamKind::Bias | ParamKind::Zero => vec![0.0; n],
                    ParamKind::LnWeight => vec![1.0; n],
                };
                Param {
                    name: s.name,
                    shape: s.shape,
                    data,
                }
            })
            .collect();
        Self::from_entries(entries)
    }

    /// A store of zeros with the same names and shapes (for gradients and optimizer moments).
    pub fn zeros_like(&self) -> Self {
        let entries = self
            .entries
            .iter()
            .map(|p| Param {
                name: p.name.clone(),
                shape: p.shape.clone(),
                data: vec![0.0; p.data.len()],
            })
            .collect();
        Self::from_entries(entries)
    }

    fn from_entries(entries: Vec<Param>) -> Self {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Params { entries, index }
    }

    /// Parameters in state_dict order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.entries.iter()
    }

    /// Mutable parameters in state_dict order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.entries.iter_mut()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the store holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The parameter called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// The values of `name`; panics only on a name the model config itself did not produce.
    pub fn data(&self, name: &str) -> &[f32] {
        &self.entries[self.index[name]].data
    }

    /// Mutable values of `name`.
    pub fn data_mut(&mut self, name: &str) -> &mut [f32] {
        let i = self.index[name];
        &mut self.entries[i].data
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|p| p.data.len()).sum()
    }

    /// Sum of squares of every parameter (the "total weight norm" grokking plots track), in f64.
    pub fn sum_of_squares(&self) -> f64 {
        self.entries
            .iter()
            .flat_map(|p| p.data.iter())
            .map(|&x| (x as f64) * (x as f64))
            .sum()
    }

    /// Tensors for a safetensors file, optionally with a name prefix.
    pub fn to_host_tensors(&self, prefix: &str) -> Vec<(String, HostTensor)> {
        self.entries
            .iter()
            .map(|p| {
                (
                    format!("{prefix}{}", p.name),
                    HostTensor::f32(p.shape.clone(), p.data.clone()),
                )
            })
            .collect()
    }

    /// Saves under TransformerLens names (loadable with `model.load_state_dict(load_file(path), strict=False)`).
    pub fn save(&self, path: &Path, metadata: BTreeMap<String, String>) -> Result<()> {
        tensor_io::write_atomic(path, &self.to_host_tensors(""), metadata)
    }

    /// Loads the parameters `cfg` needs from a TransformerLens-named safetensors file, checking every
    /// shape. Extra tensors (TransformerLens's `attn.mask`/`attn.IGNORE` buffers) are ignored.
    pub fn load(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let file = tensor_io::read(path)?;
        Self::from_tensor_map(cfg, |name| file.get(name), &path.display().to_string())
    }

    /// Builds the store from owned parameters, checking that they are exactly the ones `specs` lists.
    pub fn from_tensor_map_owned(
        cfg: &ModelConfig,
        mut entries: Vec<Param>,
        specs: &[crate::model::transformer::config::ParamSpec],
    ) -> Result<Self> {
        let _ = cfg;
        let mut ordered = Vec::with_capacity(specs.len());
        for spec in specs {
            let i = entries
                .iter()
                .position(|p| p.name == spec.name)
                .ok_or_else(|| GrokError::tensor(&spec.name, "missing after processing"))?;
            let p = entries.swap_remove(i);
            if p.shape != spec.shape {
                return Err(GrokError::tensor(
                    &p.name,
                    format!("has shape {:?}, expected {:?}", p.shape, spec.shape),
                ));
            }
            ordered.push(p);
        }
        Ok(Self::from_entries(ordered))
    }

    /// Builds the store from tensors looked up by name (`lookup` gets the bare TransformerLens name).
    pub fn from_tensor_map<'a>(
        cfg: &ModelConfig,
        lookup: impl Fn(&str) -> Option<&'a HostTensor>,
        source: &str,
    ) -> Result<Self> {
        let mut entries = Vec::new();
        for spec in cfg.param_specs() {
            let t = match lookup(&spec.name) {
                Some(t) => t,
                None if spec.kind == ParamKind::Zero => {
                    entries.push(Param {
                        name: spec.name,
                        data: vec![0.0; spec.shape.iter().product()],
                        shape: spec.shape,
                    });
                    continue;
                }
                None => {
                    return Err(GrokError::tensor(
                        &spec.name,
                        format!(
                        "missing from {source}; is this checkpoint for a different model config?"
                    ),
                    ))
                }
            };
            if t.shape != spec.shape {
                return Err(GrokError::tensor(
                    &spec.name,
                    format!(
                        "{source} has shape {:?}, the model config needs {:?}",
                        t.shape, spec.shape
                    ),
                ));
            }
            entries.push(Param {
                name: spec.name.clone(),
                shape: spec.shape,
                data: t.to_f32(&spec.name)?,
            });
        }
        Ok(Self::from_entries(entries))
    }
}
