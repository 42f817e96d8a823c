"""Seed 004's BitNet training epoch in plain PyTorch eager, timed on this machine (the reference for
`groklens bench --preset bitnet-binary` / `bitnet-ternary`).

The model is written here from the description in ../shared/fixtures/README.md (seed 004's
`BitNetTransformer(dim=128, depth=1, heads=4, in_features=114, out_features=113)`): no positional
embedding, no mask, scores scaled by 128^-0.5, `attn(emb) + emb` then `ffn(x) + x`, RMSNorm
(l2-normalise · gamma · √128) and a full-precision unembedding; every BitLinear centres its weight and
binarizes (sign) or ternarizes (absmean round-clip) it with a straight-through gradient, every forward.
Like the seed's classes it computes every position, keeps the attention pattern and FFN activations of
each forward in a cache, and holds the unused outer weights of its BitLinear wrappers.

One epoch = the notebook's loop: a full-batch forward over the 3 830 train rows, f64 cross-entropy at the
last position, backward, AdamW step, zero_grad, then the forward over the 8 939 test rows and its loss
under inference_mode. Usage:

    bench/reference/venv/bin/python bench/reference/seed004_bitnet.py [--mode binary] [--threads 2] [--epochs 30]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BitLinear(nn.Module):
    """A bias-free linear layer whose used weight (`layer.weight`) is centred and quantized."""

    def __init__(self, d_in, d_out, mode):
        super().__init__()
        self.mode = mode
        self.weight = nn.Parameter(torch.empty(d_out, d_in))  # unused, as in the seed's wrapper
        self.layer = nn.Linear(d_in, d_out, bias=False)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def quantized(self):
        c = self.layer.weight - self.layer.weight.mean()
        if self.mode == "binary":
            q = torch.sign(c)
        else:
            scale = 1.0 / c.abs().mean().clamp(min=1e-5)
            q = (c * scale).round().clamp(-1, 1) / scale
        return (q - c).detach() + c  # straight-through

    def forward(self, x):
        return F.linear(x, self.quantized())


class Model(nn.Module):
    def __init__(self, mode, d=128, heads=4, d_mlp=512, vocab=114, out=113):
        super().__init__()
        self.heads, self.scale = heads, d ** -0.5
        self.emb = nn.Embedding(vocab, d)
        self.qkv = nn.ModuleList([BitLinear(d, d, mode) for _ in range(3)])
        self.o = BitLinear(d, d, mode)
        self.ff1, self.ff2 = BitLinear(d, d_mlp, mode), BitLinear(d_mlp, d, mode)
        self.gamma = nn.Parameter(torch.ones(d))
        self.unembed = nn.Linear(d, out, bias=False)
        self.cache = {}

    def forward(self, tokens):
        x = self.emb(tokens)
        b, n, d = x.shape
        q, k, v = (l(x).view(b, n, self.heads, -1).transpose(1, 2) for l in self.qkv)
        pattern = (torch.einsum("bhid,bhjd->bhij", q, k) * self.scale).softmax(-1)
        self.cache["pattern"] = pattern.detach()
        z = torch.einsum("bhij,bhjd->bhid", pattern, v).transpose(1, 2).reshape(b, n, d)
        x = self.o(z) + x
        pre = self.ff1(x)
        post = F.relu(pre)
        self.cache["pre"], self.cache["post"] = pre.detach(), post.detach()
        x = self.ff2(post) + x
        x = F.normalize(x, dim=-1) * self.gamma * d ** 0.5
        return self.unembed(x)


def loss_fn(logits, labels):
    logits = logits[:, -1].to(torch.float64)
    return -logits.log_softmax(-1).gather(-1, labels[:, None])[:, 0].mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["binary", "ternary"], default="binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = 113
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    data = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = (a + b) % p
    torch.manual_seed(598)
    perm = torch.randperm(p * p)
    cut = int(0.3 * p * p)
    train, test = perm[:cut], perm[cut:]
    torch.manual_seed(999)
    model = Model(args.mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    times = []
    for _ in range(args.epochs + 3):
        t0 = time.perf_counter()
        loss = loss_fn(model(data[train]), labels[train])
        loss.backward()
        loss.item()
        opt.step()
        opt.zero_grad()
        with torch.inference_mode():
            loss_fn(model(data[test]), labels[test]).item()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[3:])
    print(
        f"seed 004 BitNet ({args.mode}), torch {torch.__version__}, {args.threads} thread(s): "
        f"{1e3 * med:.1f} ms/epoch (median of {args.epochs} after 3 warm-up epochs; "
        f"train rows {len(train)}, test rows {len(test)})"
    )


if __name__ == "__main__":
    main()
