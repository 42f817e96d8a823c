"""groklens in Python: train small networks on algorithmic tasks until they grok, then take them apart.

The work happens in the Rust library (the same calls the ``groklens`` command line makes); this package
wraps it with numpy arrays::

    import groklens
    run = groklens.train(preset="quick", out="runs/quick", overrides={"train.epochs": 2000})
    run.metrics["test_acc"][-1]
    model = run.model()
    logits, cache = model.run_with_cache(run.split()["test_tokens"][:8])
    cache["pattern", 0].shape          # TransformerLens shorthand, or the full hook name
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _native
from ._native import GrokError

builtins_open = builtins.open  # ``open`` is this package's verb for runs

__all__ = [
    "GrokError",
    "Model",
    "Run",
    "Sweep",
    "SweepIndex",
    "ActivationCache",
    "compare",
    "import_run",
    "open",
    "preset",
    "presets",
    "sweep",
    "train",
]


def presets() -> List[Tuple[str, str]]:
    """Every preset as ``(name, description)``, the default first, then the comparison presets."""
    return list(_native.presets())


def preset(name: str) -> Dict[str, Any]:
    """The resolved config of preset ``name`` as a dict (``task``, ``model``, ``train``)."""
    return json.loads(_native.build_config(name, None, []))


def _override_strings(overrides: Optional[Dict[str, Any]]) -> List[str]:
    """``{"train.lr": 3e-3}`` as the CLI's ``KEY=VALUE`` settings (values in TOML syntax)."""
    out = []
    for key, value in (overrides or {}).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)
        elif isinstance(value, (list, tuple)):
            text = json.dumps(list(value))
        else:
            text = repr(value)
        out.append(f"{key}={text}")
    return out


class _Progress:
    """Draws training progress: a tqdm bar where tqdm is installed (terminal or Jupyter), else a
    line redrawn on stderr; notes and summaries are printed."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.drawing = False

    def __call__(self, kind: str, payload: Any) -> None:
        if not self.enabled:
            return
        if kind == "eval":
            self._eval(payload)
        elif kind in ("note", "estimate"):
            print(payload, file=sys.stderr)
        elif kind == "trained":
            self.close()
            print(payload)

    def _eval(self, row: Dict[str, Any]) -> None:
        text = (
            f"train loss {row['train_loss']:.3e} acc {100 * row['train_acc']:.1f}% | "
            f"test loss {row['test_loss']:.3e} acc {100 * row['test_acc']:.1f}%"
        )
        try:
            from tqdm.auto import tqdm  # type: ignore
        except ImportError:
            tqdm = None
        if tqdm is not None:
            if self.bar is None:
                self.bar = tqdm(total=row["total"], unit=row["unit"])
            self.bar.n = row["epoch"]
            self.bar.set_postfix_str(text, refresh=True)
            return
        self.drawing = True
        sys.stderr.write(f"\r{row['unit']} {row['epoch']:>6}/{row['total']} | {text}")
        sys.stderr.flush()

    def close(self) -> None:
        """Ends the bar or the progress line, if one is drawn."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.drawing:
            sys.stderr.write("\n")
            self.drawing = False


def train(
    preset: Optional[str] = None,
    config: Optional[Dict[str, Any]] = None,
    out: Optional[str] = None,
    overrides: Optional[Dict[str, Any]] = None,
    threads: Optional[int] = None,
    progress: bool = True,
) -> "Run":
    """Trains a new run of ``preset`` (default: the TransformerLens grokking demo) or of ``config`` (a
    dict as :func:`preset` returns) with ``overrides`` into ``out`` and returns it. The GIL is released
    while training; Ctrl-C (KeyboardInterrupt) stops at the end of the epoch with a checkpoint, and
    :meth:`Run.resume` continues exactly."""
    sets = _override_strings(overrides)
    if threads is not None:
        sets.append(f"train.threads={int(threads)}")
    if out is None:
        out = os.path.join("runs", f"py-{preset or 'tl-grokking-demo'}")
    cfg = _native.build_config(preset, None if config is None else json.dumps(config), sets)
    bar = _Progress(progress)
    try:
        _native.train(cfg, os.fspath(out), bar)
    finally:
        bar.close()
    return Run(out)


def open(path: str) -> "Run":  # noqa: A001 - the package's verb, as in groklens.open(dir)
    """Opens the run directory ``path``."""
    return Run(path)


