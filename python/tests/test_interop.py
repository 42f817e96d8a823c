"""Moving models between groklens and the installed TransformerLens (run once under 2.18, where
this gives a HookedTransformer, and once under 4.3, where it gives a TransformerBridge)."""

import os
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl = model.to_transformer_lens()
    # Change the weights on the TransformerLens side; the groklens model must follow them.
    state = tl.state_dict()
    key = "blocks.0.attn.W_Q" if transformer_lens_major() <= 3 else "blocks.0.attn.q.weight"
    state[key] = state[key] * 0.5
    tl.load_state_dict(state)
    back = groklens.Model.from_transformer_lens(tl)
    with torch.no_grad():
        theirs = tl(torch.from_numpy(tokens)).numpy()
    assert np.abs(back.forward(tokens) - theirs).max() < 1e-4
    assert not np.allclose(back.forward(tokens), model.forward(tokens))
    assert np.allclose(back.params["blocks.0.attn.W_Q"], 0.5 * model.params["blocks.0.attn.W_Q"])
    assert np.array_equal(back.params["unembed.W_U"], model.params["unembed.W_U"])
    with pytest.raises(groklens.GrokError, match="not a TransformerLens model"):
        groklens.Model.from_transformer_lens(torch.nn.Linear(2, 2))


def seed_fourier_basis(p):
    """Seed 000's Fourier basis, as its notebook builds it (on the CPU)."""
    fourier_basis = [torch.ones(p)]
    for freq in range(1, p // 2 + 1):
        fourier_basis.append(torch.sin(torch.arange(p) * 2 * torch.pi * freq / p))
        fourier_basis.append(torch.cos(torch.arange(p) * 2 * torch.pi * freq / p))
    fourier_basis = torch.stack(fourier_basis, dim=0)
    return fourier_basis / fourier_basis.norm(dim=-1, keepdim=True)


def test_an_imported_transformer_lens_model_gets_the_seeds_fourier_findings(tmp_path):
    # A grokked model, handed to TransformerLens and brought back as a run of its own.
    trained = groklens.train(preset="quick", out=str(tmp_path / "grokked"), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl = trained.model().to_transformer_lens()
    run = groklens.import_run(groklens.Model.from_transformer_lens(tl), task="quick", out=str(tmp_path / "imported"))
    ours = run.analyze()
    assert ours["kind"] == "modular" and run.metrics["test_acc"][0] > 0.99

    # Seed 000's own code, in TransformerLens, on the same weights.
    p = run.config["task"]["p"]
    fourier_basis = seed_fourier_basis(p)
    with torch.no_grad():
        W_E = tl.W_E[:-1]
        norms = (fourier_basis @ W_E).norm(dim=-1)
        a = torch.arange(p)[:, None].expand(p, p).reshape(-1)
        b = torch.arange(p)[None, :].expand(p, p).reshape(-1)
        dataset = torch.stack([a, b, torch.full_like(a, p)], dim=1)
        _, cache = tl.run_with_cache(dataset)
        neuron_acts = cache["post", 0, "mlp"][:, -1, :]
        fourier_neuron_acts = fourier_basis @ neuron_acts.T.reshape(-1, p, p) @ fourier_basis.T
        fourier_neuron_acts[:, 0, 0] = 0.0
        neuron_freq_norm = torch.zeros(p // 2, neuron_acts.shape[1])
        for freq in range(0, p // 2):
            for x in [0, 2 * (freq + 1) - 1, 2 * (freq + 1)]:
                for y in [0, 2 * (freq + 1) - 1, 2 * (freq + 1)]:
                    neuron_freq_norm[freq] += fourier_neuron_acts[:, x, y] ** 2
        neuron_freq_norm = neuron_freq_norm / fourier_neuron_acts.pow(2).sum(dim=[-1, -2])[None, :]
    # Per-frequency norms, and the frequencies that stand out (the largest ratio between consecutive
    # sorted norms, a quarter of the frequencies deep: what a reader of the seed's plot picks).
    freq_norms = torch.sqrt(norms[1::2] ** 2 + norms[2::2] ** 2).numpy()
    assert np.allclose(ours["freq_norms"], freq_norms, rtol=1e-4, atol=1e-5)
    order = np.argsort(-freq_norms)
    depth = max(1, min((len(freq_norms) + 3) // 4, len(freq_norms) - 1))
    cut = 1 + int(np.argmax([freq_norms[order[m - 1]] / freq_norms[order[m]] for m in range(1, depth + 1)]))
    assert ours["key_freqs"] == sorted(int(k) + 1 for k in order[:cut])
    # Clusters: the neurons a frequency explains more than 0.85 of (seed 000's "neurons_17" cut).
    best = neuron_freq_norm.max(dim=0)
    seed_clusters = {}
    for n in range(neuron_acts.shape[1]):
        if best.values[n] > 0.85:
            seed_clusters.setdefault(int(best.indices[n]) + 1, []).append(n)
    assert dict((f, list(ns)) for f, ns in ours["clusters"]) == seed_clusters
    assert seed_clusters, "a grokked model has clustered neurons"


class SeedMlp(torch.nn.Module):
    """Seed 002's MLP, as its notebook defines it (Rearrange written as Flatten)."""

    def __init__(self, vocab):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Embedding(vocab, 128),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 128, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, vocab),
        )

    def forward(self, x):
        return self.net(x)


def test_an_mlp_state_dict_loads_into_the_seeds_class(tmp_path):
    run = groklens.train(preset="seed-002", out=str(tmp_path / "m"), overrides={"train.epochs": 3}, progress=False)
    model = run.model()
    seed = SeedMlp(model.cfg["d_vocab"])
    seed.load_state_dict(model.state_dict(), strict=True)
    tokens = run.split()["test_tokens"][:32]
    with torch.no_grad():
        theirs = seed(torch.from_numpy(tokens)).numpy()
    assert np.abs(model.forward(tokens).reshape(theirs.shape) - theirs).max() < 1e-4


class BitLinear(torch.nn.Linear):
    """The module layout of the seed's BitLinear (fixtures README): an outer, unused weight and the
    inner ``layer`` whose centred weight is binarized (sign) or ternarized (absmean) in the forward."""

    def __init__(self, fan_in, fan_out, ternary):
        super().__init__(fan_in, fan_out, bias=False)
        self.layer = torch.nn.Linear(fan_in, fan_out, bias=False)
        if ternary:
            self.layer.norm = torch.nn.LayerNorm(fan_in)
        self.ternary = ternary

    def forward(self, x):
        c = self.layer.weight - self.layer.weight.mean()
        if self.ternary:
            g = c.abs().mean().clamp(min=1e-5)
            w = (c / g).round().clamp(-1, 1) * g
        else:
            w = torch.sign(c)
        return x @ w.T


class SeedBitNet(torch.nn.Module):
    """Seed 004's BitNetTransformer at depth 1, from the fixtures README's description."""

    def __init__(self, d_vocab, d_out, dim, heads, ternary):
        super().__init__()
        self.emb = torch.nn.Embedding(d_vocab, dim)
        self.transformer = torch.nn.Module()
        layer = torch.nn.Module()
        layer.to_qkv = torch.nn.ModuleList([BitLinear(dim, dim, ternary) for _ in range(3)])
        layer.to_out = BitLinear(dim, dim, ternary)
        ffn = torch.nn.Module()
        ffn.layer1, ffn.layer2 = BitLinear(dim, 4 * dim, ternary), BitLinear(4 * dim, dim, ternary)
        self.transformer.layers = torch.nn.ModuleList([layer])
        self.transformer.ffn_layers = torch.nn.ModuleList([ffn])
        norm = torch.nn.Module()
        norm.gamma = torch.nn.Parameter(torch.ones(dim))
        self.to_logits = torch.nn.Sequential(norm, torch.nn.Linear(dim, d_out, bias=False))
        self.dim, self.heads = dim, heads

    def forward(self, tokens):
        x = self.emb(tokens)
        layer, ffn = self.transformer.layers[0], self.transformer.ffn_layers[0]
        q, k, v = (m(x) for m in layer.to_qkv)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        pattern = (q @ k.transpose(-1, -2) * self.dim**-0.5).softmax(-1)
        z = (pattern @ v).transpose(1, 2).reshape(x.shape)
        x = layer.to_out(z) + x
        x = ffn.layer2(torch.relu(ffn.layer1(x))) + x
        x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12) * self.to_logits[0].gamma * self.dim**0.5
        return self.to_logits[1](x)


@pytest.mark.parametrize("preset", ["quick-bitnet-binary", "quick-bitnet-ternary"])
def test_a_bitnet_state_dict_loads_strictly_into_the_seeds_module_layout(tmp_path, preset):
    run = groklens.train(preset=preset, out=str(tmp_path / "b"), overrides={"train.epochs": 3}, progress=False)
    model = run.model()
    cfg = model.cfg
    ternary = cfg["quant"] == "ternary"
    seed = SeedBitNet(cfg["d_vocab"], cfg["d_vocab_out"], cfg["d_model"], cfg["n_heads"], ternary)
    seed.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        seed.load_state_dict(model.state_dict(complete=False), strict=True)
    tokens = run.split()["test_tokens"][:32]
    with torch.no_grad():
        theirs = seed(torch.from_numpy(tokens)).numpy()
    assert np.abs(model.forward(tokens) - theirs).max() < 1e-3


def test_other_families_are_refused_by_name(tmp_path):
    mlp = groklens.train(
        preset="quick-mlp", out=str(tmp_path / "m"), overrides={"train.epochs": 5}, progress=False
    ).model()
    with pytest.raises(groklens.GrokError, match="model.family = mlp"):
        mlp.to_transformer_lens()


def test_the_readme_quick_start_runs(tmp_path, monkeypatch):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme[readme.index("## Python") :]
    block = section[section.index("```python\n") + len("```python\n") :]
    block = block[: block.index("```")]
    assert "to_transformer_lens()" in block and "run_with_cache" in block
    monkeypatch.chdir(tmp_path)
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, "README.md (Python quick start)", "exec"), scope)
    assert scope["run"].finished and os.path.exists(tmp_path / "runs" / "quick" / "report.html")
    assert not np.allclose(scope["patched"], scope["logits"])
