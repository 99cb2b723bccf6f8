#!/usr/bin/env python3
"""Write the lm-metrics fixtures (tests/data/metrics_*) and what SciPy, NumPy and SimpleITK
compute from them: Dice per label (vxm), HD95 in the medpy and MONAI conventions (scipy
binary_erosion borders + distance_transform_edt with sampling), the Jacobian determinant by
vxm's np.gradient scheme and by sitk.DisplacementFieldJacobianDeterminant, folding and SDlogJ.

Run from the repository root:  python3 tests/reference/make_metrics_ref.py
Needs: numpy, scipy, nibabel, safetensors, SimpleITK; ../shared/data for the real label maps.
Deterministic (seeded), no network.

Cases (inputs are real label maps warped by random smooth fields with map_coordinates order 0):
  ct  totalseg-abdomen example_seg.nii.gz cropped to 104x80x30, uint8, written with an
      anisotropic spacing (1.5, 0.8, 3.0) mm: metrics_ct_fixed / _moving / _warped.nii.gz
  pr  deepreg-prostate test moving_labels case000025 (3 binary channels -> labels 1..3, later
      channels win), int16, 64x64x60, 0.4 mm: metrics_pr_fixed / _warped.nii.gz
  jac one stream record metrics_jac.safetensors: fixed_seg U8 and warped_seg I16 [1,1,20,16,12]
      cut from the ct case, flow F32 [1,3,20,16,12] (voxels, with folds), metadata pair and
      spacing; metrics_jac_ref.safetensors holds the reference determinants det_vxm (F64),
      det_sitk (F32, SimpleITK on the float32 field), det_sitk64 (F64, on the float64 field).
metrics_ref.json has every number; metrics_expected.tsv the pair means the CLI test checks.
"""
import json
import os
import sys

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from safetensors.numpy import save, save_file
from scipy.ndimage import (binary_erosion, distance_transform_edt, generate_binary_structure,
                           map_coordinates, zoom)

SHARED = "../shared/data"
OUT = "tests/data"


# ---- the peers' metric code, written out --------------------------------------------------

def border(m):
    fp = generate_binary_structure(3, 1)
    return m ^ binary_erosion(m, structure=fp, iterations=1)


def surface_distances(a, b, spacing):
    """medpy __surface_distances(result=a, reference=b): distances from a's border to b's."""
    return distance_transform_edt(~border(b), sampling=spacing)[border(a)]


def hd95(a, b, spacing, mode):
    if not a.any() or not b.any():
        return None
    d1 = surface_distances(a, b, spacing)
    d2 = surface_distances(b, a, spacing)
    if mode == "medpy":
        return float(np.percentile(np.hstack((d1, d2)), 95))
    return float(max(np.percentile(d1, 95), np.percentile(d2, 95)))


def dice(a, b):
    """vxm py.utils.dice for one label"""
    top = 2 * np.sum(np.logical_and(a, b))
    bottom = np.sum(a) + np.sum(b)
    bottom = np.maximum(bottom, np.finfo(float).eps)
    return float(top / bottom)


def jac_vxm(flow):
    """vxm jacobian_determinant on disp [D,H,W,3] from our flow [3,D,H,W]"""
    disp = np.moveaxis(flow, 0, -1)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in disp.shape[:-1]], indexing="ij"), 3)
    J = np.gradient(disp + grid)
    dx, dy, dz = J[0], J[1], J[2]
    j0 = dx[..., 0] * (dy[..., 1] * dz[..., 2] - dy[..., 2] * dz[..., 1])
    j1 = dx[..., 1] * (dy[..., 0] * dz[..., 2] - dy[..., 2] * dz[..., 0])
    j2 = dx[..., 2] * (dy[..., 0] * dz[..., 1] - dy[..., 1] * dz[..., 0])
    return j0 - j1 + j2


