#!/usr/bin/env python3
"""preprocess_scipy.py — the Python side of bench-preprocess.sh.

  make DIR   writes a 192x160x192, 2 mm abdomen-sized pair: DIR/ct.nii (int16 HU, RAS),
             DIR/mr.nii (int16, LPS, another grid), DIR/ct_seg.nii, DIR/mr_seg.nii
  run DIR    the same preprocessing as `lm-preprocess --align-centres` (MR 95th-percentile
             window, CT HU window, min-max, MR and labels onto the CT grid with
             map_coordinates) and prints its seconds (loading included, like the C side)
"""
import sys
import time

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates, zoom

SHAPE = (192, 160, 192)


def make(d):
    rng = np.random.default_rng(0)
    base = zoom(rng.random((12, 10, 12)), np.array(SHAPE) / (12, 10, 12), order=3)
    ct = (base * 1400 - 1000).astype(np.int16)
    seg = np.digitize(base, np.quantile(base, [0.5, 0.6, 0.7, 0.8, 0.9])).astype(np.int16)
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    ras[:3, 3] = [-191, -159, -191]
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    lps[:3, 3] = [191, 159, -191]
    mr = (np.flip(base, (0, 1)) * 800).astype(np.int16)
    nib.save(nib.Nifti1Image(ct, ras), f"{d}/ct.nii")
    nib.save(nib.Nifti1Image(seg, ras), f"{d}/ct_seg.nii")
    nib.save(nib.Nifti1Image(mr, lps), f"{d}/mr.nii")
    nib.save(nib.Nifti1Image(np.flip(seg, (0, 1)).copy(), lps), f"{d}/mr_seg.nii")


def run(d):
    t = time.perf_counter()
    ct, mr = nib.load(f"{d}/ct.nii"), nib.load(f"{d}/mr.nii")
    cs, ms = nib.load(f"{d}/ct_seg.nii"), nib.load(f"{d}/mr_seg.nii")
    c = np.clip(np.asarray(ct.dataobj, np.float32), -180, 400)
    c = (c - c.min()) / (c.max() - c.min())
    m = np.asarray(mr.dataobj, np.float32)
    m = np.clip(m, 0, np.percentile(m, 95))
    m = (m - m.min()) / (m.max() - m.min())
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), 0).reshape(3, -1)
    vox = np.linalg.inv(mr.affine) @ ct.affine
    q = vox[:3, :3] @ grid + vox[:3, 3:]
    mw = map_coordinates(m, q, order=1, mode="grid-constant").reshape(SHAPE)
    qi = np.rint(q).astype(np.int64)
    ok = np.all((qi >= 0) & (qi < np.array(SHAPE)[:, None]), 0)
    segm = np.asarray(ms.dataobj)
    sw = np.zeros(qi.shape[1], np.int16)
    sw[ok] = segm[qi[0, ok], qi[1, ok], qi[2, ok]]
    _ = (c, mw, sw, np.asarray(cs.dataobj))
    print(f"{time.perf_counter() - t:.4f}")


if __name__ == "__main__":
    {"make": make, "run": run}[sys.argv[1]](sys.argv[2])
