//! `groklens._native`: thin pyo3 wrappers over `groklens::api`, the same calls the CLI makes. The
//! Python package (`python/groklens/`) builds its classes on these; arrays cross as numpy arrays that
//! own the Rust buffers they were made from (no copy), configs as JSON text.

use std::path::PathBuf;

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use groklens::api::sweeps::{Launcher, LocalOptions};
use groklens::api::{self, Analysis, Event, Run, Throttle, TrainOptions};
use groklens::interp::hooks::HookFn;
use groklens::interp::names::ActKey;
use groklens::interp::processing::{process_weights, ProcessOptions};
use groklens::interp::{HookSet, Interp, Names};
use groklens::model::{HookedModel, HookedTransformer, ModelConfig, Params, TransformerConfig};
use groklens::sweep::worker::WorkerArgs;
use groklens::RunConfig;

pyo3::create_exception!(
    _native,
    GrokError,
    PyException,
    "An error from groklens, with the message the CLI prints (the field or file, and the fix)."
);

/// A groklens error as a Python exception: `KeyboardInterrupt` for a stopped run, else `GrokError`.
fn py_err(e: groklens::GrokError) -> PyErr {
    match e {
        groklens::GrokError::Interrupted(m) => {
            PyKeyboardInterrupt::new_err(format!("interrupted: {m}"))
        }
        e => GrokError::new_err(e.to_string()),
    }
}

/// Moves a value into `Python::detach`'s closure.
struct OnThisThread<T>(T);
// SAFETY: `Python::detach` runs its closure on the calling thread; the wrapped values hold no Python
// objects, so releasing the GIL around them is sound.
unsafe impl<T> Send for OnThisThread<T> {}

/// A float32 numpy array.
type Array<'py> = Bound<'py, PyArrayDyn<f32>>;

/// A numpy array owning `data` (no copy), shaped `shape`.
fn array<'py>(
    py: Python<'py>,
    data: Vec<f32>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    PyArray1::from_vec(py, data).reshape(shape.to_vec())
}

/// Keeps a candle tensor alive as the base object of the numpy array that views its buffer.
#[pyclass(name = "TensorBuffer", frozen)]
struct TensorBuffer(#[allow(dead_code)] candle_core::Tensor);

/// A read-only numpy array of shape `dims` viewing `data`, with `owner` as its base.
///
/// # Safety
/// `data` must stay alive and unchanged for as long as `owner` does.
unsafe fn readonly_view<'py>(
    data: &[f32],
    dims: &[usize],
    owner: Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Array<'py>> {
    let view = numpy::ndarray::ArrayView::from_shape(dims, data)
        .map_err(|e| GrokError::new_err(format!("{what}: {e}")))?;
    // SAFETY: the caller keeps `data` alive and unchanged while `owner`, the array's base, lives.
    let arr = unsafe { PyArrayDyn::<f32>::borrow_from_array(&view.into_dyn(), owner) };
    arr.getattr("flags")?.setattr("writeable", false)?;
    Ok(arr)
}

/// A candle tensor as a read-only numpy array: a view of its own buffer when it is a contiguous f32
/// CPU tensor (no copy; the array keeps the tensor alive), else a copy.
fn tensor_array<'py>(
    py: Python<'py>,
    t: &candle_core::Tensor,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    if t.dtype() == candle_core::DType::F32 && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            if let Ok(all) = cpu.as_slice::<f32>() {
                let (start, n) = (layout.start_offset(), t.elem_count());
                if let Some(values) = all.get(start..start + n) {
                    let (ptr, dims) = (values.as_ptr(), t.dims().to_vec());
                    drop(storage);
                    let owner = Bound::new(py, TensorBuffer(t.clone()))?.into_any();
                    // SAFETY: `ptr..ptr + n` lies in the tensor's storage, which `owner` (the array's
                    // base) keeps alive; candle never writes to a tensor's storage after it is made,
                    // and the array is read-only, so the memory does not change while viewed.
                    return unsafe {
                        readonly_view(std::slice::from_raw_parts(ptr, n), &dims, owner, "tensor")
                    };
                }
            }
        }
    }
    owned_array(py, t)
}

