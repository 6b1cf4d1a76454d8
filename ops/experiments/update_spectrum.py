#!/usr/bin/env python3
"""The spectrum of a stream's accumulated update against the base weights, per edited tensor.

PRUNE (perturbation-restrained sequential editing) holds that a long stream wears a model out because
the accumulated update ΔW = W − W₀ grows singular values past W₀'s largest, raising W's condition
number, and restrains those values. This measures whether that is what happens here.

Both arguments are `mesa export --format safetensors` directories of the same model: snapshot 0 of a
journal (the base) and a later snapshot, e.g.

  mesa export --store $MESA_HOME/runs/<journal>/lmdb --snapshot 0 --format safetensors --out /tmp/s0
  mesa export --store $MESA_HOME/runs/<journal>/lmdb --snapshot 10 --format safetensors --out /tmp/s10
  python3 ops/experiments/update_spectrum.py /tmp/s0 /tmp/s10 --layers 3 4 5 6 7 --label "…" [--out FILE.md]

Per tensor (d_model × d_ff, the MLP down projections): W₀'s largest and median singular value and its
Frobenius norm; ΔW's five largest singular values, its Frobenius norm and ‖ΔW‖_F/‖W₀‖_F, its
effective rank (Σσ)²/Σσ², how many of its singular values exceed W₀'s largest (what PRUNE would
restrain) and W₀'s median; and the condition number σ_max/σ_min of W₀ and W. Singular values in
float64 from the float32 tensors.
"""
import argparse
import json
import struct
import sys

import numpy as np


def load(directory, names):
    """names → float64 arrays (shape as stored: d_model × d_ff for down_proj) from model.safetensors."""
    with open(f"{directory}/model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        out = {}
        for name in names:
            meta = header[name]
            if meta["dtype"] != "F32":
                sys.exit(f"{name}: dtype {meta['dtype']}, expected F32")
            a, b = meta["data_offsets"]
            f.seek(8 + n + a)
            out[name] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(meta["shape"]).astype(np.float64)
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("edited")
    p.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    p.add_argument("--label", default="")
    p.add_argument("--out")
    args = p.parse_args()
    names = [f"model.layers.{l}.mlp.down_proj.weight" for l in args.layers]
    w0, w = load(args.base, names), load(args.edited, names)
    lines = [f"# Accumulated update spectrum{': ' + args.label if args.label else ''}", "",
             "| layer | σmax(W₀) | median σ(W₀) | ‖W₀‖_F | top-5 σ(ΔW) | ‖ΔW‖_F | ‖ΔW‖/‖W₀‖ | eff. rank ΔW | #σ(ΔW) > σmax(W₀) | #σ(ΔW) > median σ(W₀) | cond W₀ | cond W |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for layer, name in zip(args.layers, names):
        s0 = np.linalg.svd(w0[name], compute_uv=False)
        d = np.linalg.svd(w[name] - w0[name], compute_uv=False)
        s = np.linalg.svd(w[name], compute_uv=False)
        lines.append(
            f"| {layer} | {s0[0]:.2f} | {np.median(s0):.2f} | {np.linalg.norm(s0):.1f} | "
            f"{' '.join(f'{x:.2f}' for x in d[:5])} | {np.linalg.norm(d):.1f} | {np.linalg.norm(d) / np.linalg.norm(s0):.3f} | "
            f"{d.sum() ** 2 / (d ** 2).sum():.0f} | {(d > s0[0]).sum()} | {(d > np.median(s0)).sum()} | "
            f"{s0[0] / s0[-1]:.1f} | {s[0] / s[-1]:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
