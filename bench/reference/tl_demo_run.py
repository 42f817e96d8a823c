"""The TransformerLens grokking demo (seed 004's model half), trained for a few hundred epochs with the
notebook's seeds (data 598, model 999), printing the losses groklens's `tl-grokking-demo` run records
in metrics.csv at the same epochs, to see how long the two trajectories stay together.

    bench/reference/venv/bin/python bench/reference/tl_demo_run.py [EPOCHS] > tl_demo_losses.csv
"""
import sys
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

torch.set_num_threads(2)
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 500
p = 113
a = torch.arange(p).repeat_interleave(p); b = torch.arange(p).repeat(p)
data = torch.stack([a, b, torch.full_like(a, p)], dim=1)
labels = (a + b) % p
torch.manual_seed(598)
idx = torch.randperm(p * p); cut = int(p * p * 0.3)
train, test = idx[:cut], idx[cut:]
cfg = HookedTransformerConfig(n_layers=1, n_heads=4, d_model=128, d_head=32, d_mlp=512, act_fn="relu",
                              normalization_type=None, d_vocab=p + 1, d_vocab_out=p, n_ctx=3,
                              init_weights=True, device="cpu", seed=999)
model = HookedTransformer(cfg)
for name, param in model.named_parameters():
    if "b_" in name:
        param.requires_grad = False
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))


def loss_fn(logits, y):
    return torch.nn.functional.cross_entropy(logits[:, -1].to(torch.float64), y)


print("epoch,train_loss,test_loss,test_acc")
for epoch in range(1, epochs + 1):
    train_loss = loss_fn(model(data[train]), labels[train])
    train_loss.backward()
    opt.step(); opt.zero_grad()
    if epoch == 1 or epoch % 10 == 0:
        with torch.inference_mode():
            logits = model(data[test])
            test_loss = loss_fn(logits, labels[test])
            acc = (logits[:, -1].argmax(-1) == labels[test]).double().mean()
        print(f"{epoch},{train_loss.item():.10g},{test_loss.item():.10g},{acc.item():.6f}", flush=True)