/// A copy of a candle tensor as a writable numpy array.
fn owned_array<'py>(
    py: Python<'py>,
    t: &candle_core::Tensor,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let data = t
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| py_err(e.into()))?;
    array(py, data, t.dims())
}

/// A run config from its JSON (as `groklens.preset` gives it).
fn parse_config(json: &str) -> PyResult<RunConfig> {
    serde_json::from_str(json).map_err(|e| GrokError::new_err(format!("config: {e}")))
}

/// A model config from its JSON (as `Model.cfg` gives it), validated.
fn parse_model_config(json: &str) -> PyResult<ModelConfig> {
    let cfg: ModelConfig =
        serde_json::from_str(json).map_err(|e| GrokError::new_err(format!("model config: {e}")))?;
    cfg.validate().map_err(py_err)?;
    Ok(cfg)
}

/// The names the presets list: `(name, description)`, the default first, then the comparisons.
#[pyfunction]
fn presets() -> Vec<(String, String)> {
    let runs = groklens::presets::PRESETS
        .iter()
        .map(|(n, a)| (n.to_string(), a.to_string()));
    let comparisons = groklens::presets::COMPARISONS
        .iter()
        .map(|(n, a, _)| (n.to_string(), a.to_string()));
    runs.chain(comparisons).collect()
}

/// A config from a preset name or a config's JSON, with `KEY=VALUE` overrides, resolved, as JSON.
#[pyfunction]
#[pyo3(signature = (preset=None, config_json=None, overrides=Vec::new()))]
fn build_config(
    preset: Option<&str>,
    config_json: Option<&str>,
    overrides: Vec<String>,
) -> PyResult<String> {
    let cfg = match (preset, config_json) {
        (_, Some(json)) => api::configure(parse_config(json)?, &overrides).map_err(py_err)?,
        (p, None) => api::build_config(Some(p.unwrap_or("tl-grokking-demo")), None, &overrides)
            .map_err(py_err)?,
    };
    Ok(serde_json::to_string(&cfg).expect("a config serialises"))
}

/// The model config (as `Model.cfg` gives it, JSON) of a `model_config.json` text: a TransformerLens
/// `HookedTransformerConfig`'s keys, or a groklens family's fields with `family`.
#[pyfunction]
fn model_config_to_cfg(model_config_json: &str) -> PyResult<String> {
    let v: serde_json::Value = serde_json::from_str(model_config_json)
        .map_err(|e| GrokError::new_err(format!("model_config: {e}")))?;
    let mut cfg = ModelConfig::from_json(&v).map_err(py_err)?;
    let (vocab, out, ctx) = cfg.family().sizes();
    cfg.fill_from_task(vocab, out, ctx);
    cfg.validate().map_err(py_err)?;
    Ok(serde_json::to_string(&cfg).expect("a config serialises"))
}

/// The parameters a model config has: `(name, shape)` in state-dict order.
#[pyfunction]
fn param_shapes(cfg_json: &str) -> PyResult<Vec<(String, Vec<usize>)>> {
    Ok(parse_model_config(cfg_json)?
        .param_specs()
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect())
}

/// Sends the training events to a Python callback `progress(kind, payload)` (a note, an estimate,
/// or an evaluation row as a dict), at most ten evaluations a second.
fn forward_events(progress: Option<Py<PyAny>>) -> impl FnMut(Event) {
    let mut throttle = Throttle::default();
    move |event| {
        let Some(cb) = &progress else { return };
        Python::attach(|py| {
            let sent = match event {
                Event::Note(n) => cb.call1(py, ("note", n)),
                Event::Estimate(e) => cb.call1(py, ("estimate", e)),
                Event::Eval {
                    row,
                    total,
                    unit,
                    rate,
                } => {
                    if !throttle.due(row.epoch, total) {
                        return;
                    }
                    let d = PyDict::new(py);
                    let _ = d.set_item("epoch", row.epoch);
                    let _ = d.set_item("total", total);
                    let _ = d.set_item("unit", unit);
                    let _ = d.set_item("rate", rate);
                    let _ = d.set_item("train_loss", row.train_loss);
                    let _ = d.set_item("train_acc", row.train_acc);
                    let _ = d.set_item("test_loss", row.test_loss);
                    let _ = d.set_item("test_acc", row.test_acc);
                    cb.call1(py, ("eval", d))
                }
                Event::Trained(t) => cb.call1(py, ("trained", t.text())),
                Event::Report(r) => cb.call1(py, ("report", r.text())),
            };
            if let Err(e) = sent {
                e.print(py);
            }
        })
    }
}

