"""Writes tests/fixtures/torch_rng.safetensors: what PyTorch's CPU generator produces for the calls
groklens reproduces (randperm, randn/normal_, uniform_, nn.Linear/nn.Embedding/kaiming init, random_split,
DataLoader shuffling, TransformerLens's init of the grokking demo). The test suite reads the file;
it never runs Python.

    python3 -m venv bench/reference/venv
    bench/reference/venv/bin/pip install torch safetensors "transformer-lens==2.18.0" "pyarrow==21.*"
    bench/reference/venv/bin/python bench/reference/torch_rng_vectors.py

Long tensors are stored as their first 64 values plus a checksum: Σ (bits(x_i) + 1)·(i + 1) over
all elements, wrapping in u64 (bits = the f32 bit pattern, or the integer itself)."""
import math, os, sys
import numpy as np
import torch
from safetensors.torch import save_file

torch.set_num_threads(1)
out = {}
HEAD = 64


def checksum(t):
    a = t.detach().contiguous().view(-1)
    if a.dtype == torch.float32:
        bits = a.view(torch.int32).numpy().view(np.uint32).astype(np.uint64)
    else:
        bits = a.numpy().astype(np.int64).view(np.uint64)
    i = np.arange(1, len(bits) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        s = np.sum((bits + np.uint64(1)) * i, dtype=np.uint64)
    return torch.tensor([int(s)], dtype=torch.uint64).view(torch.int64)


def put(name, t, full=False):
    t = t.detach().contiguous()
    if full:
        out[name] = t.clone()
    else:
        out[name + ".head"] = t.view(-1)[:HEAD].clone()
        out[name + ".checksum"] = checksum(t)
        out[name + ".numel"] = torch.tensor([t.numel()], dtype=torch.int64)


# randperm after manual_seed, and the generator's state after it (the next randn).
for seed, n in [(598, 12769), (598, 9409), (0, 9409), (21, 961), (7, 1), (7, 2)]:
    torch.manual_seed(seed)
    put(f"randperm.{seed}.{n}", torch.randperm(n))
    put(f"randperm.{seed}.{n}.then_randn32", torch.randn(32), full=True)

# randn of sizes 1..17 and some not divisible by 16, drawn in sequence (scalar path, cached sample).
torch.manual_seed(1234)
for n in list(range(1, 18)) + [31, 33, 100, 1000]:
    put(f"randn.seq1234.{n}", torch.randn(n), full=True)

# normal_ with mean/std on both paths, uniform_, kaiming, nn.Linear, nn.Embedding.
torch.manual_seed(5)
for n, m, s in [(64, 0.5, 2.0), (37, -1.25, 0.3), (5, 3.0, 0.7)]:
    put(f"normal.seq5.{n}", torch.empty(n).normal_(m, s), full=True)
torch.manual_seed(3)
put("uniform.seq3.1000", torch.empty(1000).uniform_(-0.3, 0.3))
put("uniform.seq3.77", torch.empty(77).uniform_(0.0, 1.0), full=True)
torch.manual_seed(11)
w = torch.empty(256, 128); torch.nn.init.kaiming_normal_(w, nonlinearity="relu"); put("kaiming_normal_relu.seq11.256x128", w)
torch.manual_seed(42)
emb = torch.nn.Embedding(99, 128)
lin1 = torch.nn.Linear(512, 128)
lin2 = torch.nn.Linear(128, 99)
small = torch.nn.Linear(3, 2)
put("modules42.embedding", emb.weight)
put("modules42.linear1.weight", lin1.weight)
put("modules42.linear1.bias", lin1.bias, full=True)
put("modules42.linear2.weight", lin2.weight)
put("modules42.linear2.bias", lin2.bias, full=True)
put("modules42.small.weight", small.weight, full=True)
put("modules42.small.bias", small.bias, full=True)

# Seed 002: random_split(9409 rows, [0.8, 0.2]) and both DataLoaders on one generator, 3 epochs.
g = torch.Generator().manual_seed(21)
train, val = torch.utils.data.random_split(range(9409), [0.8, 0.2], generator=g)
put("seed002.train", torch.tensor(train.indices))
put("seed002.val", torch.tensor(val.indices))
tl = torch.utils.data.DataLoader(train, batch_size=512, shuffle=True, generator=g)
vl = torch.utils.data.DataLoader(val, batch_size=512, shuffle=True, generator=g)
for epoch in range(3):
    put(f"seed002.epoch{epoch}.train_order", torch.cat([b for b in tl]))
    put(f"seed002.epoch{epoch}.val_order", torch.cat([b for b in vl]))

# Seed 002's MLP built after manual_seed(0): construction draws, then kaiming_normal_ on the Linears.
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Embedding(99, 128), torch.nn.Flatten(), torch.nn.Linear(512, 128),
                          torch.nn.ReLU(), torch.nn.Linear(128, 99))
for layer in net:
    if isinstance(layer, torch.nn.Linear):
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        torch.nn.init.zeros_(layer.bias)
for k, v in net.state_dict().items():
    put(f"seed002_mlp0.{k}", v)

# TransformerLens's grokking demo model after seed 999 (the notebook's config).
try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    cfg = HookedTransformerConfig(n_layers=1, n_heads=4, d_model=128, d_head=32, d_mlp=512, act_fn="relu",
                                  normalization_type=None, d_vocab=114, d_vocab_out=113, n_ctx=3,
                                  init_weights=True, device="cpu", seed=999)
    model = HookedTransformer(cfg)
    for k, v in model.state_dict().items():
        if v.dtype == torch.float32:
            put(f"tl_demo999.{k}", v)
    # The demo's split (data seed 598) and its epoch-0 train loss.
    p = 113
    a = torch.arange(p).repeat_interleave(p); b = torch.arange(p).repeat(p)
    data = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = (a + b) % p
    torch.manual_seed(598)
    idx = torch.randperm(p * p); cut = int(p * p * 0.3)
    train_idx = idx[:cut]
    for param in model.parameters():
        param.requires_grad_(False)
    logits = model(data[train_idx])[:, -1].to(torch.float64)
    loss = torch.nn.functional.cross_entropy(logits, labels[train_idx])
    out["tl_demo999.epoch0_train_loss"] = loss.reshape(1)
    print("epoch-0 train loss", loss.item(), "first train rows", data[train_idx[:5], :2].tolist())
except ImportError:
    print("transformer_lens not installed: the TransformerLens vectors are left out", file=sys.stderr)

path = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "torch_rng.safetensors")
save_file(out, path, metadata={"torch": torch.__version__})
print("wrote", len(out), "tensors to", os.path.normpath(path))
