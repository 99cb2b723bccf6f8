#!/usr/bin/env python3
"""Write two small NIfTI files with nibabel and tests/data/nibabel_ref.json, which
records what nibabel reads from them and from a few real files in ../shared/data.

Run from the repository root:  python3 tests/reference/make_nifti_ref.py
Needs: numpy, nibabel. Deterministic, no network. Real files that are missing
(../shared absent) are skipped with a message.

Index convention: array axis 0 is nibabel's i/x (our "D"), axis 2 is k/z ("W");
"samples" indices are [i, j, k(, t)] in nibabel order and index the SCALED data
img.get_fdata(dtype=float64) directly.
"""
import glob
import json
import math
import os
import sys

import numpy as np
import nibabel as nib
from nibabel.openers import ImageOpener

OUT_JSON = "tests/data/nibabel_ref.json"
OUT_N2 = "tests/data/nifti2_small.nii.gz"
OUT_N1 = "tests/data/nifti1_4d.nii"
SHARED = "../shared"

REAL = [
    "data/totalseg-abdomen/example_ct_sm.nii.gz",
    "data/totalseg-abdomen/example_mr_sm.nii.gz",
    "data/totalseg-abdomen/example_seg.nii.gz",
    "data/totalseg-abdomen/example_seg_mr.nii.gz",
    "data/deepreg-prostate/test/moving_images/case000025.nii.gz",
    "data/deepreg-prostate/test/fixed_images/case000025.nii.gz",
    "data/deepreg-prostate/test/moving_labels/case000025.nii.gz",
    "data/deepreg-prostate/test/fixed_labels/case000025.nii.gz",
]


