//! Model parameters as named f32 buffers, and the typed tree that names them.
//!
//! A family builds its parameter list once from its config with a [`Scope`] (names nest like module
//! paths, as candle's `VarBuilder::pp`): each leaf returns a [`Slot`], and the family keeps its slots
//! in a typed tree (`blocks[l].attn.w_q`). Every external name is produced there; engines, checkpoints
//! and weight processing index a [`Params`] store by slot. The store is plain memory so the optimizer
//! and the hand-written engines work on slices directly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::rng::{RngKind, TorchGenerator};
use rand_distr::{Distribution, Normal};

use crate::error::{GrokError, Result};
use crate::model::ModelConfig;
use crate::tensor_io::{self, HostTensor};

/// Where one tensor sits in its family's parameter list, and so in every [`Params`] built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(usize);

impl Slot {
    /// Position in the parameter list (state_dict order).
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Independent N(0, std²) draws.
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// Independent U(−bound, bound) draws (torch's `nn.Linear` default weight init).
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// Zeros.
    Zeros,
    /// Ones (LayerNorm weights).
    Ones,
}

impl Init {
    /// The value every element starts at, for the constant inits.
    pub fn constant(self) -> Option<f32> {
        match self {
            Init::Zeros => Some(0.0),
            Init::Ones => Some(1.0),
            Init::Normal { .. } | Init::Uniform { .. } => None,
        }
    }
}

/// Name, shape and init of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// External (state_dict) name, e.g. `blocks.0.attn.W_Q` or `net.2.weight`.
    pub name: String,
    /// Shape as the reference implementation stores it.
    pub shape: Vec<usize>,
    /// Init rule.
    pub init: Init,
    /// Kept at its init and never trained (`W_pos` without positional embeddings); when its init is
    /// a constant it may be absent from a checkpoint, which then loads it at that constant.
    pub fixed: bool,
}

/// Collects a family's parameter list; see [`Scope`].
#[derive(Debug, Default)]
pub struct ParamList {
    specs: Vec<ParamSpec>,
}

impl ParamList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root scope (no name prefix).
    pub fn root(&mut self) -> Scope<'_> {
        Scope::root(&mut self.specs)
    }

    /// The specs in the order they were declared.
    pub fn into_specs(self) -> Vec<ParamSpec> {
        self.specs
    }
}

/// A named position in a tree being built — the parameter tree (`T` = [`ParamSpec`]) or the hook
/// tree (`T` = [`crate::model::hooks::HookPoint`]): `scope.pp("blocks").pp(0).pp("attn").leaf("W_Q",
/// ..)` declares `blocks.0.attn.W_Q`, and `….pp("attn").hook("hook_q", ..)` declares
/// `blocks.0.attn.hook_q`. Names are built here and nowhere else.
pub struct Scope<'a, T = ParamSpec> {
    list: &'a mut Vec<T>,
    prefix: String,
}

impl<'a, T> Scope<'a, T> {
    /// The root scope of `list` (no name prefix).
    pub fn root(list: &'a mut Vec<T>) -> Self {
        Scope {
            list,
            prefix: String::new(),
        }
    }

    /// A child scope named `name`.
    pub fn pp(&mut self, name: impl std::fmt::Display) -> Scope<'_, T> {
        let prefix = self.path(&name.to_string());
        Scope {
            list: self.list,
            prefix,
        }
    }

    /// The full name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Appends an item; returns its index.
    pub(crate) fn push_item(&mut self, item: T) -> usize {
        self.list.push(item);
        self.list.len() - 1
    }
}

