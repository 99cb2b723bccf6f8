#!/usr/bin/env python3
"""make_warp_ref.py — independent references for lm-warp (SciPy map_coordinates).

Case A (small, everything stored): a 32x32x20 crop of DeepReg's moving MR (case000025) and its
label map (4-D one-hot channels c -> label c+1, later channel wins), warped by a random smooth
field (Gaussian noise on a 5x5x4 grid, cubic zoom to full size, amplitude ~3 voxels,
quantised to 1/256 voxel + 1/1024).
Writes tests/data/warp_a_{moving,seg,flow,linear,nearest}.nii.gz; the flow is a plain 4-D
NIfTI [D,H,W,3] in voxels (no DISPVECT intent), channel c along array axis c.

Case B (real label map, field not stored): TotalSegmentator's CT label map (122x101x30, 41
labels) warped by the analytic field u_c(p) = A_c sin(2 pi (p . k_c) / N + phi_c), evaluated in
float64 then rounded to float32 (tests/unit/test_warp_ref.c computes the same formula).
Writes tests/data/warp_b_nearest.nii.gz.

Linear: order=1, mode='grid-constant' (zero outside, interpolating at the edge, as
grid_sample(zeros, align_corners=True)). Nearest: order=0, mode='grid-constant'.
Run from the repo root: python3 tests/reference/make_warp_ref.py
"""
import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates, zoom

SH = "../shared/data"
EYE = np.diag([1.0, 1.0, 1.0, 1.0])


def save(a, name, dtype):
    img = nib.Nifti1Image(np.asarray(a, dtype=dtype), EYE)
    img.set_qform(EYE, code=1)
    img.set_sform(EYE, code=1)
    nib.save(img, f"tests/data/{name}")


def warp(v, flow, order):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in v.shape], indexing="ij"), 0)
    c = (grid + flow).reshape(3, -1)
    return map_coordinates(v, c, order=order, mode="grid-constant", cval=0).reshape(v.shape)


def field_b(shape):
    A = [2.4731, 1.9873, 1.5127]  # not half-integers: no exact half-voxel ties
    k = [(1.0, 2.0, 1.0), (2.0, 1.0, 1.0), (1.0, 1.0, 2.0)]
    phi = [0.3, 1.1, 2.0]
    p = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), 0)
    f = np.zeros((3,) + shape)
    for c in range(3):
        arg = sum(p[a] * k[c][a] / shape[a] for a in range(3))
        f[c] = A[c] * np.sin(2 * np.pi * arg + phi[c])
    return f.astype(np.float32).astype(np.float64)


def main():
    rng = np.random.default_rng(0)
    img = np.asarray(nib.load(f"{SH}/deepreg-prostate/test/moving_images/case000025.nii.gz")
                     .dataobj, np.float64)[16:48, 16:48, 20:40]
    img = ((img - img.min()) / (img.max() - img.min())).astype(np.float32)
    oh = np.asarray(nib.load(f"{SH}/deepreg-prostate/test/moving_labels/case000025.nii.gz")
                    .dataobj)[16:48, 16:48, 20:40, :]
    seg = np.zeros(img.shape, np.int16)
    for c in range(oh.shape[3]):
        seg[oh[..., c] != 0] = c + 1
    low = rng.normal(0, 1, (3, 5, 5, 4))
    flow = np.stack([zoom(low[c], np.array(img.shape) / low.shape[1:], order=3) for c in range(3)])
    flow = 3.0 * flow / np.abs(flow).max()
    # Quantised to 1/256 voxel plus 1/1024 (exact in float32; compresses well; no p + u lands
    # exactly on a half-voxel, where SciPy rounds half up and grid_sample half to even).
    flow = (np.round(flow * 256) / 256 + 1 / 1024).astype(np.float32)
    save(img, "warp_a_moving.nii.gz", np.float32)
    save(seg, "warp_a_seg.nii.gz", np.int16)
    save(np.moveaxis(flow, 0, -1), "warp_a_flow.nii.gz", np.float32)
    f64 = flow.astype(np.float64)
    save(warp(img.astype(np.float64), f64, 1), "warp_a_linear.nii.gz", np.float32)
    save(warp(seg.astype(np.float64), f64, 0), "warp_a_nearest.nii.gz", np.int16)
    segb = np.asarray(nib.load(f"{SH}/totalseg-abdomen/example_seg.nii.gz").dataobj, np.int16)
    save(warp(segb.astype(np.float64), field_b(segb.shape), 0), "warp_b_nearest.nii.gz",
         np.int16)
    print("wrote tests/data/warp_a_*.nii.gz, warp_b_nearest.nii.gz")


if __name__ == "__main__":
    main()
