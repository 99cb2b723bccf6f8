#!/usr/bin/env python3
"""net_torch.py — the PyTorch side of the network benchmarks (bench-net.sh on the CPU,
tests/gpu-check.sh on a GPU): time per pair of the independent reference network
(tests/reference/llm_morph_ref.py, LLMMorph) with two LLaMA-3-shaped transformers
LlamaDecoderLayer modules built with random init (LlamaConfig hidden 4096, intermediate 14336,
32 heads, 8 KV heads, eager attention, no mask = bidirectional as the reference), LoRA rank 64 /
alpha 64 (the presets), at either paper config:
  abdomen  192×160×192 images, half -> 96×80×96 network input, L = 180, phi_full, K = 5;
  srreg    176×208×192 images at the network grid, L = 1716, K = 33 ({0, 5, 24} ignored).
Modes (the same as bench_net.c's):
  forward  eval(), no_grad, images -> phi (phi_full);
  train    one training step: images and label maps copied from the host, forward, the loss
           (Dice + 0.1·Grad_L2), backward, Adam (lr 1e-4) over the trainable tensors.
--device cpu (default): float32, torch.set_num_threads(--threads), the reference's gather warp —
exactly what bench-net.sh has always compared. --device cuda: bf16 autocast (--no-amp for
float32), the frozen LLM layers stored in bf16, cudnn.benchmark on, and the warps through
F.grid_sample (align_corners=True after the vxm normalisation, as vxm/TransMorph/MambaMorph's
SpatialTransformer does; the reference's warp_grid_sample, in float32), each step timed to a
torch.cuda.synchronize(). Nothing is downloaded.

Prints one line per mode:  MODE BEST_S MEDIAN_S REPS THREADS PEAK_RSS_KB [GPU_MEM_MB]
(on cuda THREADS is 0 and GPU_MEM_MB is torch.cuda.max_memory_allocated).
Usage: net_torch.py [--mode forward|train|forward,train] [--device cpu|cuda]
                    [--config abdomen|srreg]
                    [--threads N] [--reps N] [--amp|--no-amp] [--warp gather|grid_sample]
                    [--images DxHxW]
                    [--width D --ffn F --heads H --kv K]
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

CONFIGS = {  # images at the evaluation grid, half, classes, kept
    "abdomen": ((192, 160, 192), True, 5, tuple(range(1, 5))),
    "srreg": ((176, 208, 192), False, 33, tuple(k for k in range(33) if k not in (0, 5, 24))),
}


def labels(shape, K, shift):
    """Blocks of 16 voxels, classes 0..K-1 (as bench_net.c's)."""
    i = torch.arange(shape[0]).view(-1, 1, 1)
    j = torch.arange(shape[1]).view(1, -1, 1)
    k = torch.arange(shape[2]).view(1, 1, -1)
    return (((i + 3 * shift) // 16) + 2 * ((j + 2 * shift) // 16) + 3 * (k // 16)) % K


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="forward",
                    help="forward, train, or forward,train (one line each, in that order)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", choices=tuple(CONFIGS), default="abdomen")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv", type=int, default=8)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--amp", dest="amp", action="store_true", default=None,
                    help="bf16 autocast (default on cuda only)")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on cuda too")
    ap.add_argument("--images", default=None,
                    help="DxHxW instead of the config's image grid (quick checks)")
    ap.add_argument("--warp", choices=("gather", "grid_sample"), default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    amp = cuda if a.amp is None else a.amp
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import llm_morph_ref as ref
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    if (a.warp or ("grid_sample" if cuda else "gather")) == "grid_sample":
        def warp_gs(src, u, padding="zeros"):
            return ref.warp_grid_sample(src.float(), u.float(), padding)
        ref.warp = warp_gs  # used by the forward, compose() and the loss
    if cuda:
        torch.backends.cudnn.benchmark = True
    full, half, K, kept = CONFIGS[a.config]
    if a.images:
        full = tuple(int(x) for x in a.images.split("x"))
    cfg = LlamaConfig(hidden_size=a.width, intermediate_size=a.ffn, num_attention_heads=a.heads,
                      num_key_value_heads=a.kv, num_hidden_layers=2, vocab_size=256,
                      rms_norm_eps=1e-5, rope_theta=5e5, attn_implementation="eager")
    cfg._attn_implementation = "eager"
    with torch.no_grad(), torch.device(dev):
        layers = [LlamaDecoderLayer(cfg, 0).float().eval(), LlamaDecoderLayer(cfg, 1).float().eval()]
        if amp and cuda:  # frozen: kept in bf16, as a LoRA set-up loads its base model
            layers = [ly.to(torch.bfloat16) for ly in layers]
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
    net.to(dev)
    g = torch.Generator().manual_seed(3)
    moving = torch.rand((1, 1) + full, generator=g)
    fixed = torch.rand((1, 1) + full, generator=g)
    mseg, fseg = labels(full, K, 1).to(torch.int32), labels(full, K, 0).to(torch.int32)
    modes = a.mode.split(",")
    if not modes or any(m not in ("forward", "train") for m in modes):
        ap.error("--mode: forward, train or forward,train")
    for mode in ("forward", "train"):
        if mode in modes:
            bench(a, mode, net, dev, amp, moving, fixed, mseg, fseg, full, half, K, kept)


def bench(a, mode, net, dev, amp, moving, fixed, mseg, fseg, full, half, K, kept):
    cuda = dev.type == "cuda"
    opt = None
    if mode == "train":
        net.train()
        opt = torch.optim.Adam([p for _, p in net.trainable()], lr=1e-4, betas=(0.9, 0.999),
                               eps=1e-8)
    else:
        net.eval()

    def step():
        m, f = moving.to(dev), fixed.to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            if opt is None:
                o = net(m, f, half=half)
            else:
                o = net(m, f, mseg.to(dev), fseg.to(dev), K=K, kept=kept, half=half)
        if opt is None:
            assert tuple(o["phi_full" if half else "phi"].shape) == (1, 3) + full
            return None
        loss = o["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ctx = torch.no_grad() if opt is None else torch.enable_grad()
    with ctx:
        for i in range(a.reps + 1):  # rep 0: warm-up
            t0 = time.perf_counter()
            lv = step()
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter() - t0
            extra = f" (loss {lv:.6f})" if lv is not None and i == 0 else ""
            print(f"net_torch: {mode} {i}: {t:.4f} s{'' if i else ' (warm-up)'}{extra}",
                  file=sys.stderr)
            if i:
                times.append(t)
    times.sort()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = f"{mode} {times[0]:.4f} {times[len(times) // 2]:.4f} {a.reps} " \
           f"{0 if cuda else a.threads} {rss}"
    if cuda:
        line += f" {torch.cuda.max_memory_allocated() / 1048576:.0f}"
    print(line, flush=True)


if __name__ == "__main__":
    main()
