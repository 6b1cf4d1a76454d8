#!/usr/bin/env python3
"""A linear model of sequential editing at one layer, to compare the closed forms' generic damage.

N edits arrive one at a time; edit i has a key k_i ~ N(0, C) (C: the layer's key statistics from
mesa's state directory) and a desired output r_i [d]. Each solver writes ΔW = (r_i − D·k_i)·xᵀ on
top of the accumulated D (the residual on the current weights, as mesa recomputes it) and keeps
k_i k_iᵀ for the next edits. After N edits the script prints:
  - generic damage tr(D C Dᵀ) = E‖D·k‖² over keys k of generic text (what AlphaEdit's null space is
    meant to hold at zero), also divided by the squared share delivered (the damage for the same
    effect: damage scales with the square of what is written);
  - the edits' residual error mean ‖D·k_i − r_i‖²/‖r_i‖² and their delivered share.
Solvers: AlphaEdit, x = (P(K_pK_pᵀ + kkᵀ) + αI)⁻¹Pk, P the projector on C's eigenvectors holding
`cut` of its trace, α = c·tr(PC); ENCORE without μ, x = (λC + K_pK_pᵀ + kkᵀ)⁻¹k (recursive least
squares: the same D as the global minimum-C-energy solution that interpolates every edit).
It ignores the other layers and the network after the edited layer: it compares the solvers'
arithmetic, not edit quality.

    python3 ops/experiments/solver_sim.py [--edits 200] [--layer 7] [--out ops/experiments/results/solver-sim.md]
"""
import argparse
import glob
import json
import os
import time

import numpy as np


def load_statistics(layer):
    home = os.environ.get("MESA_HOME", os.path.expanduser("~/.local/share/mesa"))
    path = sorted(glob.glob(f"{home}/state/*/stats/*layer{layer}-n300000-*.stat"))[0]
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[8:16], "little")
    dim = json.loads(raw[16:16 + n])["dim"]
    return path, np.frombuffer(raw[16 + n:], dtype=np.float32).reshape(dim, dim).astype(np.float64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--layer", type=int, default=7)
    ap.add_argument("--out")
    a = ap.parse_args()
    path, c = load_statistics(a.layer)
    ff, d = c.shape[0], 64
    lam, v = np.linalg.eigh(c)   # ascending
    lam = np.maximum(lam, 0)
    rng = np.random.default_rng(0)
    keys = (v * np.sqrt(lam)) @ rng.standard_normal((ff, a.edits))   # [ff, N] ~ N(0, C)
    targets = rng.standard_normal((d, a.edits))                      # [d, N]
    lines = [f"statistics: {path}", f"edits: {a.edits}, key width {ff}, output width {d}, keys ~ N(0, C)", "",
             "| solver | tr(DCDᵀ) | per edit | per edit / delivered² | residual error | delivered |", "|---|---:|---:|---:|---:|---:|"]

    def run(name, solve):
        acc, kept, t0 = np.zeros((d, ff)), np.zeros((ff, ff)), time.time()
        for i in range(a.edits):
            k = keys[:, i]
            x = solve(k, kept)
            acc += np.outer(targets[:, i] - acc @ k, x)
            kept += np.outer(k, k)
        damage = np.trace(acc @ c @ acc.T)
        error = np.mean(np.sum((acc @ keys - targets) ** 2, 0) / np.sum(targets ** 2, 0))
        delivered = np.mean(np.sum((acc @ keys) * targets, 0) / np.sum(targets ** 2, 0))
        lines.append(f"| {name} | {damage:.3f} | {damage / a.edits:.4f} | {damage / a.edits / delivered ** 2:.4f} | {error:.3f} | {delivered:.3f} |")
        print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)

    for cut, scale in [(0.3, 0.3), (0.5, 0.3)]:
        n = int((np.cumsum(lam) <= cut * lam.sum()).sum())
        p = v[:, :n] @ v[:, :n].T
        alpha = scale * lam[:n].sum()
        run(f"AlphaEdit, cut {cut:.0%}, α = {scale}·tr(PC)", lambda k, kept: np.linalg.solve(p @ (kept + np.outer(k, k)) + alpha * np.eye(ff), p @ k))
    run("ENCORE without μ, λ = 1", lambda k, kept: np.linalg.solve(c + kept + np.outer(k, k), k))
    text = "\n".join(lines) + "\n"
    if a.out:
        open(a.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
