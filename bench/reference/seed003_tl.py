"""Seed 003's training step in TransformerLens, for `groklens bench --preset seed-003`'s comparison.

The notebook's model and step exactly: HookedTransformer(n_layers=2, d_model=64, d_head=64, n_heads=1,
d_mlp=256, d_vocab=300, n_ctx=50, act_fn="relu", normalization_type="LN") with W_pos zeroed and frozen,
AdamW(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1), LambdaLR warm-up, clip_grad_norm_(1.0), batches of
256 random sequences with BOS 0, previous-token loss. Prints the median ms per step.

    bench/reference/venv/bin/python bench/reference/seed003_tl.py [--threads 2] [--steps 30]
"""

import argparse
import statistics
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, d_head=64, n_heads=1, d_mlp=256,
                                  d_vocab=300, n_ctx=50, act_fn="relu", normalization_type="LN",
                                  device="cpu")
    model = HookedTransformer(cfg)
    model.pos_embed.W_pos.data[:] = 0.0
    model.pos_embed.W_pos.requires_grad = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(i / 100, 1.0))
    torch.manual_seed(123)

    def step():
        x = torch.randint(1, 300, (256, 50))
        x[:, 0] = 0
        logits = model(x)
        lp = logits[:, 1:].log_softmax(-1)
        loss = -lp.gather(-1, x[:, :-1, None])[..., 0].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(f"TransformerLens seed-003 step: {1e3 * statistics.median(times):.1f} ms "
          f"(median of {args.steps}, {args.threads} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