def jac_sitk(flow):
    """MambaMorph: sitk.DisplacementFieldJacobianDeterminant(GetImageFromArray(flow[D,H,W,3]))"""
    img = sitk.GetImageFromArray(np.moveaxis(flow, 0, -1), isVector=True)
    return sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(img))


def jac_stats(det, sitk_mode):
    det = det.astype(np.float64)
    folded = int(np.sum(det < 0) if sitk_mode else np.sum(det <= 0))
    logj = np.log(np.clip(det, 1e-9, 1e9))
    return {"folded": folded, "pct": 100.0 * folded / det.size, "sdlogj": float(np.std(logj)),
            "min": float(det.min()), "max": float(det.max())}


def score(warped, fixed, spacing, ignore=(0,)):
    """per label of the union (ignore removed) and the pair means lm-metrics reports"""
    labels = [int(v) for v in np.union1d(np.unique(warped), np.unique(fixed)) if v not in ignore]
    per = {}
    for lab in labels:
        a, b = warped == lab, fixed == lab
        per[str(lab)] = {"dice": dice(a, b), "hd95_medpy": hd95(a, b, spacing, "medpy"),
                         "hd95_monai": hd95(a, b, spacing, "monai")}
    out = {"labels": labels, "per_label": per,
           "dice_mean": 100.0 * float(np.mean([per[str(l)]["dice"] for l in labels]))}
    for m in ("medpy", "monai"):
        v = [per[str(l)]["hd95_" + m] for l in labels if per[str(l)]["hd95_" + m] is not None]
        out["hd95_mean_" + m] = float(np.mean(v)) if v else None
        out["hd95_skipped_" + m] = len(labels) - len(v)
    return out


# ---- inputs ---------------------------------------------------------------------------------

def smooth_field(rng, shape, amp, coarse):
    c = rng.standard_normal((3,) + tuple(coarse))
    f = np.stack([zoom(c[i], [s / k for s, k in zip(shape, coarse)], order=3) for i in range(3)])
    assert f.shape[1:] == tuple(shape)
    return (amp * f).astype(np.float32)


def warp_labels(lab, u):
    """warped(p) = lab(p + u(p)), nearest, 0 outside"""
    grid = np.indices(lab.shape).astype(np.float64)
    return map_coordinates(lab, grid + u.astype(np.float64), order=0, mode="constant",
                           cval=0).astype(lab.dtype)