/// Trains `run` with the GIL released; SIGINT stops it at the end of the epoch with a checkpoint
/// (raised as `KeyboardInterrupt`), and the run resumes exactly.
fn train_run(py: Python<'_>, run: Run, progress: Option<Py<PyAny>>) -> PyResult<String> {
    let job = OnThisThread((run, progress));
    let result = py.detach(move || {
        let OnThisThread((mut run, progress)) = job;
        let mut on = forward_events(progress);
        let opts = TrainOptions {
            estimate: true,
            stop_on_signal: true,
        };
        OnThisThread(run.train(opts, &mut on).map(|t| t.text()))
    });
    result.0.map_err(py_err)
}

/// Creates a run of the config `config_json` in `out` and trains it; returns the summary text.
#[pyfunction]
#[pyo3(signature = (config_json, out, progress=None))]
fn train(
    py: Python<'_>,
    config_json: &str,
    out: PathBuf,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let run = Run::create(parse_config(config_json)?, out).map_err(py_err)?;
    train_run(py, run, progress)
}

/// Resumes the run in `dir` with `overrides` of its resumable keys and trains it to its end.
#[pyfunction]
#[pyo3(signature = (dir, overrides=Vec::new(), progress=None))]
fn resume(
    py: Python<'_>,
    dir: PathBuf,
    overrides: Vec<String>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let (run, notes) = Run::resume(dir, &overrides).map_err(py_err)?;
    if let Some(cb) = &progress {
        for n in notes {
            cb.call1(py, ("note", n))?;
        }
    }
    train_run(py, run, progress)
}

/// Writes a run of the config `config_json` in `out` for `model`'s weights, recorded as its epoch 0
/// with one evaluation (`Run.analyze()`, `report` and `compare` then work on it); returns the path.
#[pyfunction]
fn import_run(config_json: &str, model: &NativeModel, out: PathBuf) -> PyResult<String> {
    let run = Run::import(parse_config(config_json)?, model.params.clone(), out).map_err(py_err)?;
    Ok(run.path().display().to_string())
}

/// Analyses the runs in `dirs` and writes the page that sets them side by side at `out`; returns
/// `(path, summary text)`.
#[pyfunction]
fn compare(dirs: Vec<PathBuf>, out: PathBuf) -> PyResult<(String, String)> {
    let c = groklens::report::compare::write_comparison(&dirs, &out).map_err(py_err)?;
    Ok((out.display().to_string(), c.text()))
}

/// Runs the sweep `spec` (a file or a built-in name) into `out` with a pool of `workers` processes,
/// each `python -m groklens` from `python` (the GIL released); returns the summary text.
#[pyfunction]
#[pyo3(signature = (spec, out, python, workers=None, threads_per_run=1, reports=true, progress=true))]
#[allow(clippy::too_many_arguments)]
fn sweep(
    py: Python<'_>,
    spec: String,
    out: PathBuf,
    python: PathBuf,
    workers: Option<usize>,
    threads_per_run: usize,
    reports: bool,
    progress: bool,
) -> PyResult<String> {
    let launcher = Launcher {
        program: python,
        prefix: vec!["-m".into(), "groklens".into()],
    };
    let opts = LocalOptions {
        workers,
        threads_per_run,
        shard: None,
        reports,
        progress,
    };
    let done = py.detach(move || {
        OnThisThread(api::sweeps::run_local(&spec, &out, launcher, &opts).map(|r| r.text()))
    });
    done.0.map_err(py_err)
}

