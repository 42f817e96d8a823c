"""Moving transformer models between groklens and TransformerLens: a ``HookedTransformer`` under
TransformerLens 2.x/3.x, a ``TransformerBridge`` under 4.x (which removed ``HookedTransformer``).

Both directions check themselves: the converted model's logits must equal the source's on a probe
batch, so an architecture feature one side lacks is an error, never a silently different model.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any, Dict

import numpy as np

from . import _native
from ._native import GrokError

if TYPE_CHECKING:  # pragma: no cover
    from . import Model

#: What differs in TransformerLens 4.x's native ``TransformerBridge`` from 2.x's ``HookedTransformer``.
TL4_DIFFERENCES = (
    "TransformerLens 4.x: blocks.L.attn.hook_attn_scores fires on the post-softmax pattern for native "
    "models (equal to hook_pattern, masked entries 0 instead of -inf); enable_compatibility_mode() with "
    "its defaults applies center_unembed, which shifts every logit row by a constant."
)

#: Logits of the two sides may differ by this much (f32 matmuls in another order).
TOLERANCE = 1e-4


def transformer_lens_major() -> int:
    """The installed TransformerLens's major version (ImportError without it)."""
    import transformer_lens

    version = getattr(transformer_lens, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("transformer-lens")
    return int(str(version).split(".")[0])


def _probe_tokens(model_config: Dict[str, Any]) -> np.ndarray:
    """A small deterministic batch of valid tokens for the logit check."""
    rng = np.random.default_rng(0)
    n_ctx = int(model_config["n_ctx"])
    return rng.integers(0, int(model_config["d_vocab"]), size=(4, n_ctx), dtype=np.int64)


def _check_same(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    diff = float(np.max(np.abs(ours - theirs)))
    if not np.isfinite(diff) or diff > TOLERANCE:
        raise GrokError(
            f"{what}: logits differ by {diff:.3g} (> {TOLERANCE}): the model uses a feature the "
            "other side does not implement the same way"
        )


def to_transformer_lens(model: "Model", device: str = "cpu"):
    """``model`` (transformer family) as a TransformerLens model with the same weights and logits."""
    import torch

    if model.family != "transformer":
        raise GrokError(
            f"model.family = {model.family}: only transformers have a TransformerLens form; "
            "use model.state_dict() for the seed's PyTorch class"
        )
    cfg = model.model_config
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.params.items()}
    major = transformer_lens_major()
    if major <= 3:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        tl = HookedTransformer(HookedTransformerConfig(**cfg))
        missing, unexpected = tl.load_state_dict(state, strict=False)
        buffers = [k for k in missing if k.endswith(("attn.mask", "attn.IGNORE"))]
        if unexpected or len(buffers) != len(missing):
            raise GrokError(
                f"TransformerLens {major}.x rejected the weights: missing {sorted(set(missing) - set(buffers))}, "
                f"unexpected {sorted(unexpected)}"
            )
    else:
        from transformer_lens import TransformerBridge, TransformerBridgeConfig
        from transformer_lens.conversion_utils import convert_tl_checkpoint

        tl = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg))
        tl.load_state_dict(convert_tl_checkpoint(state, tl.cfg), strict=True)
        warnings.warn(TL4_DIFFERENCES, stacklevel=2)
    tl = tl.to(device).eval()
    tokens = _probe_tokens(cfg)
    with torch.no_grad():
        theirs = tl(torch.from_numpy(tokens).to(device)).float().cpu().numpy()
    _check_same(model.forward(tokens), theirs, f"TransformerLens {major}.x")
    return tl


#: The ``HookedTransformerConfig`` keys that make a groklens transformer's ``model_config``.
_CONFIG_KEYS = (
    "d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "d_vocab", "d_vocab_out",
    "act_fn", "normalization_type", "attn_only", "positional_embedding_type", "seed", "eps",
)


def _tl2_state_from_bridge(bridge, shapes) -> Dict[str, Any]:
    """The TransformerLens 2.x state dict of a 4.x ``TransformerBridge``: the inverse of
    ``convert_tl_checkpoint``, found by tracing. Every 2.x tensor is filled with its elements' global
    indices and converted; each converted element then names the 2.x element it came from, so the
    bridge's weights can be put back in place whatever the conversion transposes or splits."""
    import torch
    from transformer_lens.conversion_utils import convert_tl_checkpoint

    traced, offset = {}, 1
    for name, shape in shapes:
        n = int(np.prod(shape))
        traced[name] = torch.arange(offset, offset + n, dtype=torch.float32).reshape(shape)
        offset += n
    if offset >= 2**24:
        raise GrokError(f"from_transformer_lens: {offset - 1} weights are too many to trace in float32")
    converted = convert_tl_checkpoint(traced, bridge.cfg)
    theirs = bridge.state_dict()
    flat = torch.full((offset,), float("nan"))
    for key, idx in converted.items():
        if key not in theirs:
            continue
        idx = idx.detach().reshape(-1)
        if not torch.equal(idx, idx.round()) or idx.min() < 0 or idx.max() >= offset:
            raise GrokError(
                f"from_transformer_lens: TransformerLens's conversion of {key} is not a rearrangement "
                "of the 2.x weights; this bridge cannot be read back"
            )
        picked = idx > 0
        flat[idx[picked].long()] = theirs[key].detach().float().reshape(-1)[picked]
    state, offset = {}, 1
    for name, shape in shapes:
        n = int(np.prod(shape))
        values = flat[offset : offset + n]
        if torch.isnan(values).any():
            raise GrokError(f"from_transformer_lens: the bridge holds no weights for {name}")
        state[name] = values.reshape(shape).numpy()
        offset += n
    return state


def from_transformer_lens(tl_model) -> "Model":
    """A groklens model with the weights of a TransformerLens 2.x/3.x ``HookedTransformer`` or a 4.x
    ``TransformerBridge`` of a native (``boot_native``) model."""
    import torch

    from . import Model

    kind = type(tl_model).__name__
    if kind not in ("HookedTransformer", "TransformerBridge") or not hasattr(tl_model.cfg, "to_dict"):
        raise GrokError(
            f"from_transformer_lens: a {kind} is not a TransformerLens model; pass a HookedTransformer "
            "(2.x/3.x) or a TransformerBridge (4.x)"
        )
    raw = tl_model.cfg.to_dict()
    model_config = {k: raw[k] for k in _CONFIG_KEYS if k in raw and raw[k] is not None}
    cfg = json.loads(_native.model_config_to_cfg(json.dumps(model_config, default=str)))
    if kind == "HookedTransformer":
        state = {k: v for k, v in tl_model.state_dict().items() if not k.endswith(("attn.mask", "attn.IGNORE"))}
    else:
        state = _tl2_state_from_bridge(tl_model, _native.param_shapes(json.dumps(cfg)))
    model = Model.from_state_dict(cfg, state)
    tokens = _probe_tokens(model.model_config)
    with torch.no_grad():
        theirs = tl_model(torch.from_numpy(tokens)).float().cpu().numpy()
    _check_same(model.forward(tokens), theirs, "from_transformer_lens")
    return model
