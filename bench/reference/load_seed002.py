"""Loads a groklens MLP run into seed 002's own PyTorch class (strict `load_state_dict`) and scores it
on every input, to check that the checkpoint names and layouts are the seed's. Usage:

    bench/reference/venv/bin/python bench/reference/load_seed002.py runs/grok-seed-002
"""
import json
import sys

import torch
from safetensors.torch import load_file

from seed002_mlp import MLP


def main():
    run = sys.argv[1] if len(sys.argv) > 1 else "runs/grok-seed-002"
    cfg = json.load(open(f"{run}/model_config.json"))
    assert cfg["family"] == "mlp" and cfg["n_hidden"] == 1, "seed 002's class has one hidden layer"
    p = cfg["d_vocab"] - 2
    net = MLP(vocab=cfg["d_vocab"])
    net.load_state_dict(load_file(f"{run}/final.safetensors"))  # strict: every name and shape
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    x = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], -1)
    with torch.no_grad():
        acc = (net(x).argmax(-1) == (a + b) % p).float().mean().item()
    print(f"{run}: loaded into seed 002's MLP; accuracy over all {p * p} inputs {acc:.4f}")


if __name__ == "__main__":
    main()