def rot(axis, deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def make_nifti2():
    raw = (np.arange(60).reshape((5, 4, 3), order="F") * 3 - 7).astype(np.int16)
    zooms = np.array([1.5, 2.0, 2.5])
    # sform: oblique (Rz 30 deg then Rx 15 deg), code 2 (aligned) -> this is img.affine
    sform = np.eye(4)
    sform[:3, :3] = rot(2, 30.0) @ rot(0, 15.0) @ np.diag(zooms)
    sform[:3, 3] = [-10.25, 20.5, -30.75]
    # qform: a DIFFERENT rigid transform with a reflection (qfac = -1), code 1 (scanner),
    # so a reader that wrongly prefers qform over sform is caught
    qform = np.eye(4)
    qform[:3, :3] = rot(1, -20.0) @ np.diag(zooms * [1, 1, -1])
    qform[:3, 3] = [5.0, -6.0, 7.0]
    img = nib.Nifti2Image(raw, sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(0.5, 10.0)
    img.to_filename(OUT_N2)
    print(f"nib.Nifti2Image(int16 (5,4,3) arange(60)*3-7 order F, sform oblique code 2, "
          f"qform reflected code 1, slope 0.5 inter 10).to_filename({OUT_N2!r})")


def make_nifti1_4d():
    data = ((np.arange(72).reshape((4, 3, 2, 3), order="F") * 7) % 5).astype(np.uint8)
    qform = np.diag([0.4, 0.4, 0.4, 1.0])
    qform[:3, 3] = [-0.6, -0.4, -0.2]
    # sform holds different numbers but sform_code 0, so it must be ignored
    junk = np.diag([9.0, 9.0, 9.0, 1.0])
    junk[:3, 3] = [1.0, 2.0, 3.0]
    img = nib.Nifti1Image(data, qform)
    img.set_sform(junk, code=0)
    img.set_qform(qform, code=1)
    img.header.set_zooms((0.4, 0.4, 0.4, 2.5))
    img.header.set_xyzt_units("mm", "sec")
    img.to_filename(OUT_N1)
    print(f"nib.Nifti1Image(uint8 (4,3,2,3) (arange(72) order F *7)%5, qform 0.4 mm code 1, "
          f"sform code 0 (junk values), TR 2.5).to_filename({OUT_N1!r})")


def num(x):
    x = float(x)
    return None if not math.isfinite(x) else x


def flat16(m):
    return [float(v) for v in np.asarray(m, dtype=np.float64).reshape(-1)]


def raw_header(path, img):
    """The header as stored on disk (nibabel's loaded img.header has scl_* reset)."""
    with ImageOpener(path) as f:
        return img.header_class.from_fileobj(f)


def sample_indices(data, rng):
    shape = data.shape
    last = [n - 1 for n in shape]
    idx = [[0] * len(shape), last,
           [last[0]] + [0] * (len(shape) - 1),
           [0] + last[1:]]
    for _ in range(2):  # uniform interior
        idx.append([int(rng.integers(1, n - 1)) if n > 2 else int(rng.integers(0, n))
                    for n in shape])
    nz = np.flatnonzero(data.reshape(-1, order="C"))
    for _ in range(2):  # random nonzero voxels (uniform interior if all zero)
        if nz.size:
            flat = int(nz[int(rng.integers(0, nz.size))])
            idx.append([int(v) for v in np.unravel_index(flat, shape, order="C")])
        else:
            idx.append([int(rng.integers(0, n)) for n in shape])
    return idx


def describe(path):
    img = nib.load(path)
    hdr = raw_header(path, img)
    data = img.get_fdata(dtype=np.float64)
    slope, inter = hdr.get_slope_inter()
    rng = np.random.default_rng(0)
    samples = [{"index": ix, "value": float(data[tuple(ix)])}
               for ix in sample_indices(data, rng)]
    return {
        "shape": [int(n) for n in img.shape],
        "datatype": int(hdr["datatype"]),
        "bitpix": int(hdr["bitpix"]),
        "numpy_dtype": str(hdr.get_data_dtype()),
        "nifti_version": 2 if int(hdr["sizeof_hdr"]) == 540 else 1,
        "vox_offset": float(hdr["vox_offset"]),
        "affine": flat16(img.affine),
        "qform": flat16(hdr.get_qform()),
        "sform": flat16(hdr.get_sform()),
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "quatern_bcd": [float(hdr["quatern_b"]), float(hdr["quatern_c"]), float(hdr["quatern_d"])],
        "qoffset_xyz": [float(hdr["qoffset_x"]), float(hdr["qoffset_y"]), float(hdr["qoffset_z"])],
        "pixdim": [float(v) for v in hdr["pixdim"]],
        "zooms": [float(v) for v in hdr.get_zooms()],
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
        "raw_scl_slope": num(hdr["scl_slope"]),
        "raw_scl_inter": num(hdr["scl_inter"]),
        "xyzt_units": int(hdr["xyzt_units"]),
        "min": float(data.min()),
        "max": float(data.max()),
        "sum": float(data.sum(dtype=np.float64)),
        "nonzero": int(np.count_nonzero(data)),
        "samples": samples,
    }


def main():
    if not os.path.isdir("tests/data"):
        sys.exit("run from the repository root (tests/data not found)")
    make_nifti2()
    make_nifti1_4d()
    files = {}
    for rel in (OUT_N2, OUT_N1):
        files[rel] = describe(rel)
    real = list(REAL)
    synth = sorted(glob.glob(os.path.join(SHARED, "data/synthseg-label-maps/*.nii*")))
    if synth:
        real.append(os.path.relpath(synth[0], SHARED))
    for rel in real:
        p = os.path.join(SHARED, rel)
        if not os.path.exists(p):
            print(f"skip {rel}: {p} not found")
            continue
        files[rel] = describe(p)
        print(f"nib.load({p!r}): shape {files[rel]['shape']}")
    doc = {
        "nibabel_version": nib.__version__,
        "note": "affine/qform/sform are 4x4 row-major; samples index get_fdata() in nibabel "
                "axis order [i,j,k(,t)]; scl_* null when unset (NaN or 0)",
        "files": files,
    }
    with open(OUT_JSON, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT_JSON} ({len(files)} files)")


if __name__ == "__main__":
    main()
