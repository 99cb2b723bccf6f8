#!/usr/bin/env python3
"""Write tests/data/stories260k_ref.json from ../shared/weights/stories260K-hf/model.safetensors:
the header (length, every tensor's dtype/shape/data_offsets) and, for a few tensors,
values at fixed flat indices plus the float64 sum.

Run from the repository root:  python3 tests/reference/make_stories_ref.py
Needs: numpy, safetensors. Deterministic, no network.
"""
import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import load_file

SRC = "../shared/weights/stories260K-hf/model.safetensors"
OUT_JSON = "tests/data/stories260k_ref.json"
CHOSEN = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.2.self_attn.k_proj.weight",
    "model.layers.4.mlp.down_proj.weight",
    "model.norm.weight",
]


def f32_json(v):
    # repr of the double equal to the float32 value: parses back (strtod then (float)) exactly
    return float(repr(float(np.float32(v))))


def main():
    if not os.path.isdir("tests/data"):
        sys.exit("run from the repository root (tests/data not found)")
    if not os.path.exists(SRC):
        sys.exit(f"{SRC} not found (../shared absent?)")
    raw = open(SRC, "rb").read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    tensors = load_file(SRC)
    print(f"safetensors.numpy.load_file({SRC!r}): {len(tensors)} tensors")

    listing = []
    for name in sorted(k for k in header if k != "__metadata__"):
        h = header[name]
        arr = tensors[name]
        assert list(arr.shape) == h["shape"], name
        listing.append({"name": name, "dtype": h["dtype"], "shape": h["shape"],
                        "data_offsets": h["data_offsets"]})

    checks = []
    for name in CHOSEN:
        arr = np.ascontiguousarray(tensors[name]).reshape(-1)
        n = arr.size
        rng = np.random.default_rng(0)
        others = sorted(int(i) for i in rng.choice(np.arange(1, n - 1), size=4, replace=False))
        idx = [0] + others + [n - 1]
        checks.append({
            "name": name,
            "numel": int(n),
            "samples": [{"index": i, "value": f32_json(arr[i])} for i in idx],
            "sum": float(arr.astype(np.float64).sum()),
            "sum_abs": float(np.abs(arr.astype(np.float64)).sum()),
        })

    doc = {
        "file": "weights/stories260K-hf/model.safetensors",
        "file_size": len(raw),
        "header_len": header_len,
        "data_start": 8 + header_len,
        "metadata": header.get("__metadata__", {}),
        "tensors": listing,
        "checks": checks,
    }
    with open(OUT_JSON, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT_JSON}: {len(listing)} tensors, {len(checks)} checked")


if __name__ == "__main__":
    main()
