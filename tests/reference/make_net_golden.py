#!/usr/bin/env python3
"""Network golden files for tests/unit/test_net.c, as tests/reference/NET_GOLDEN.md fixes them,
from the independent PyTorch reference tests/reference/llm_morph_ref.py (written from
../shared/design/MODEL.md, not from the C code).

Writes (run from the repository root):
  tests/data/net_tiny.safetensors        32×32×32, stories260K layers 2 and 3, variant T
  tests/data/net_tiny_half.safetensors   64×64×64 images pooled to 32×32×32 (MODEL.md §2.2)
  tests/data/net_tiny_<switch>.safetensors   32×32×32, one switch or ablation each (MODEL.md
      §15 rows 1, 8, 9, 16, 32, 33; NET_GOLDEN.md "Configurations"): figure (restore=figure),
      add (combine=add), causal (mask causal), norope (rope none), noleb, oneleb (layer 2 only),
      nolora, vit (ViT blocks instead of the LLM layers, 8 heads); stored more compactly
      (NSAMPLE 256, FULL_MAX 512) so that every network golden together stays under 2 MB

Every trainable tensor is filled by NET_GOLDEN.md's splitmix64 hash (tensor number t in §18 order,
listed in the metadata `golden.params`); the inputs are the same hash (t = 1000 moving, 1001
fixed) and the label maps its integer formulas. loss = -Dice(kept {1,2,3}, K = 4) + 0.1·Grad_L2
of the final field used for warping; gradients by autograd w.r.t. every trainable tensor and both
input images. CPU, no autocast, TF32 off, deterministic algorithms, one thread.

The stored values are the network evaluated in float64 (R.run_golden(..., float64): parameters
and images are the float32 hash values widened exactly; HF RMSNorm/eager attention computed in
float64), i.e. the exact values up to float64 rounding, rounded to F32 when stored. The loss is
only piecewise smooth (ReLU/LeakyReLU, trilinear cells of every warp), and at the golden point
some pre-activations lie within float32 rounding of a kink: there a float32 implementation may
take the other branch, and the gradient changes by O(1) locally (and everything upstream of it by
the propagated amount). Each stored tensor therefore carries its own tolerance (metadata
`golden.tol`), measured here: the test's error measure (below) of NPERT + 1 "float32-like"
evaluations against the float64 values -- the plain float32 run of the reference, and NPERT
float64 runs with every parameter and both images multiplied by (1 + PERT·u), u uniform in
[-1, 1) (torch.Generator seeds 1..NPERT); PERT = 2e-6 moves the boundaries by about as much as
float32 rounding does (measured: out.t, out.f1, out.phi within a factor 2 of the float32 run's
deviation) -- and tol = max(floor, SAFETY·worst), floor 1e-4 forward / 1e-3 gradients, SAFETY 2.

Error measure (the C test's): e = max over the stored elements of |ours - golden| / scale, with
scale = max |golden| over the whole tensor (float64 values), except for the biases feeding an
instance norm (R.IN_FED_BIASES, exact gradient 0), whose scale is the max |gradient| of the
weight of the same layer; for sampled tensors also |sum - sum_ref| / max(|sum_ref|,
sqrt(sumsq_ref)) and |sumsq - sumsq_ref| / sumsq_ref (not for those biases: sums of rounding noise);
for out.loss/dice/grad_l2 |v - ref| / |ref|. `golden.tol` = {key: [tol, scale], ...} (JSON,
compact, keys sorted; [tol, scale, 0] for the biases with exact gradient 0).

Stored (NET_GOLDEN.md "What is stored"): tensors with <= FULL_MAX (4096) elements in full; larger
ones as `<key>.sample` (F32 [NSAMPLE = 2048], flat indices (m·2654435761) mod numel), `<key>.sum`
and `<key>.sumsq` (F64 [1], over the float64 values). out.loss, out.dice, out.grad_l2 are F64 [1].
The label maps are not stored (integer formulas of NET_GOLDEN.md). Metadata: `golden.config` (the
contract's JSON, compact), `golden.params` (JSON [[name, shape], ...] in hash order) and
`golden.tol`. The writer is safetensors.torch.save (the same bytes save_file writes);
safetensors emits the metadata keys in a random order, so it is called until they come out
sorted, which makes the files byte-identical between runs.

Prints, for each config, the parameter counts, the loss, Dice and Grad_L2, and the tensors whose
tolerance is above the floor (with the float32 run's own error). About 2.5 minutes per config on
one CPU (25 minutes for all ten). Rerun: `python3 tests/reference/make_net_golden.py [NAME ...]`
(all configs, or the named ones, e.g. `tiny_vit`; `--full-max N` lowers the FULL_MAX threshold
for trying other files; that departs from NET_GOLDEN.md and is not the default). Needs torch,
transformers, numpy, safetensors and ../shared/weights/stories260K-hf.
"""
import contextlib
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llm_morph_ref as R  # noqa: E402

