#!/usr/bin/env python3
"""net_torch.py — the PyTorch side of bench-net.sh: forward time per pair of the independent
reference network (tests/reference/llm_morph_ref.py, LLMMorph) at the abdomen config
(192×160×192 images, half -> 96×80×96 network input, L = 180, phi_full at the end), with two
LLaMA-3-shaped transformers LlamaDecoderLayer modules built with random init (LlamaConfig
hidden 4096, intermediate 14336, 32 heads, 8 KV heads, eager attention, no mask = bidirectional
as the reference), LoRA rank 64 / alpha 64 (the abdomen preset). float32, eval(), no_grad,
torch.set_num_threads(--threads). Nothing is downloaded.

Prints one line:  forward BEST_S MEDIAN_S REPS THREADS PEAK_RSS_KB
Usage: net_torch.py [--threads N] [--reps N] [--width D --ffn F --heads H --kv K]
"""
import argparse
import os
import resource
import sys
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv", type=int, default=8)
    ap.add_argument("--rank", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import llm_morph_ref as ref
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=a.width, intermediate_size=a.ffn, num_attention_heads=a.heads,
                      num_key_value_heads=a.kv, num_hidden_layers=2, vocab_size=256,
                      rms_norm_eps=1e-5, rope_theta=5e5, attn_implementation="eager")
    cfg._attn_implementation = "eager"
    with torch.no_grad():
        layers = [LlamaDecoderLayer(cfg, 0).float().eval(), LlamaDecoderLayer(cfg, 1).float().eval()]
    rotary = LlamaRotaryEmbedding(cfg)
    # LLMMorph deep-copies the layers it is given; these are ours alone, so take them as they are
    # (the copy would only double the peak memory of this side).
    saved = ref.copy
    ref.copy = types.SimpleNamespace(deepcopy=lambda x: x)
    try:
        net = ref.LLMMorph(layers, rotary, a.width, a.rank, a.rank)
    finally:
        ref.copy = saved
    del layers
    net.eval()
    g = torch.Generator().manual_seed(3)
    full = (192, 160, 192)
    moving = torch.rand((1, 1) + full, generator=g)
    fixed = torch.rand((1, 1) + full, generator=g)
    times = []
    with torch.no_grad():
        for i in range(a.reps + 1):  # rep 0: warm-up
            t0 = time.perf_counter()
            o = net(moving, fixed, half=True)
            t = time.perf_counter() - t0
            assert tuple(o["phi_full"].shape) == (1, 3) + full
            del o
            print(f"net_torch: forward {i}: {t:.3f} s{'' if i else ' (warm-up)'}", file=sys.stderr)
            if i:
                times.append(t)
    times.sort()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"forward {times[0]:.4f} {times[len(times) // 2]:.4f} {a.reps} {a.threads} {rss}")


if __name__ == "__main__":
    main()
