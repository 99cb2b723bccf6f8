#!/usr/bin/env python3
"""The SciPy/NumPy reference that tests/bench/bench-metrics.sh times lm-metrics against.

  metrics_scipy.py make OUT.safetensors   write one pair at 192x160x192, 2 mm: fixed_seg and
                                          warped_seg (U8, 5 organs) and flow (F32, voxels)
  metrics_scipy.py score FILE             score it as lm-metrics does by default (Dice,
                                          medpy HD95, vxm folding, SDlogJ) and print the
                                          seconds taken and the pair's numbers

The labels come from ../shared/data/totalseg-abdomen/example_seg.nii.gz (spleen, kidneys,
liver, stomach) resampled to the abdomen grid, or from ellipsoids when ../shared is absent.
The peers' code is written out as MambaMorph/medpy/vxm have it. Needs numpy, scipy,
safetensors (and nibabel for the real labels).
"""
import json
import os
import sys
import time

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from scipy.ndimage import (binary_erosion, distance_transform_edt, generate_binary_structure,
                           map_coordinates, zoom)

SHAPE = (192, 160, 192)
SEG = os.path.join(os.path.dirname(__file__), "../../../shared/data/totalseg-abdomen/example_seg.nii.gz")


def labels_map(rng):
    if os.path.exists(SEG):
        import nibabel as nib
        seg = np.asanyarray(nib.load(SEG).dataobj)
        keep = np.zeros_like(seg)
        for new, old in enumerate((1, 2, 3, 5, 6), 1):
            keep[seg == old] = new
        return zoom(keep, [s / k for s, k in zip(SHAPE, seg.shape)], order=0).astype(np.uint8)
    lab = np.zeros(SHAPE, np.uint8)
    g = np.indices(SHAPE).astype(np.float32)
    for k in range(1, 6):
        c = rng.uniform(0.3, 0.7, 3) * SHAPE
        r = rng.uniform(12, 40, 3)
        lab[(((g - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) <= 1] = k
    return lab


def smooth(rng, amp, coarse=(6, 5, 6)):
    c = rng.standard_normal((3,) + coarse)
    return np.stack([zoom(c[i], [s / k for s, k in zip(SHAPE, coarse)], order=3)
                     for i in range(3)]).astype(np.float32) * amp


def make(path):
    rng = np.random.default_rng(7)
    fixed = labels_map(rng)
    u = smooth(rng, 3.0)
    grid = np.indices(SHAPE).astype(np.float32)
    warped = map_coordinates(fixed, grid + u, order=0, mode="constant").astype(np.uint8)
    flow = smooth(rng, 2.0)
    save_file({"fixed_seg": fixed[None, None], "warped_seg": warped[None, None], "flow": flow[None]},
              path, metadata={"pair": "bench", "spacing": "[2.0,2.0,2.0]"})


def border(m):
    return m ^ binary_erosion(m, structure=generate_binary_structure(3, 1), iterations=1)


def hd95(a, b, sp):
    d1 = distance_transform_edt(~border(b), sampling=sp)[border(a)]
    d2 = distance_transform_edt(~border(a), sampling=sp)[border(b)]
    return np.percentile(np.hstack((d1, d2)), 95)


def jac(flow):
    disp = np.moveaxis(flow, 0, -1)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in disp.shape[:-1]], indexing="ij"), 3)
    J = np.gradient(disp + grid)
    dx, dy, dz = J[0], J[1], J[2]
    return (dx[..., 0] * (dy[..., 1] * dz[..., 2] - dy[..., 2] * dz[..., 1])
            - dx[..., 1] * (dy[..., 0] * dz[..., 2] - dy[..., 2] * dz[..., 0])
            + dx[..., 2] * (dy[..., 0] * dz[..., 1] - dy[..., 1] * dz[..., 0]))


def score(path):
    t0 = time.perf_counter()
    with safe_open(path, "np") as f:
        sp = json.loads(f.metadata()["spacing"])
        w, x, flow = (f.get_tensor(k) for k in ("warped_seg", "fixed_seg", "flow"))
    w, x, flow = w[0, 0], x[0, 0], flow[0]
    labels = [l for l in np.union1d(np.unique(w), np.unique(x)) if l != 0]
    dice, hd = [], []
    for l in labels:
        a, b = w == l, x == l
        dice.append(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), np.finfo(float).eps))
        if a.any() and b.any():
            hd.append(hd95(a, b, sp))
    det = jac(flow)
    pct = 100.0 * np.sum(det <= 0) / det.size
    sdlogj = np.std(np.log(np.clip(det, 1e-9, 1e9)))
    t = time.perf_counter() - t0
    print(f"{t:.3f}\t{100 * np.mean(dice):.6f}\t{np.mean(hd):.6f}\t{pct:.6f}\t{sdlogj:.6f}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "score"):
        sys.exit(__doc__)
    (make if sys.argv[1] == "make" else score)(sys.argv[2])