FULL_MAX = 4096    # the default configs; the switch/ablation configs use 512 and 256
NSAMPLE = 2048
NPERT = 6          # perturbed float64 runs for the tolerances
PERT = 2e-6        # relative size of those perturbations
SAFETY = 2.0
FLOOR_FWD, FLOOR_GRAD = 1e-4, 1e-3

# name, input shape, half, variant (llm_morph_ref.VARIANT_DEFAULT keys), (NSAMPLE, FULL_MAX)
COMPACT = (256, 512)
CONFIGS = [
    ("tiny", (32, 32, 32), False, {}, None),
    ("tiny_half", (64, 64, 64), True, {}, None),
    ("tiny_figure", (32, 32, 32), False, {"restore": "figure"}, COMPACT),
    ("tiny_add", (32, 32, 32), False, {"combine": "add"}, COMPACT),
    ("tiny_causal", (32, 32, 32), False, {"mask": "causal"}, COMPACT),
    ("tiny_norope", (32, 32, 32), False, {"rope": False}, COMPACT),
    ("tiny_noleb", (32, 32, 32), False, {"ablation": "no-leb"}, COMPACT),
    ("tiny_oneleb", (32, 32, 32), False, {"ablation": "one-leb"}, COMPACT),
    ("tiny_nolora", (32, 32, 32), False, {"ablation": "no-lora"}, COMPACT),
    ("tiny_vit", (32, 32, 32), False, {"ablation": "vit"}, COMPACT),
]
LAYERS = (2, 3)
RANK, ALPHA = 4, 8


def path_of(name):
    return f"tests/data/net_{name}.safetensors"


def golden_layers(v):
    """The LLM layers the config's LEBs use (NET_GOLDEN.md): 2, 3; 2 for one-leb; none for
    no-leb and vit."""
    return [] if v["ablation"] in ("no-leb", "vit") else list(LAYERS[:R.n_lebs(v)])


def config_json(name, shape, half, variant=None, compact=None, heads=None):
    v = R.variant_of(variant)
    rank = 0 if v["ablation"] in ("no-leb", "no-lora", "vit") else RANK
    c = {"name": name, "shape": list(shape), "half": half, "llm": "stories260K-hf",
         "layers": golden_layers(v), "lora_rank": rank, "lora_alpha": ALPHA,
         "mask": v["mask"], "rope": v["rope"], "restore": v["restore"],
         "combine": v["combine"], "lambda": 0.1, "kept": [1, 2, 3], "classes": [0, 1, 2, 3]}
    if v["ablation"] != "none":
        c["ablation"] = v["ablation"]
    if v["ablation"] == "vit":
        c["heads"] = heads
    if compact:
        c["nsample"], c["full_max"] = compact
    return json.dumps(c, separators=(",", ":"))


def sample_idx(n):
    return ((np.arange(NSAMPLE, dtype=np.uint64) * np.uint64(2654435761)) %
            np.uint64(n)).astype(np.int64)


def store(out, key, t):
    a = t.detach().cpu().contiguous().numpy()
    if a.size <= FULL_MAX:
        out[key] = torch.from_numpy(a.astype(np.float32))
        return
    flat = a.reshape(-1)
    out[key + ".sample"] = torch.from_numpy(flat[sample_idx(flat.size)].astype(np.float32))
    f64 = flat.astype(np.float64)
    out[key + ".sum"] = torch.tensor([f64.sum()], dtype=torch.float64)
    out[key + ".sumsq"] = torch.tensor([(f64 * f64).sum()], dtype=torch.float64)


def write_sorted(tensors, metadata, path):
    want = "{" + ",".join(json.dumps(k) + ":" + json.dumps(metadata[k])
                          for k in sorted(metadata)) + "}"
    for _ in range(200):
        blob = save(tensors, metadata=metadata)
        n = int.from_bytes(blob[:8], "little")
        if b'"__metadata__":' + want.encode() in blob[8:8 + n]:
            with open(path, "wb") as f:
                f.write(blob)
            return
    sys.exit("safetensors never wrote the metadata keys in sorted order")


