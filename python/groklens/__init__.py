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

import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _native
from ._native import GrokError

__all__ = [
    "GrokError",
    "Model",
    "Run",
    "ActivationCache",
    "open",
    "preset",
    "presets",
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

    def report(self) -> str:
        """Writes ``report.html`` in the run directory and returns its path."""
        path, _text = self._native.report()
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
        """``(logits, cache)``: the activations of ``names`` (full names or shorthands; all by default)."""
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

    def run_with_hooks(self, tokens, fwd_hooks: Iterable[Tuple[str, Callable]] = ()) -> np.ndarray:
        """Logits with ``fwd_hooks``: ``fn(activation, name)`` may return a replacement array of the
        same shape (or ``None`` to keep it)."""
        hooks = [(self._native.resolve(name) if not isinstance(name, tuple) else self._native.resolve(*name), fn)
                 for name, fn in fwd_hooks]
        return self._native.run_with_hooks(np.asarray(tokens, dtype=np.int64), hooks)