def import_run(
    model: "Model",
    task: Any,
    out: str,
    train: Optional[Dict[str, Any]] = None,
    overrides: Optional[Dict[str, Any]] = None,
) -> "Run":
    """Writes a run directory in ``out`` for ``model``, trained elsewhere (e.g. a TransformerLens model
    via :meth:`Model.from_transformer_lens`), so :meth:`Run.analyze`, :meth:`Run.report` and
    ``groklens compare`` work on it. ``task`` is a preset name (its task and train settings are used)
    or a task section (``{"kind": "modular", "p": 113, "train_frac": 0.3, ...}``, with the default
    preset's train settings). The weights are recorded as the run's epoch 0 with one evaluation on
    the task's split; resuming the run trains them further with a fresh optimizer."""
    if isinstance(task, str):
        config = preset(task)
    elif isinstance(task, dict):
        config = preset(presets()[0][0])  # the default preset's train settings
        config["task"] = task
    else:
        raise GrokError(f"task: expects a preset name or a task section dict, not {type(task).__name__}")
    config["model"] = model.cfg
    if train is not None:
        config["train"] = train
    cfg = _native.build_config(None, json.dumps(config), _override_strings(overrides))
    return Run(_native.import_run(cfg, model._native, os.fspath(out)))


def compare(runs: Sequence[Any], out: str = "compare.html") -> str:
    """Writes one page setting the runs (directories or :class:`Run`s, any families) side by side;
    returns its path."""
    dirs = [r.path if isinstance(r, Run) else os.fspath(r) for r in runs]
    path, _text = _native.compare(dirs, os.fspath(out))
    return path


def sweep(
    spec: str,
    out: str,
    workers: Optional[int] = None,
    threads_per_run: int = 1,
    reports: bool = True,
    progress: bool = True,
) -> "Sweep":
    """Runs the sweep ``spec`` (a spec file or a built-in name) into ``out`` with a pool of ``workers``
    processes (default: one per core), each training one point at a time on ``threads_per_run``
    threads; finished points are kept, so calling it again resumes. Returns the :class:`Sweep`; a
    point that failed raises :class:`GrokError` naming it (after the index is written)."""
    text = _native.sweep(
        os.fspath(spec), os.fspath(out), sys.executable, workers, int(threads_per_run), reports, progress
    )
    if progress:
        print(text)
    return Sweep(out)


class SweepIndex:
    """A sweep's ``index.csv`` as columns: ``index["test_acc"]`` is a float array (NaN where a point
    has no value), text columns are lists; ``len(index)`` points, ``index.rows()`` as dicts, and
    ``index.frame()`` a pandas DataFrame (needs pandas)."""

    def __init__(self, path: str):
        import csv

        self.path = os.fspath(path)
        try:
            with builtins_open(self.path, newline="") as f:
                rows = list(csv.reader(f))
        except OSError as e:
            raise GrokError(f"{self.path}: cannot read the sweep index ({e}); run the sweep first") from None
        if not rows:
            raise GrokError(f"{self.path}: empty; run the sweep again to rewrite it")
        self.columns = rows[0]
        body = rows[1:]
        self._data: Dict[str, Any] = {}
        for i, name in enumerate(self.columns):
            cells = [r[i] if i < len(r) else "" for r in body]
            try:
                self._data[name] = np.array([float(c) if c != "" else np.nan for c in cells])
            except ValueError:
                self._data[name] = cells
        self._len = len(body)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, column: str):
        if column not in self._data:
            raise KeyError(f"{column!r}: not a column of {self.path} (its columns: {', '.join(self.columns)})")
        return self._data[column]

    def __repr__(self) -> str:
        return f"groklens.SweepIndex({self.path!r}, {self._len} points, columns {self.columns})"

    def rows(self) -> List[Dict[str, Any]]:
        """Each point as a dict of its columns."""
        return [{c: self._data[c][i] for c in self.columns} for i in range(self._len)]

    def frame(self):
        """The index as a pandas DataFrame (needs pandas)."""
        import pandas as pd  # type: ignore

        return pd.DataFrame({c: self._data[c] for c in self.columns})