def evaluate(model, shape, half, dtype, seed=None, variant=None):
    """Every boundary and gradient (float64 numpy, by stored key) of one evaluation: float32, or
    float64 with parameters and images multiplied by (1 + PERT·u) when seed is given."""
    var = R.variant_of(variant)
    net = R.build_net(model, LAYERS, RANK, ALPHA, variant=var)
    moving, fixed, mseg, fseg = R.golden_inputs(shape)
    if dtype == torch.float64:
        net = net.double()
        for p in net.frozen_parameters():
            p.data = p.data.double()
        moving, fixed = moving.double(), fixed.double()
    if seed is not None:
        g = torch.Generator().manual_seed(seed)

        def jitter(x):
            return x * (1 + PERT * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1))
        with torch.no_grad():
            for _, p in net.trainable():
                p.copy_(jitter(p))
            moving, fixed = jitter(moving), jitter(fixed)
    moving.requires_grad_(True)
    fixed.requires_grad_(True)
    ctx = R.float64_llm_patches() if dtype == torch.float64 else contextlib.nullcontext()
    with ctx:
        o = net(moving, fixed, mseg, fseg, K=4, kept=(1, 2, 3), half=half, lam=0.1)
        names = [n for n, _ in net.trainable()]
        params = [p for _, p in net.trainable()]
        # allow_unused: no-leb leaves encoder.conv5 (Fm5/Ff5 feed only the tokens) unused, so
        # its gradient is exactly 0
        grads = torch.autograd.grad(o["loss"], params + [moving, fixed], allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g
                 for x, g in zip(params + [moving, fixed], grads)]
    v = {"in.moving": moving, "in.fixed": fixed}
    keys = [f"fm{i}" for i in range(1, 6)] + [f"ff{i}" for i in range(1, 6)] + \
        (["x0", "leb1", "t", "f4", "f3", "f2", "f1"] if R.n_lebs(var) else []) + \
        ["s4", "phi3", "psi2", "phi"] + \
        (["phi_full"] if half else []) + ["warped_onehot", "loss", "dice", "grad_l2"]
    for k in keys:
        assert o[k].dtype == dtype, k
        v["out." + k] = o[k]
    for n, gr in zip(names + ["in.moving", "in.fixed"], grads):
        v["grad." + n] = gr
    v = {k: t.detach().double().numpy() for k, t in v.items()}
    return net, v


def scale_of(key, ref):
    """The error measure's scale (see the docstring)."""
    if key in ("out.loss", "out.dice", "out.grad_l2"):
        return abs(float(ref[key].reshape(-1)[0]))
    if exact_zero(key):
        key = key[:-len("bias")] + "weight"
    m = float(np.abs(ref[key]).max())
    return m if m > 0 else 1.0      # a tensor the variant does not use: absolute error


def exact_zero(key):
    """The biases whose exact gradient is 0 (R.zero_grad_biases: those feeding an instance norm,
    and the last bias of a ViT block)."""
    return key.startswith("grad.") and key[len("grad."):] in R.zero_grad_biases([key[5:]])


def measure(key, x, ref, scale):
    """The C test's error of x (rounded to float32, as the C side holds it) against ref."""
    x = x.reshape(-1).astype(np.float32).astype(np.float64)
    r = ref.reshape(-1)
    if r.size <= FULL_MAX:
        return float(np.abs(x - r.astype(np.float32)).max()) / scale
    idx = sample_idx(r.size)
    rs = r[idx].astype(np.float32).astype(np.float64)      # what the file holds
    e = float(np.abs(x[idx] - rs).max()) / scale
    if exact_zero(key):         # sums of rounding noise mean nothing
        return e
    s_ref, q_ref = r.sum(), (r * r).sum()
    es = abs(x.sum() - s_ref) / max(abs(s_ref), np.sqrt(q_ref), 1e-300)
    eq = abs((x * x).sum() - q_ref) / max(q_ref, 1e-300)
    return max(e, es, eq)


