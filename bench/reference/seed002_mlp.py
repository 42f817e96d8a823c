"""Seed 002's MLP training epoch in plain PyTorch eager, timed on this machine (the reference for
`groklens bench --preset seed-002`).

One epoch = the seed's loop: 15 minibatches of 512 from a shuffling DataLoader (forward, f64
cross-entropy, backward, AdamW step, accuracy), the validation pass over 4 minibatches and the output
layer's spectral norm, as the notebook computes them. Usage:

    bench/reference/venv/bin/python bench/reference/seed002_mlp.py [--threads 2] [--epochs 30]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split


class Rearrange(nn.Module):
    """einops' `batch token d_model -> batch (token d_model)`."""

    def forward(self, x):
        return x.flatten(1)


class MLP(nn.Module):
    def __init__(self, vocab=99):
        super().__init__()
        self.net = nn.Sequential(
            nn.Embedding(vocab, 128), Rearrange(), nn.Linear(4 * 128, 128), nn.ReLU(),
            nn.Linear(128, vocab))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.net(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = 97
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    y = (a + b) % p
    features = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], dim=-1)
    y_ohe = F.one_hot(y, p + 2).to(torch.float32)
    gen = torch.Generator().manual_seed(21)
    train, val = random_split(TensorDataset(features, y_ohe), [0.8, 0.2], generator=gen)
    train_dl = DataLoader(train, batch_size=512, shuffle=True, generator=gen)
    val_dl = DataLoader(val, batch_size=512, shuffle=True, generator=gen)
    net = MLP()
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.98))
    times = []
    for _ in range(args.epochs + 3):
        t0 = time.perf_counter()
        for inputs, labels in train_dl:
            opt.zero_grad()
            out = net(inputs).type(torch.float64)
            loss = crit(out, labels)
            loss.backward()
            opt.step()
            with torch.no_grad():
                (out.softmax(-1).argmax(-1) == labels.argmax(-1)).numpy().sum()
                loss.item()
        with torch.no_grad():
            for inputs, labels in val_dl:
                out = net(inputs)
                crit(out, labels).item()
                (out.softmax(-1).argmax(-1) == labels.argmax(-1)).numpy().sum()
        torch.linalg.norm(net.net[-1].weight.detach(), ord=2)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[3:])
    print(f"torch {torch.__version__}, {args.threads} thread(s): {med * 1e3:.2f} ms/epoch (median of {args.epochs})")


if __name__ == "__main__":
    main()
