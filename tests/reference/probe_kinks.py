"""probe_kinks.py [CONFIG...] — how close the golden point of each network golden config lies to
the loss's kinks (NET_GOLDEN.md "Tolerances"): for every LeakyReLU input, the distance of each
unit from 0 in units of that tensor's std; for every warp, the distance of each sample
coordinate from an integer (a trilinear cell boundary), in voxels. Prints the counts within
1e-5 and 1e-4 and the closest tensors. A research aid for choosing a golden point with a
margin from every kink (the gradients' 1e-3 criterion of issue 5); writes nothing.
Run from the repository root; needs torch, transformers and ../shared (as make_net_golden.py).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llm_morph_ref as R  # noqa: E402
import make_net_golden as G  # noqa: E402

rec = []
_lrelu, _warp = R.lrelu, R.warp


def spy_lrelu(x):
    with torch.no_grad():
        s = x.detach().abs().double()
        d = s / (s.flatten().std().item() + 1e-300)
        rec.append(("lrelu", tuple(x.shape), d.min().item(), int((d < 1e-5).sum()),
                    int((d < 1e-4).sum()), x.numel()))
    return _lrelu(x)


def spy_warp(src, u, padding="zeros"):
    with torch.no_grad():
        ud = u.detach().double()
        d = (ud - torch.round(ud)).abs()  # the grid is integral: frac(coordinate) = frac(u)
        rec.append(("warp", tuple(u.shape), d.min().item(), int((d < 1e-5).sum()),
                    int((d < 1e-4).sum()), u.numel()))
    return _warp(src, u, padding)


def main():
    names = sys.argv[1:] or [c[0] for c in G.CONFIGS]
    R.set_determinism(threads=max(1, os.cpu_count() or 1))
    R.lrelu, R.warp = spy_lrelu, spy_warp
    model = R.load_stories()
    for name, shape, half, variant, _ in G.CONFIGS:
        if name not in names:
            continue
        rec.clear()
        t0 = time.time()
        G.evaluate(model, shape, half, torch.float64, variant=variant)
        print(f"{name}: float64 evaluation {time.time() - t0:.1f} s")
        for kind in ("lrelu", "warp"):
            r = [x for x in rec if x[0] == kind]
            print(f"  {kind}: {len(r)} calls, {sum(x[5] for x in r)} units; within 1e-5: "
                  f"{sum(x[3] for x in r)}, within 1e-4: {sum(x[4] for x in r)}")
            for x in sorted(r, key=lambda x: x[2])[:3]:
                print(f"    {x[1]}  min distance {x[2]:.2e}  (<1e-5: {x[3]}, <1e-4: {x[4]})")


if __name__ == "__main__":
    main()