/// `python -m groklens sweep worker …`: trains one point of a sweep for a pool started by
/// [`sweep`] (the arguments [`WorkerArgs::to_args`] writes). Returns the process's exit code.
#[pyfunction]
fn sweep_worker(py: Python<'_>, argv: Vec<String>) -> i32 {
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let args = match WorkerArgs::from_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    py.detach(move || {
        let mut on = |e: Event| match e {
            Event::Note(n) => eprintln!("{n}"),
            Event::Trained(t) => println!("{}", t.text()),
            Event::Report(r) => println!("{}", r.text()),
            Event::Estimate(_) | Event::Eval { .. } => {}
        };
        match api::sweeps::work_on_point(&args, &mut on) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                i32::from(e.exit_code())
            }
        }
    })
}

/// A run directory, read-only.
#[pyclass(name = "NativeRun", unsendable)]
struct NativeRun {
    run: Run,
}

#[pymethods]
impl NativeRun {
    /// Opens the run in `dir`.
    #[new]
    fn new(dir: PathBuf) -> PyResult<Self> {
        Ok(NativeRun {
            run: Run::open(dir).map_err(py_err)?,
        })
    }

    /// The run directory.
    fn path(&self) -> String {
        self.run.path().display().to_string()
    }

    /// The resolved config as JSON.
    fn config_json(&self) -> String {
        serde_json::to_string(self.run.config()).expect("a config serialises")
    }

    /// Every metrics column by name, as float64 arrays.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let rows = self.run.metrics().map_err(py_err)?;
        let d = PyDict::new(py);
        for name in groklens::run::metrics::COLUMNS {
            let col: Vec<f64> = rows
                .iter()
                .map(|r| r.get(name).unwrap_or(f64::NAN))
                .collect();
            d.set_item(name, PyArray1::from_vec(py, col))?;
        }
        Ok(d)
    }

    /// Epochs with a checkpoint.
    fn checkpoints(&self) -> Vec<usize> {
        self.run.checkpoints()
    }

    /// True once the final model is written.
    fn is_finished(&self) -> bool {
        self.run.is_finished()
    }

    /// The model at checkpoint `epoch`, or the final one.
    #[pyo3(signature = (epoch=None))]
    fn model(&self, epoch: Option<usize>) -> PyResult<NativeModel> {
        let params = self.run.model(epoch).map_err(py_err)?;
        NativeModel::build(self.run.config().model.clone(), params)
    }

    /// The split: train and test tokens `[rows, seq]` (int64) and labels (int64).
    fn split<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cfg = self.run.config();
        let split = self.run.split().map_err(py_err)?;
        let d = PyDict::new(py);
        let seq = cfg.task.seq_len();
        for (name, rows) in [("train", split.train), ("test", split.test)] {
            let data = cfg.task.split_rows(rows).all();
            let n = data.len();
            let tokens: Vec<i64> = data.tokens.iter().map(|&t| i64::from(t)).collect();
            let labels: Vec<i64> = data.labels.iter().map(|&t| i64::from(t)).collect();
            d.set_item(
                format!("{name}_tokens"),
                PyArray1::from_vec(py, tokens).reshape([n, seq])?,
            )?;
            d.set_item(format!("{name}_labels"), PyArray1::from_vec(py, labels))?;
        }
        Ok(d)
    }

    /// The analysis for the run's task kind, as a dict of numbers, lists and arrays.
    fn analyze<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        match self.run.analyze().map_err(py_err)? {
            Analysis::Modular(a) => {
                d.set_item("kind", "modular")?;
                d.set_item("final_epoch", a.final_epoch)?;
                d.set_item("grokking_epoch", a.grokking_epoch)?;
                d.set_item("key_freqs", a.embed.key_freqs.clone())?;
                d.set_item(
                    "freq_norms",
                    PyArray1::from_vec(py, a.embed.freq_norms.clone()),
                )?;
                let phases = PyDict::new(py);
                phases.set_item("memorisation_end", a.phases.memorisation_end)?;
                phases.set_item("circuit_formation_end", a.phases.circuit_formation_end)?;
                phases.set_item("cleanup_end", a.phases.cleanup_end)?;
                d.set_item("phases", phases)?;
                if let Some(n) = &a.neurons {
                    let clusters = PyList::empty(py);
                    for c in &n.fourier.clusters {
                        clusters.append((c.freq, c.neurons.clone()))?;
                    }
                    d.set_item("clusters", clusters)?;
                    let acts = n.acts.clone();
                    d.set_item(
                        "neuron_acts",
                        array(py, acts.data, &[acts.rows, acts.cols])?,
                    )?;
                }
                d.set_item("notes", a.notes.clone())?;
            }
            Analysis::Compound(a) => {
                d.set_item("kind", "compound")?;
                d.set_item("findings", a.findings())?;
            }
            Analysis::Sequence(a) => {
                d.set_item("kind", "previous_token")?;
                d.set_item("findings", a.findings())?;
            }
        }
        Ok(d)
    }

    /// Writes `report.html` (and a copy at `out`, checked as every command's output is) and returns
    /// `(path, summary text)`.
    #[pyo3(signature = (out=None))]
    fn report(&self, out: Option<PathBuf>) -> PyResult<(String, String)> {
        if let Some(out) = &out {
            groklens::run::check_output(out, &[self.run.path()], &["report.html"])
                .map_err(py_err)?;
        }
        let r = self.run.write_report().map_err(py_err)?;
        let Some(out) = out else {
            return Ok((r.path().display().to_string(), r.text()));
        };
        if std::fs::canonicalize(&out).ok() != std::fs::canonicalize(r.path()).ok() {
            let tmp = out.with_extension("html.tmp");
            std::fs::copy(r.path(), &tmp)
                .and_then(|_| std::fs::rename(&tmp, &out))
                .map_err(|e| {
                    py_err(groklens::GrokError::file(
                        &out,
                        format!("cannot write: {e}"),
                    ))
                })?;
        }
        Ok((out.display().to_string(), r.text()))
    }
}

