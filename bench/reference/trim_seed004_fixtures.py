"""Copies seed 004's BitNet fixtures from ../shared/fixtures into tests/fixtures without the tensors
no test reads: each BitLinear's unused outer `weight` and the ternary layers' unused `layer.norm`
(neither takes part in the forward pass nor receives a gradient). Metadata is kept.

    bench/reference/venv/bin/python bench/reference/trim_seed004_fixtures.py
"""
import re
import sys
from pathlib import Path

from safetensors.numpy import load_file, save_file
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
UNUSED = re.compile(r"\.(to_qkv\.\d|to_out|layer1|layer2)\.(weight|layer\.norm\.(weight|bias))$")

for mode in ["binary", "ternary"]:
    name = f"seed004_bitnet_{mode}.safetensors"
    src = ROOT.parent / "shared" / "fixtures" / name
    with safe_open(str(src), "np") as f:
        metadata = f.metadata()
    tensors = {k: v for k, v in load_file(str(src)).items() if not UNUSED.search(k)}
    save_file(tensors, str(ROOT / "tests" / "fixtures" / name), metadata=metadata)
    print(name, len(tensors), "tensors", file=sys.stderr)
