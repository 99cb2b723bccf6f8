#!/usr/bin/env python3
"""make_prep_ref.py — an independent reference for lm-preprocess on real data.

Moving = the TotalSegmentator MR (LPS, int16), fixed = the CT (RAS), different grids and
subjects: `lm-preprocess --align-centres --pad MR CT MR_SEG CT_SEG`. Recomputed here with
nibabel affines and scipy.ndimage.map_coordinates (order 1, mode 'grid-constant', i.e. zero
outside with interpolation at the edge, as grid_sample(zeros, align_corners=True)); nearest
labels with round-half-to-even coordinates. Writes tests/data/prep_ref.json: sums and 2000
sampled voxels of each output tensor (the full volumes would be megabytes).
Run from the repo root:  python3 tests/reference/make_prep_ref.py
"""
import json
import os

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates

S = "../shared/data/totalseg-abdomen"


def norm(a, mod):
    a = a.astype(np.float64)
    if mod == "ct":
        a = np.clip(a, -180, 400)
    elif mod == "mr":
        a = np.clip(a, 0, np.percentile(a, 95))
    a = a.astype(np.float32).astype(np.float64)  # the C code clips in float32
    return (a - a.min()) / (a.max() - a.min())


def centre(aff, shape):
    return aff[:3, :3] @ ((np.array(shape[:3]) - 1) / 2.0) + aff[:3, 3]


def main():
    mr, ct = nib.load(f"{S}/example_mr_sm.nii.gz"), nib.load(f"{S}/example_ct_sm.nii.gz")
    mseg = nib.load(f"{S}/example_seg_mr.nii.gz")
    fseg = nib.load(f"{S}/example_seg.nii.gz")
    am, af = mr.affine.copy(), ct.affine.copy()
    am[:3, 3] += centre(af, ct.shape) - centre(am, mr.shape)  # --align-centres
    # --pad: CT grid padded to multiples of 16 around its centre (offset floor((N-S)/2)).
    want = [(-(-n // 16)) * 16 for n in ct.shape]
    off = [int(np.floor((n - s) / 2)) for n, s in zip(ct.shape, want)]
    at = af.copy()
    at[:3, 3] = af[:3, :3] @ np.array(off, float) + af[:3, 3]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in want], indexing="ij"), 0).reshape(3, -1)
    homog = np.vstack([grid, np.ones((1, grid.shape[1]))])

    def coords(a_src):
        return (np.linalg.inv(a_src) @ at @ homog)[:3]

    out = {}
    for name, img, aff, mod in (("moving", mr, am, "mr"), ("fixed", ct, af, "ct")):
        v = norm(np.asarray(img.dataobj), mod)
        r = map_coordinates(v, coords(aff), order=1, mode="grid-constant", cval=0.0)
        out[name] = r.reshape(want)
    for name, seg, aff in (("moving_seg", mseg, am), ("fixed_seg", fseg, af)):
        v = np.asarray(seg.dataobj).astype(np.int64)
        q = np.rint(coords(aff)).astype(np.int64)  # round half to even
        ok = np.all((q >= 0) & (q < np.array(v.shape)[:, None]), axis=0)
        r = np.zeros(q.shape[1], np.int64)
        r[ok] = v[q[0, ok], q[1, ok], q[2, ok]]
        out[name] = r.reshape(want)
    rng = np.random.default_rng(0)
    ref = {"shape": want, "affine": at.reshape(-1).tolist(), "tensors": {}}
    for name, a in out.items():
        idx = rng.integers(0, a.size, 1500)
        nz = np.flatnonzero(a)
        idx = np.concatenate([idx, rng.choice(nz, 500)]) if nz.size else idx
        ref["tensors"][name] = {
            "sum": float(a.sum()), "nonzero": int(np.count_nonzero(a)),
            "samples": [[int(i), float(f"{a.reshape(-1)[i]:.9g}")] for i in idx]}
    with open("tests/data/prep_ref.json", "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    print("wrote tests/data/prep_ref.json", os.path.getsize("tests/data/prep_ref.json"), "bytes")


if __name__ == "__main__":
    main()