def run(model, name, shape, half, path, variant=None, compact=None):
    global NSAMPLE, FULL_MAX
    saved = NSAMPLE, FULL_MAX
    if compact:
        NSAMPLE, FULL_MAX = compact
    try:
        return run_(model, name, shape, half, path, variant, compact)
    finally:
        NSAMPLE, FULL_MAX = saved


def run_(model, name, shape, half, path, variant, compact):
    net, ref = evaluate(model, shape, half, torch.float64, variant=variant)
    _, v32 = evaluate(model, shape, half, torch.float32, variant=variant)
    runs = [v32] + [evaluate(model, shape, half, torch.float64, seed, variant)[1]
                    for seed in range(1, NPERT + 1)]
    for k in ref:       # the exact-zero biases really are 0 up to float64 rounding
        if exact_zero(k):
            w = np.abs(ref[k[:-len("bias")] + "weight"]).max()
            assert np.abs(ref[k]).max() <= 1e-9 * max(w, 1e-300), (k, np.abs(ref[k]).max(), w)
    out = {}
    tol = {}
    for k, r in ref.items():
        if k in ("out.loss", "out.dice", "out.grad_l2"):
            out[k] = torch.tensor([float(r.reshape(-1)[0])], dtype=torch.float64)
        else:
            store(out, k, torch.from_numpy(r))
        if k.startswith("in."):
            continue
        sc = scale_of(k, ref)
        worst = max(measure(k, x[k], r, sc) for x in runs)
        floor = FLOOR_GRAD if k.startswith("grad.") else FLOOR_FWD
        t = max(floor, SAFETY * worst)
        tol[k] = [float(f"{t:.3g}"), float(f"{sc:.9g}")] + ([0] if exact_zero(k) else [])
        if t > floor:
            print(f"    {k:32s} tol {t:.2e} (float32 run {measure(k, v32[k], r, sc):.2e}, "
                  f"worst {worst:.2e})")
    meta = {"golden.config": config_json(name, shape, half, variant, compact,
                                         model.config.num_attention_heads),
            "golden.params": json.dumps([[n, list(p.shape)] for n, p in net.trainable()],
                                        separators=(",", ":")),
            "golden.tol": json.dumps(dict(sorted(tol.items())), separators=(",", ":"))}
    write_sorted(out, meta, path)
    params = [p for _, p in net.trainable()]
    ntrain = sum(p.numel() for p in params)
    nfrozen = sum(p.numel() for p in net.frozen_parameters())
    phi_final = ref["out.phi_full"] if half else ref["out.phi"]
    v = R.variant_of(variant)
    ly = golden_layers(v)
    L = (shape[0] // (32 if half else 16)) * (shape[1] // (32 if half else 16)) * \
        (shape[2] // (32 if half else 16))
    print(f"{name}: trainable {ntrain:,} parameters ({len(params)} tensors), frozen {nfrozen:,} "
          f"(stories260K layers {', '.join(map(str, ly)) or 'none'}); L = {L}; loss "
          f"{ref['out.loss'].item():.9g}  Dice {ref['out.dice'].item():.9g}  Grad_L2 "
          f"{ref['out.grad_l2'].item():.9g}  |phi|max {np.abs(phi_final).max():.4g} vox -> {path} "
          f"({os.path.getsize(path):,} bytes, {len(out)} tensors; {sum(t[0] > (FLOOR_GRAD if k.startswith('grad.') else FLOOR_FWD) for k, t in tol.items())} "
          f"of {len(tol)} tolerances above the floor)", flush=True)


def main():
    global FULL_MAX
    args = sys.argv[1:]
    if args[:1] == ["--full-max"]:   # NOT the contract: only for trying a smaller threshold
        FULL_MAX = int(args[1])
        print(f"WARNING: --full-max {FULL_MAX} departs from NET_GOLDEN.md (4096)")
        args = args[2:]
    names = [c[0] for c in CONFIGS]
    for a in args:
        if a not in names:
            sys.exit(f"unknown config '{a}' (one of {', '.join(names)})")
    if not os.path.isdir("tests/data"):
        sys.exit("run from the repository root (tests/data not found)")
    if not os.path.isdir(R.STORIES):
        sys.exit(f"{R.STORIES} not found (../shared absent?)")
    R.set_determinism(threads=1)
    R.check_hash()
    R.check_warp()
    model = R.load_stories()
    for name, shape, half, variant, compact in CONFIGS:
        if not args or name in args:
            run(model, name, shape, half, path_of(name), variant, compact)


if __name__ == "__main__":
    main()