/// A model of any family with its parameters.
#[pyclass(name = "NativeModel", unsendable)]
struct NativeModel {
    cfg: ModelConfig,
    params: Params,
    model: Box<dyn HookedModel>,
}

impl NativeModel {
    fn build(cfg: ModelConfig, params: Params) -> PyResult<Self> {
        let model = cfg.build(&params).map_err(py_err)?;
        Ok(NativeModel { cfg, params, model })
    }

    /// The transformer's config, or an error naming what `what` needs.
    fn transformer(&self, what: &str) -> PyResult<&TransformerConfig> {
        self.cfg.transformer().ok_or_else(|| {
            GrokError::new_err(format!(
                "model.family = {}: {what} is defined for the transformer family only",
                self.cfg.family_name()
            ))
        })
    }

    /// `tokens` (`[batch, pos]` integers) as the model's token tensor.
    fn tokens(&self, tokens: PyReadonlyArrayDyn<'_, i64>) -> PyResult<candle_core::Tensor> {
        let ids: Vec<i64> = tokens.as_array().iter().copied().collect();
        let (ids, rows) = api::inspect::token_rows(tokens.shape(), &ids)
            .map_err(|why| py_err(groklens::GrokError::tensor("tokens", why)))?;
        self.model.tokens_tensor(&ids, rows).map_err(py_err)
    }
}