def write_nii(path, arr, spacing):
    """writes, and returns the spacing as the header stores it (float32), which lm-metrics and
    the reference numbers then both use"""
    img = nib.Nifti1Image(arr, np.diag(list(spacing) + [1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return tuple(float(z) for z in nib.load(path).header.get_zooms()[:3])


def main():
    if not os.path.isdir(SHARED):
        sys.exit("make_metrics_ref.py: ../shared/data is needed for the real label maps")
    rng = np.random.default_rng(20261128)
    ref = {"versions": {"numpy": np.__version__, "scipy": __import__("scipy").__version__,
                        "SimpleITK": sitk.Version.VersionString()}}

    # ct: real abdominal label map, anisotropic spacing
    seg = np.asanyarray(nib.load(f"{SHARED}/totalseg-abdomen/example_seg.nii.gz").dataobj)
    fixed = np.ascontiguousarray(seg[8:112, 16:96, 0:30]).astype(np.uint8)
    sp = (1.5, 0.8, 3.0)
    moving = warp_labels(fixed, smooth_field(rng, fixed.shape, 3.0, (4, 4, 3)))
    warped = warp_labels(fixed, smooth_field(rng, fixed.shape, 1.0, (4, 4, 3)))
    for name, arr in (("fixed", fixed), ("moving", moving), ("warped", warped)):
        sp_file = write_nii(f"{OUT}/metrics_ct_{name}.nii.gz", arr, sp)
    sp = sp_file
    ref["ct"] = {"spacing": sp, "shape": list(fixed.shape),
                 "warped": score(warped, fixed, sp), "moving": score(moving, fixed, sp)}

    # pr: prostate gland and landmarks, int16
    ch = np.asanyarray(
        nib.load(f"{SHARED}/deepreg-prostate/test/moving_labels/case000025.nii.gz").dataobj)
    lab = np.zeros(ch.shape[:3], np.int16)
    for c in range(ch.shape[3]):
        lab[ch[..., c] > 0.5] = c + 1
    sp = (0.4, 0.4, 0.4)
    warped = warp_labels(lab, smooth_field(rng, lab.shape, 2.0, (4, 4, 4)))
    sp = write_nii(f"{OUT}/metrics_pr_fixed.nii.gz", lab, sp)
    write_nii(f"{OUT}/metrics_pr_warped.nii.gz", warped, sp)
    ref["pr"] = {"spacing": sp, "shape": list(lab.shape), "warped": score(warped, lab, sp)}

    # jac: a small record with a folding field
    shape = (20, 16, 12)
    fseg = np.ascontiguousarray(fixed[40:60, 30:46, 6:18])
    flow = smooth_field(rng, shape, 1.3, (5, 4, 3))
    wseg = warp_labels(fseg, flow).astype(np.int16)
    sp = (2.0, 1.5, 2.5)
    rec = {"fixed_seg": fseg[None, None], "warped_seg": wseg[None, None], "flow": flow[None]}
    meta = {"pair": "jac1", "spacing": json.dumps(list(sp), separators=(",", ":"))}
    # safetensors keeps metadata in a hash map whose order changes between calls: write until
    # the keys come out sorted, so that a rerun gives the same bytes
    for _ in range(1000):
        blob = save(rec, metadata=meta)
        n = int.from_bytes(blob[:8], "little")
        keys = list(json.loads(blob[8:8 + n])["__metadata__"].keys())
        if keys == sorted(keys):
            break
    else:
        sys.exit("make_metrics_ref.py: could not write sorted metadata")
    with open(f"{OUT}/metrics_jac.safetensors", "wb") as f:
        f.write(blob)
    dv = jac_vxm(flow)
    ds = jac_sitk(flow)
    ds64 = jac_sitk(flow.astype(np.float64))
    assert ds.dtype == np.float32 and ds64.dtype == np.float64 and dv.dtype == np.float64
    save_file({"det_vxm": dv, "det_sitk": ds, "det_sitk64": ds64},
              f"{OUT}/metrics_jac_ref.safetensors")
    ref["jac"] = {"spacing": sp, "shape": list(shape), "warped": score(wseg, fseg, sp),
                  "vxm": jac_stats(dv, False), "sitk": jac_stats(ds, True),
                  "sitk64": jac_stats(ds64, True)}

    with open(f"{OUT}/metrics_ref.json", "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(f"{OUT}/metrics_expected.tsv", "w") as f:
        f.write("case\tdice_mean\thd95_medpy\thd95_monai\tjac_pct\tsdlogj\n")
        for case, sub in (("ct", "warped"), ("ct", "moving"), ("pr", "warped"), ("jac", "warped")):
            s = ref[case][sub]
            jp = ref["jac"]["vxm"]["pct"] if case == "jac" else float("nan")
            sd = ref["jac"]["vxm"]["sdlogj"] if case == "jac" else float("nan")
            f.write(f"{case}_{sub}\t{s['dice_mean']:.10f}\t{s['hd95_mean_medpy']:.10f}\t"
                    f"{s['hd95_mean_monai']:.10f}\t{jp:.10f}\t{sd:.10f}\n")
    for k in ("ct", "pr", "jac"):
        s = ref[k]["warped"]
        print(f"{k}: {len(s['labels'])} labels, dice {s['dice_mean']:.3f}, "
              f"hd95 {s['hd95_mean_medpy']:.4f} (skipped {s['hd95_skipped_medpy']})")
    print("jac:", ref["jac"]["vxm"], ref["jac"]["sitk"])


if __name__ == "__main__":
    main()
