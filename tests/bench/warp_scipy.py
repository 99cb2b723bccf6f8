#!/usr/bin/env python3
"""warp_scipy.py — the SciPy side of bench-warp.sh.

  make DIR    writes DIR/moving.nii, DIR/seg.nii, DIR/flow.nii: a 192x160x192 image, a 5-label
              map and a smooth random field (about 4 voxels), uncompressed NIfTI
  score DIR   the same job as `lm-warp --flow flow.nii --seg seg.nii -o out.nii moving.nii`:
              load the NIfTI inputs (nibabel), map_coordinates (order 1 image, order 0 labels;
              mode grid-constant, as lm-warp), save the two NIfTI outputs; prints
              "seconds<TAB>interpolation seconds<TAB>max|diff|<TAB>differing labels" against
              DIR/out.nii and DIR/out_seg.nii
"""
import sys
import time

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates, zoom

SHAPE = (192, 160, 192)


def make(d):
    rng = np.random.default_rng(0)
    img = zoom(rng.random((12, 10, 12)), np.array(SHAPE) / (12, 10, 12), order=3).astype(np.float32)
    seg = np.digitize(img, np.quantile(img, [0.5, 0.6, 0.7, 0.8, 0.9])).astype(np.int16)
    low = rng.normal(0, 1, (3, 6, 5, 6))
    flow = np.stack([zoom(low[c], np.array(SHAPE) / (6, 5, 6), order=3) for c in range(3)])
    flow = (4 * flow / np.abs(flow).max()).astype(np.float32)
    eye = np.eye(4)
    nib.save(nib.Nifti1Image(img, eye), f"{d}/moving.nii")
    nib.save(nib.Nifti1Image(seg, eye), f"{d}/seg.nii")
    nib.save(nib.Nifti1Image(np.moveaxis(flow, 0, -1), eye), f"{d}/flow.nii")


def score(d):
    t0 = time.perf_counter()
    mimg = nib.load(f"{d}/moving.nii")
    img = np.asarray(mimg.dataobj)
    seg = np.asarray(nib.load(f"{d}/seg.nii").dataobj)
    flow = np.moveaxis(np.asarray(nib.load(f"{d}/flow.nii").dataobj), -1, 0).astype(np.float64)
    t = time.perf_counter()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), 0)
    c = (grid + flow).reshape(3, -1)
    w = map_coordinates(img, c, order=1, mode="grid-constant").reshape(SHAPE)
    ws = map_coordinates(seg, c, order=0, mode="grid-constant").reshape(SHAPE)
    dti = time.perf_counter() - t
    nib.save(nib.Nifti1Image(w.astype(np.float32), mimg.affine), f"{d}/py_out.nii")
    nib.save(nib.Nifti1Image(ws.astype(np.int16), mimg.affine), f"{d}/py_out_seg.nii")
    dt = time.perf_counter() - t0
    out = np.asarray(nib.load(f"{d}/out.nii").dataobj)
    outs = np.asarray(nib.load(f"{d}/out_seg.nii").dataobj)
    err = float(np.abs(out - w).max())
    bad = int((outs != ws).sum())
    print(f"{dt:.4f}\t{dti:.4f}\t{err:.3g}\t{bad}")


if __name__ == "__main__":
    {"make": make, "score": score}[sys.argv[1]](sys.argv[2])
