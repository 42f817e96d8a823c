"""Moving models between groklens and the installed TransformerLens (run once under 2.18, where
this gives a HookedTransformer, and once under 4.3, where it gives a TransformerBridge)."""

import warnings

import numpy as np
import pytest
import torch

import groklens
from groklens.interop import TL4_DIFFERENCES, transformer_lens_major

SMALL = {
    "train.epochs": 200,
    "train.stop_at_test_acc": 0.0,
    "model.d_model": 32,
    "model.d_head": 8,
    "model.d_mlp": 64,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("interop") / "r"
    return groklens.train(preset="quick", out=str(out), overrides=SMALL, progress=False)


def test_to_transformer_lens_gives_the_same_logits_and_activations(run):
    model = run.model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl = model.to_transformer_lens()
    major = transformer_lens_major()
    if major >= 4:
        assert type(tl).__name__ == "TransformerBridge"
        assert any(TL4_DIFFERENCES in str(w.message) for w in caught), "4.x differences not said"
    else:
        assert type(tl).__name__ == "HookedTransformer"
    tokens = run.split()["test_tokens"][:64]
    ours = model.forward(tokens)
    with torch.no_grad():
        theirs = tl(torch.from_numpy(tokens)).numpy()
    assert np.abs(ours - theirs).max() < 1e-4
    _, cache = model.run_with_cache(tokens)
    _, tl_cache = tl.run_with_cache(torch.from_numpy(tokens))
    for name, act in cache.items():
        assert name in tl_cache, f"{name} missing from TransformerLens {major}.x's cache"
        if major >= 4 and name.endswith("hook_attn_scores"):
            # 4.x fires it on the pattern (TL4_DIFFERENCES).
            assert np.allclose(tl_cache[name].numpy(), cache[name.replace("attn_scores", "pattern")], atol=1e-5)
            continue
        theirs = tl_cache[name].numpy()
        diff = np.where(act == theirs, 0.0, np.abs(act - theirs))  # masked scores are -inf on both
        assert diff.max() < 1e-4, name


def test_a_transformer_lens_model_comes_back_unchanged(run):
    model = run.model()
    tokens = run.split()["test_tokens"][:16]
    if transformer_lens_major() >= 4:
        with pytest.raises(groklens.GrokError, match="HookedTransformer"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                groklens.Model.from_transformer_lens(model.to_transformer_lens())
        return
    tl = model.to_transformer_lens()
    # Change the weights on the TransformerLens side; the groklens model must follow them.
    with torch.no_grad():
        tl.blocks[0].attn.W_Q.mul_(0.5)
    back = groklens.Model.from_transformer_lens(tl)
    with torch.no_grad():
        theirs = tl(torch.from_numpy(tokens)).numpy()
    assert np.abs(back.forward(tokens) - theirs).max() < 1e-4
    assert not np.allclose(back.forward(tokens), model.forward(tokens))


def test_other_families_are_refused_by_name(tmp_path):
    mlp = groklens.train(
        preset="quick-mlp", out=str(tmp_path / "m"), overrides={"train.epochs": 5}, progress=False
    ).model()
    with pytest.raises(groklens.GrokError, match="model.family = mlp"):
        mlp.to_transformer_lens()
