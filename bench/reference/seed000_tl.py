"""Seed 000's epoch in TransformerLens, per million rows, for `groklens bench --preset seed-000`.

The notebook's model: HookedTransformer(n_layers=1, d_model=256, d_head=64, n_heads=4, d_mlp=1024,
d_vocab=p+6, d_vocab_out=p, n_ctx=10, act_fn="relu", normalization_type=None) with p = 53, and its
epoch: every train batch forward and backward (gradients summed over batches, the loss in float64
at the last position), one AdamW step, then a forward pass in inference mode. Random expressions
stand in for the p^4 rows (the cost does not depend on the values). Prints ms per million rows of
forward+backward and of the inference forward.

    bench/reference/venv/bin/python bench/reference/seed000_tl.py [--threads 2] [--batch 8192] [--iters 10]

The seed's batches are 65 536 rows; `--batch 65536` reproduces them exactly (about 5 GB of
activations), the default 8 192 matches `groklens`'s `train.micro_batch` for this preset.
"""

import argparse
import statistics
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

P = 53


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = HookedTransformerConfig(n_layers=1, d_model=256, d_head=64, n_heads=4, d_mlp=1024,
                                  d_vocab=P + 6, d_vocab_out=P, n_ctx=10, act_fn="relu",
                                  normalization_type=None, device="cpu", seed=999)
    model = HookedTransformer(cfg)
    torch.manual_seed(0)
    x = torch.randint(0, P + 6, (args.batch, 10))
    y = torch.randint(0, P, (args.batch,))

    def loss_fn(logits, labels):
        logits = logits[:, -1].to(torch.float64)
        return -logits.log_softmax(-1).gather(-1, labels[:, None])[:, 0].mean()

    def train_pass():
        loss_fn(model(x), y).backward()

    def test_pass():
        with torch.inference_mode():
            loss_fn(model(x), y)

    for f in (train_pass, test_pass):
        f()
    figures = {}
    for name, f in (("train forward+backward", train_pass), ("test forward", test_pass)):
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        figures[name] = 1e3 * statistics.median(times) * 1e6 / args.batch
    for name, ms in figures.items():
        print(f"TransformerLens seed-000 {name}: {ms:.1f} ms per million rows")
    print(f"(median of {args.iters} passes of {args.batch} rows, {args.threads} threads, "
          f"torch {torch.__version__})")


if __name__ == "__main__":
    main()