class Sweep:
    """A sweep directory: its index and its points' runs."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"groklens.Sweep({self.path!r})"

    @property
    def index(self) -> SweepIndex:
        """``index.csv``: one row per point (status, swept settings, accuracy, grokking epoch…)."""
        return SweepIndex(os.path.join(self.path, "index.csv"))

    def run(self, point: str) -> "Run":
        """The run of point ``point`` (a name from ``index["point"]``)."""
        return Run(os.path.join(self.path, "runs", point))


class Run:
    """A run directory of any family and task kind."""

    def __init__(self, path: str):
        self._native = _native.NativeRun(os.fspath(path))

    def __repr__(self) -> str:
        return f"groklens.Run({self.path!r})"

    @property
    def path(self) -> str:
        """The run directory."""
        return self._native.path()

    @property
    def config(self) -> Dict[str, Any]:
        """The resolved config (``task``, ``model``, ``train``)."""
        return json.loads(self._native.config_json())

    @property
    def metrics(self) -> Dict[str, np.ndarray]:
        """Every ``metrics.csv`` column by name, as float64 arrays."""
        return self._native.metrics()

    def metrics_frame(self):
        """The metrics as a pandas DataFrame (needs pandas)."""
        import pandas as pd  # type: ignore

        return pd.DataFrame(self.metrics)

    @property
    def checkpoints(self) -> List[int]:
        """Epochs (steps) with a checkpoint, oldest first."""
        return list(self._native.checkpoints())

    @property
    def finished(self) -> bool:
        """True once the final model is written."""
        return self._native.is_finished()

    def model(self, epoch: Optional[int] = None) -> "Model":
        """The model at checkpoint ``epoch``, or the final model."""
        return Model(self._native.model(epoch))

    def split(self) -> Dict[str, np.ndarray]:
        """``train_tokens``, ``train_labels``, ``test_tokens``, ``test_labels`` as int64 arrays."""
        return self._native.split()

    def analyze(self) -> Dict[str, Any]:
        """The analysis for the run's task kind (modular: key frequencies, per-frequency norms,
        neuron clusters, phases, grokking epoch)."""
        return self._native.analyze()

    def report(self, out: Optional[str] = None) -> str:
        """Writes ``report.html`` in the run directory (and a copy at ``out``) and returns its path."""
        path, _text = self._native.report(None if out is None else os.fspath(out))
        return path

    def resume(self, overrides: Optional[Dict[str, Any]] = None, progress: bool = True) -> "Run":
        """Trains the run further (``overrides`` of its resumable keys, e.g. ``{"train.epochs": N}``)."""
        bar = _Progress(progress)
        try:
            _native.resume(self.path, _override_strings(overrides), bar)
        finally:
            bar.close()
        self._native = _native.NativeRun(self.path)
        return self


class ActivationCache(dict):
    """Activations by full hook name; also indexed by TransformerLens shorthands:
    ``cache["pattern", 0]``, ``cache["resid_pre", 1]``, ``cache["post", -1, "mlp"]``, ``cache["embed"]``."""

    def __init__(self, values: Dict[str, np.ndarray], model: "Model"):
        super().__init__(values)
        self._model = model

    def __getitem__(self, key):
        if isinstance(key, str) and dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        if isinstance(key, tuple):
            name = self._model._native.resolve(key[0], *[k for k in key[1:]])
        else:
            name = self._model._native.resolve(key)
        return dict.__getitem__(self, name)


class Model:
    """A model of any family (``transformer``, ``mlp``, ``bitnet``) with its parameters."""

    def __init__(self, native):
        self._native = native

    def __repr__(self) -> str:
        return f"groklens.Model(family={self.family!r})"

    @staticmethod
    def from_state_dict(cfg: Dict[str, Any], state_dict: Dict[str, Any]) -> "Model":
        """A model of ``cfg`` (as :attr:`Model.cfg` gives it) from ``state_dict``: name → numpy
        array or torch tensor under the run's state-dict names."""
        arrays = {}
        for name, value in state_dict.items():
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            arrays[name] = np.ascontiguousarray(value, dtype=np.float32)
        return Model(_native.NativeModel.from_state_dict(json.dumps(cfg), arrays))

    @property
    def family(self) -> str:
        return self._native.family()

    @property
    def cfg(self) -> Dict[str, Any]:
        """The model config (the family's fields and ``family``)."""
        return json.loads(self._native.cfg_json())

    @property
    def model_config(self) -> Dict[str, Any]:
        """``model_config.json``: for a transformer, ``HookedTransformerConfig(**model_config)``."""
        return json.loads(self._native.model_config_json())

    @property
    def params(self) -> Dict[str, np.ndarray]:
        """Every parameter by the run's state-dict names."""
        return self._native.params()

    @property
    def hook_names(self) -> List[str]:
        return list(self._native.hook_names())

    def forward(self, tokens) -> np.ndarray:
        """Logits ``[batch, pos, d_vocab_out]`` of ``tokens`` (``[batch, pos]`` integers)."""
        return self._native.forward(np.asarray(tokens, dtype=np.int64))

    __call__ = forward

    def run_with_cache(self, tokens, names: Optional[Sequence[str]] = None):
        """``(logits, cache)``: the activations of ``names`` (full names or shorthands; all by default),
        each a read-only numpy view of the buffer the model wrote (no copy)."""
        logits, values = self._native.run_with_cache(
            np.asarray(tokens, dtype=np.int64), None if names is None else list(names)
        )
        return logits, ActivationCache(values, self)

    def to_transformer_lens(self, device: str = "cpu"):
        """This transformer as a TransformerLens ``HookedTransformer`` (2.x/3.x) or
        ``TransformerBridge`` (4.x, with a warning saying what differs), same logits."""
        from .interop import to_transformer_lens

        return to_transformer_lens(self, device)

    @staticmethod
    def from_transformer_lens(tl_model) -> "Model":
        """A groklens model with the weights of a TransformerLens ``HookedTransformer``."""
        from .interop import from_transformer_lens

        return from_transformer_lens(tl_model)

    def state_dict(self, complete: bool = True):
        """The parameters as torch tensors (copies) under the run's names: TransformerLens's for a
        transformer, the seed classes' (``net.0.weight``…, ``transformer.layers.0.to_qkv.0.layer.weight``…)
        for the MLP and BitNet. With ``complete``, BitNet's dict also holds the tensors the seed's
        class keeps but never reads (each BitLinear's outer ``weight`` as zeros, the ternary layers'
        ``layer.norm`` at LayerNorm's defaults), so ``load_state_dict(strict=True)`` accepts it."""
        import torch

        out = {name: torch.from_numpy(np.array(value)) for name, value in self.params.items()}
        if complete:
            for name, shape, fill in self._native.seed_only_tensors():
                out[name] = torch.full(tuple(shape), float(fill), dtype=torch.float32)
        return out

    def process_weights(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
    ) -> "Model":
        """TransformerLens's weight processing, as a new model (transformers): fold LayerNorm into the
        next weights (LN becomes LNPre), centre the weights writing to the residual stream and the
        unembedding, fold the value biases into the output bias. Predictions are unchanged."""
        return Model(
            self._native.process_weights(fold_ln, center_writing_weights, center_unembed, fold_value_biases)
        )

    def _circuit(self, kind: str, layer: int, head: int, mlp_layer=None, factored: bool = False):
        a, b = self._native.circuit(kind, int(layer), int(head), mlp_layer)
        return (a, b) if factored else a @ b

    def qk_circuit(self, layer: int, head: int, factored: bool = False):
        """``W_Q[h] @ W_K[h].T`` (``d_model × d_model``); ``factored`` gives the factors ``(A, B)``."""
        return self._circuit("qk", layer, head, factored=factored)

    def ov_circuit(self, layer: int, head: int, factored: bool = False):
        """``W_V[h] @ W_O[h]`` (``d_model × d_model``)."""
        return self._circuit("ov", layer, head, factored=factored)

    def full_qk_circuit(self, layer: int, head: int, factored: bool = False):
        """``W_E @ QK @ W_E.T`` (``d_vocab × d_vocab``: query token rows, key token columns)."""
        return self._circuit("full_qk", layer, head, factored=factored)

    def full_ov_circuit(self, layer: int, head: int, factored: bool = False):
        """``W_E @ OV @ W_U`` (``d_vocab × d_vocab_out``): attending to a token, per output logit."""
        return self._circuit("full_ov", layer, head, factored=factored)

    def ov_to_neurons(self, layer: int, head: int, mlp_layer: Optional[int] = None, factored: bool = False):
        """``W_E @ OV @ W_in`` (``d_vocab × d_mlp``) into block ``mlp_layer`` (default: ``layer``)."""
        return self._circuit("ov_to_neurons", layer, head, mlp_layer, factored=factored)

    def run_with_hooks(self, tokens, fwd_hooks: Iterable[Tuple[str, Callable]] = ()) -> np.ndarray:
        """Logits with ``fwd_hooks``: ``fn(activation, name)`` gets a writable copy of the activation
        and may change it in place (returning ``None``) or return a replacement of the same shape;
        the model continues with what it leaves, as in TransformerLens."""
        hooks = [(self._native.resolve(name) if not isinstance(name, tuple) else self._native.resolve(*name), fn)
                 for name, fn in fwd_hooks]
        return self._native.run_with_hooks(np.asarray(tokens, dtype=np.int64), hooks)