#[pymethods]
impl NativeModel {
    /// A model of config `cfg_json` (a model config as `Model.cfg` gives it) from `state_dict`
    /// (name → float32 array under the run's state-dict names). Missing tensors, wrong shapes and
    /// unknown names are refused by name; TransformerLens's `attn.mask`/`attn.IGNORE` buffers are
    /// skipped.
    #[staticmethod]
    fn from_state_dict(cfg_json: &str, state_dict: &Bound<'_, PyDict>) -> PyResult<Self> {
        let cfg = parse_model_config(cfg_json)?;
        let specs = cfg.param_specs();
        let mut tensors = std::collections::BTreeMap::new();
        for (k, v) in state_dict.iter() {
            let name: String = k.extract()?;
            if name.ends_with("attn.mask") || name.ends_with("attn.IGNORE") {
                continue;
            }
            if !specs.iter().any(|s| s.name == name) {
                let known: Vec<&str> = specs.iter().take(4).map(|s| s.name.as_str()).collect();
                return Err(GrokError::new_err(format!(
                    "tensor `{name}`: not a parameter of this {} model (its names are like {}, …)",
                    cfg.family_name(),
                    known.join(", ")
                )));
            }
            let arr: PyReadonlyArrayDyn<'_, f32> = v.extract().map_err(|_| {
                GrokError::new_err(format!("tensor `{name}`: must be a float32 array"))
            })?;
            let shape = arr.shape().to_vec();
            let data: Vec<f32> = arr.as_array().iter().copied().collect();
            tensors.insert(name, groklens::tensor_io::HostTensor::f32(shape, data));
        }
        let params =
            Params::from_tensor_map(&specs, |n| tensors.get(n), "state_dict").map_err(py_err)?;
        NativeModel::build(cfg, params)
    }

    /// The family's name.
    fn family(&self) -> &'static str {
        self.cfg.family_name()
    }

    /// The model config as JSON (the family's fields).
    fn cfg_json(&self) -> String {
        serde_json::to_string(&self.cfg).expect("a config serialises")
    }

    /// `model_config.json` (for the transformer: `HookedTransformerConfig(**json)` keys).
    fn model_config_json(&self) -> String {
        self.cfg.to_json().to_string()
    }

    /// Every parameter by its state-dict name, as read-only float32 arrays viewing the model's own
    /// buffers (no copy; each array keeps the model alive).
    fn params<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let d = PyDict::new(py);
        let this = slf.borrow();
        for p in this.params.iter() {
            let what = format!("tensor `{}`", p.name);
            // SAFETY: the array borrows `p.data`, which lives as long as the model object passed as
            // its base; the parameters are never changed after construction, and the array is
            // read-only so Python cannot change them either.
            let arr = unsafe { readonly_view(&p.data, &p.shape, slf.clone().into_any(), &what)? };
            d.set_item(&p.name, arr)?;
        }
        Ok(d)
    }

    /// The tensors the seed's PyTorch class holds but never reads (BitNet's outer BitLinear weights,
    /// ternary `layer.norm`): `(name, shape, fill value)`, for a strict `load_state_dict`.
    fn seed_only_tensors(&self) -> Vec<(String, Vec<usize>, f32)> {
        match &self.cfg {
            ModelConfig::BitNet(b) => b.seed_only_tensors(),
            _ => Vec::new(),
        }
    }

    /// TransformerLens's weight processing (`fold_ln`, `center_writing_weights`, `center_unembed`,
    /// `fold_value_biases`): a new model with the same predictions.
    #[pyo3(signature = (fold_ln=true, center_writing_weights=true, center_unembed=true, fold_value_biases=true))]
    fn process_weights(
        &self,
        fold_ln: bool,
        center_writing_weights: bool,
        center_unembed: bool,
        fold_value_biases: bool,
    ) -> PyResult<NativeModel> {
        let cfg = self.transformer("process_weights")?;
        let opts = ProcessOptions {
            fold_ln,
            center_writing_weights,
            center_unembed,
            fold_value_biases,
        };
        let (cfg, params) = process_weights(cfg, &self.params, opts).map_err(py_err)?;
        NativeModel::build(ModelConfig::Transformer(cfg), params)
    }

    /// A circuit of head `head` in block `layer` as its factors `(A, B)` (the circuit is `A @ B`):
    /// `kind` is `qk`, `ov`, `full_qk`, `full_ov` or `ov_to_neurons` (into block `mlp_layer`'s MLP).
    #[pyo3(signature = (kind, layer, head, mlp_layer=None))]
    fn circuit<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        layer: usize,
        head: usize,
        mlp_layer: Option<usize>,
    ) -> PyResult<(Array<'py>, Array<'py>)> {
        let cfg = self.transformer("a circuit")?;
        let model = HookedTransformer::new(cfg, &self.params).map_err(py_err)?;
        let m = match kind {
            "qk" => model.qk_circuit(layer, head),
            "ov" => model.ov_circuit(layer, head),
            "full_qk" => model.full_qk_circuit(layer, head),
            "full_ov" => model.full_ov_circuit(layer, head),
            "ov_to_neurons" => model.ov_to_neurons(layer, head, mlp_layer.unwrap_or(layer)),
            other => {
                return Err(GrokError::new_err(format!(
                    "circuit `{other}`: unknown; one of qk, ov, full_qk, full_ov, ov_to_neurons"
                )))
            }
        }
        .map_err(py_err)?;
        let (a, b) = (m.a, m.b);
        Ok((
            array(py, a.data, &[a.rows, a.cols])?,
            array(py, b.data, &[b.rows, b.cols])?,
        ))
    }

    /// Every hook point's name, in forward order.
    fn hook_names(&self) -> Vec<String> {
        self.model.hook_names()
    }

    /// The full hook name of a shorthand (`"pattern", 0` → `blocks.0.attn.hook_pattern`), checked.
    #[pyo3(signature = (name, layer=None, layer_type=None))]
    fn resolve(
        &self,
        name: &str,
        layer: Option<i64>,
        layer_type: Option<String>,
    ) -> PyResult<String> {
        let key = ActKey {
            name: name.to_string(),
            layer,
            layer_type,
        };
        groklens::interp::cache::resolve_known(
            &key,
            self.model.n_layers(),
            &self.model.hook_names(),
        )
        .map_err(py_err)
    }

    /// Logits `[batch, pos, d_vocab_out]` of `tokens`.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArrayDyn<'_, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let t = self.tokens(tokens)?;
        let logits = self
            .model
            .run_with_hooks(&t, &mut HookSet::new(self.model.as_ref()))
            .map_err(py_err)?;
        tensor_array(py, &logits)
    }

    /// Logits and the activations of `names` (every hook point when `None`).
    #[pyo3(signature = (tokens, names=None))]
    fn run_with_cache<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArrayDyn<'_, i64>,
        names: Option<Vec<String>>,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyDict>)> {
        let t = self.tokens(tokens)?;
        let names = names.map_or(Names::All, Names::List);
        let (logits, cache) = self.model.run_with_cache(&t, &names).map_err(py_err)?;
        let d = PyDict::new(py);
        for (name, act) in cache.iter() {
            d.set_item(name, tensor_array(py, act)?)?;
        }
        Ok((tensor_array(py, &logits)?, d))
    }

    /// Logits with `hooks` (`[(name, fn)]`): `fn(activation, name)` gets each activation as a
    /// writable numpy array (a copy) and may change it in place or return a replacement of the same
    /// shape; either way what it leaves is what the model continues with.
    fn run_with_hooks<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArrayDyn<'_, i64>,
        hooks: Vec<(String, Py<PyAny>)>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let t = self.tokens(tokens)?;
        let mut set = HookSet::new(self.model.as_ref());
        for (name, f) in hooks {
            let hook: HookFn = Box::new(move |act, point| {
                Python::attach(|py| -> groklens::Result<Option<candle_core::Tensor>> {
                    let to_err = |e: PyErr| {
                        groklens::GrokError::tensor(&point.name, format!("hook raised {e}"))
                    };
                    let arr = owned_array(py, act).map_err(to_err)?;
                    let out = f.call1(py, (&arr, point.name.clone())).map_err(to_err)?;
                    let out = if out.is_none(py) {
                        arr.into_any().unbind()
                    } else {
                        out
                    };
                    let out: PyReadonlyArrayDyn<'_, f32> =
                        out.extract(py).map_err(|e: PyErr| to_err(e))?;
                    let dims = out.shape().to_vec();
                    let data: Vec<f32> = out.as_array().iter().copied().collect();
                    Ok(Some(candle_core::Tensor::from_vec(
                        data,
                        dims,
                        act.device(),
                    )?))
                })
            });
            set = set.add(name.as_str(), hook).map_err(py_err)?;
        }
        let logits = self.model.run_with_hooks(&t, &mut set).map_err(py_err)?;
        tensor_array(py, &logits)
    }
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("GrokError", m.py().get_type::<GrokError>())?;
    m.add_function(wrap_pyfunction!(presets, m)?)?;
    m.add_function(wrap_pyfunction!(build_config, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(resume, m)?)?;
    m.add_function(wrap_pyfunction!(model_config_to_cfg, m)?)?;
    m.add_function(wrap_pyfunction!(import_run, m)?)?;
    m.add_function(wrap_pyfunction!(sweep, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(param_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_worker, m)?)?;
    m.add_class::<NativeRun>()?;
    m.add_class::<NativeModel>()?;
    Ok(())
}