impl Scope<'_, ParamSpec> {
    /// Declares a trainable parameter `name` in this scope.
    pub fn leaf(&mut self, name: &str, shape: Vec<usize>, init: Init) -> Slot {
        self.push(name, shape, init, false)
    }

    /// Declares a parameter that keeps its init and is never trained.
    pub fn fixed(&mut self, name: &str, shape: Vec<usize>, init: Init) -> Slot {
        self.push(name, shape, init, true)
    }

    fn push(&mut self, name: &str, shape: Vec<usize>, init: Init, fixed: bool) -> Slot {
        let name = self.path(name);
        Slot(self.push_item(ParamSpec {
            name,
            shape,
            init,
            fixed,
        }))
    }
}

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
    /// The initial parameters of `cfg`, seeded by its `seed`, drawn by the generator `rng` names:
    /// with [`RngKind::Torch`] exactly what the family's PyTorch reference draws after
    /// `torch.manual_seed(seed)` ([`ModelConfig::torch_init`]).
    pub fn init(cfg: &ModelConfig, rng: RngKind) -> Self {
        let specs = cfg.param_specs();
        match rng {
            RngKind::Chacha => Self::init_specs(&specs, cfg.seed()),
            RngKind::Torch => {
                Self::from_values(&specs, cfg.torch_init(&mut TorchGenerator::new(cfg.seed())))
            }
        }
    }

    /// Draws every random ([`Init::Normal`], [`Init::Uniform`]) parameter in list order from one
    /// ChaCha stream of `seed`.
    pub fn init_specs(specs: &[ParamSpec], seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values = specs.iter().map(|s| {
            let n: usize = s.shape.iter().product();
            match s.init {
                Init::Normal { std } => {
                    let normal = Normal::new(0.0f32, std as f32)
                        .expect("init std is finite and >= 0 (checked by the config)");
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                }
                Init::Uniform { bound } => {
                    let b = bound as f32;
                    (0..n).map(|_| rng.gen_range(-b..=b)).collect()
                }
                constant => vec![constant.constant().expect("a constant init"); n],
            }
        });
        Self::from_values(specs, values.collect())
    }

    /// The store of `specs` holding `values` (one per spec, in order).
    fn from_values(specs: &[ParamSpec], values: Vec<Vec<f32>>) -> Self {
        let entries = specs
            .iter()
            .zip(values)
            .map(|(s, data)| Param {
                name: s.name.clone(),
                shape: s.shape.clone(),
                data,
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

    /// Whether the store holds exactly the tensors of `specs` (names and shapes, in order): then
    /// the slots of the tree that produced `specs` index it.
    pub fn matches(&self, specs: &[ParamSpec]) -> bool {
        self.entries.len() == specs.len()
            && self
                .entries
                .iter()
                .zip(specs)
                .all(|(p, s)| p.name == s.name && p.shape == s.shape)
    }

    /// Mutable parameter called `name`, if present.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Param> {
        let i = *self.index.get(name)?;
        Some(&mut self.entries[i])
    }

    /// Two different slots' tensors, both mutable at once.
    pub fn pair_mut(&mut self, a: Slot, b: Slot) -> (&mut [f32], &mut [f32]) {
        assert_ne!(a.0, b.0, "pair_mut needs two different slots");
        let (lo, hi) = (a.0.min(b.0), a.0.max(b.0));
        let (head, tail) = self.entries.split_at_mut(hi);
        let (x, y) = (&mut head[lo].data[..], &mut tail[0].data[..]);
        if a.0 < b.0 {
            (x, y)
        } else {
            (y, x)
        }
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|p| p.data.len()).sum()
    }

    /// The largest |w| over every parameter (NaN counts as infinite).
    pub fn largest_magnitude(&self) -> f32 {
        self.entries
            .iter()
            .flat_map(|p| p.data.iter())
            .fold(0.0f32, |m, &x| {
                if x.is_nan() {
                    f32::INFINITY
                } else {
                    m.max(x.abs())
                }
            })
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

    /// Loads the parameters `cfg` needs from a safetensors file under the family's state_dict names,
    /// checking every shape. TransformerLens's non-parameter buffers (`attn.mask`, `attn.IGNORE`) are
    /// ignored; any other tensor the config does not have (a checkpoint of a deeper or different
    /// model) is an error listing them, rather than a silently truncated model; so are NaN or
    /// infinite values.
    pub fn load(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let file = tensor_io::read(path)?;
        let specs = cfg.param_specs();
        let buffer = |n: &str| n.ends_with(".attn.mask") || n.ends_with(".attn.IGNORE");
        let mut extra: Vec<&str> = file
            .tensors
            .keys()
            .map(String::as_str)
            .filter(|n| !buffer(n) && !specs.iter().any(|s| s.name == *n))
            .collect();
        if !extra.is_empty() {
            extra.sort_unstable();
            return Err(GrokError::file(
                path,
                format!(
                    "holds tensors this model config does not have ({}): is it a checkpoint of another model? \
                     Check model_config.json / config.toml against it",
                    extra.join(", ")
                ),
            ));
        }
        let params =
            Self::from_tensor_map(&specs, |name| file.get(name), &path.display().to_string())?;
        if let Some(bad) = params
            .iter()
            .find(|p| p.data.iter().any(|x| !x.is_finite()))
        {
            return Err(GrokError::file(
                path,
                format!(
                    "tensor `{}` holds NaN or infinite values: the model diverged (or the file is \
                     damaged), so nothing computed from it would mean anything; use an earlier checkpoint",
                    bad.name
                ),
            ));
        }
        Ok(params)
    }

    /// Builds the store from owned parameters, checking that they are exactly the ones `specs` lists.
    pub fn from_tensor_map_owned(mut entries: Vec<Param>, specs: &[ParamSpec]) -> Result<Self> {
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
        specs: &[ParamSpec],
        lookup: impl Fn(&str) -> Option<&'a HostTensor>,
        source: &str,
    ) -> Result<Self> {
        let mut entries = Vec::new();
        for spec in specs {
            let t = match lookup(&spec.name) {
                Some(t) => t,
                None if spec.fixed && spec.init.constant().is_some() => {
                    let value = spec.init.constant().unwrap_or_default();
                    entries.push(Param {
                        name: spec.name.clone(),
                        shape: spec.shape.clone(),
                        data: vec![value; spec.shape.iter().product()],
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
                shape: spec.shape.clone(),
                data: t.to_f32(&spec.name)?,
            });
        }
        Ok(Self::from_entries(entries))
    }
}

impl std::ops::Index<Slot> for Params {
    type Output = [f32];

    fn index(&self, slot: Slot) -> &[f32] {
        &self.entries[slot.0].data
    }
}

impl std::ops::IndexMut<Slot> for Params {
    fn index_mut(&mut self, slot: Slot) -> &mut [f32] {
        &mut self.entries[slot.0].data
    }
}

/// A store's tensors on a candle device, some of them trainable [`candle_core::Var`]s.
pub struct CandleWeights {
    /// One tensor per slot.
    pub tensors: Vec<candle_core::Tensor>,
    /// The trainable slots and their variables (read gradients off these).
    pub vars: Vec<(Slot, candle_core::Var)>,
}

impl CandleWeights {
    /// The tensors of `params` (which must hold exactly `specs`) on `device`, with those in the slots
    /// `trainable` accepts made into variables; the candle forward passes of every family share it.
    pub fn new(
        specs: &[ParamSpec],
        params: &Params,
        device: &candle_core::Device,
        trainable: impl Fn(Slot) -> bool,
    ) -> Result<Self> {
        if !params.matches(specs) {
            return Err(GrokError::tensor(
                "params",
                "do not hold this model's parameters (names or shapes differ from its config)",
            ));
        }
        let mut tensors = Vec::with_capacity(specs.len());
        let mut vars = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let t = candle_core::Tensor::from_slice(&p.data, p.shape.as_slice(), device)?;
            if trainable(Slot(i)) {
                let v = candle_core::Var::from_tensor(&t)?;
                tensors.push(v.as_tensor().clone());
                vars.push((Slot(i), v));
            } else {
                tensors.push(t);
            }
        }
        Ok(CandleWeights { tensors, vars })
    }
}
