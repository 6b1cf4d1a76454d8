#!/usr/bin/env python3
"""PyTorch MEMIT / AlphaEdit / ENCORE edit (kmeng01/memit, jianghoucheng/AlphaEdit, ENCORE style) on SmolLM2 from the
GGUF, driven by a JSON job that `mesa-bench memit` writes (the same token ids mesa uses).

    PY=~/.local/share/mesa/refenv/bin/python
    $PY ops/reference/memit_reference.py --job job.json [--threads 1] > result.json

One edit of one request, all on CPU in float32 (solves in float64), parameters frozen:

  z        δ on the residual after the last edited layer L (a forward hook on layers[L] adds δ at every
           prompt's subject position), NLL + KL + weight decay, Adam, clamp to clamp·‖h_L‖; z = h_L + δ,
           h_L from the bare prompt (compute_z). With early_stop_top (ENCORE's most-probable early stop)
           the loop also ends, before the step, the early_stop_top_checks-th time every target token is
           the argmax of its row.
  spread   for each edited layer l in ascending order, on the partially edited model: the key K (the
           template-weighted mean input of layers[l].mlp.down_proj at the subject's last token over the
           key prompts), the residual gap (z − h_L(current)) / (layers left), and
             MEMIT:     X = (λC + KKᵀ)⁻¹K
             AlphaEdit: X = (P(KKᵀ + K_pK_pᵀ) + αI)⁻¹PK   (P from eigh(C), smallest eigenvalues up to
                        nullspace_energy of the trace; computed once, untimed, like the cached statistics)
             ENCORE:    X = (λC + μI + K_pK_pᵀ + KKᵀ)⁻¹K     (μ = update_norm_lambda)
           (one edit from a fresh state: no kept keys, K_pK_pᵀ = 0)
           ΔW = R Xᵀ added to layers[l].mlp.down_proj.weight.

The edit runs once untimed, then `repeats` times timed with the weights restored in between. One
JSON object goes to stdout: median phase times, δ's norm and the per-layer ‖ΔW‖.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_fixtures import log  # noqa: E402
from rome_reference import delta_batch, load_model, right_pad  # noqa: E402


def read_stats(path: str) -> np.ndarray:
    """C from a mesa key-statistics file: "MESASTAT", u64 header length, JSON header, float32 payload."""
    raw = Path(path).read_bytes()
    assert raw[:8] == b"MESASTAT", f"{path}: not a mesa statistics file"
    n = int.from_bytes(raw[8:16], "little")
    header = json.loads(raw[16:16 + n])
    dim = header["dim"]
    return np.frombuffer(raw[16 + n:], dtype="<f4").reshape(dim, dim).astype(np.float64)


def run_edit(model, job, stats, projectors, torch):
    layers = job["layers"]
    L = layers[-1]
    rw, kl = job["rewrite_prompts"], job.get("kl_prompts") or []
    n_rw, n_kl = len(rw), len(kl)
    steps, lr, wd = int(job["steps"]), float(job["lr"]), float(job["weight_decay"])
    clamp, kl_factor, early = float(job["clamp_norm_factor"]), float(job["kl_factor"]), float(job["early_stop_loss"])
    stop_top, top_checks, on_top = bool(job.get("early_stop_top", False)), int(job.get("early_stop_top_checks", 1)), 0
    times = {}

    # ---- z ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    ids, mask, rows, pos, t_row, t_pos, t_tok, t_w, kl_rows, kl_pos = delta_batch(rw, kl)
    d = model.config.hidden_size
    delta = torch.zeros(d, dtype=torch.float32, requires_grad=True)
    state = {"h": None}

    def add_delta(mod, args, out):
        hs = out[0] if isinstance(out, tuple) else out
        if state["h"] is None:
            state["h"] = hs[0, pos[0]].detach().clone()
        hs = hs.index_put((rows, pos), delta.unsqueeze(0).expand(len(rows), -1), accumulate=True)
        return (hs,) + tuple(out[1:]) if isinstance(out, tuple) else hs

    opt = torch.optim.Adam([delta], lr=lr)
    kl_init = None
    losses = []
    handle = model.model.layers[L].register_forward_hook(add_delta)
    try:
        for it in range(steps):
            opt.zero_grad()
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            lp = torch.log_softmax(logits[t_row, t_pos], dim=-1)
            nll = ((-lp.gather(1, t_tok[:, None])[:, 0]) * t_w).sum() / n_rw
            kl_loss = torch.zeros(())
            if n_kl:
                kl_lp = torch.log_softmax(logits[kl_rows, kl_pos], dim=-1)
                if kl_init is None:
                    kl_init = kl_lp.detach().clone()
                kl_loss = kl_factor * torch.nn.functional.kl_div(kl_init, kl_lp, log_target=True, reduction="batchmean")
            h = state["h"]
            loss = nll + kl_loss + wd * (torch.norm(delta) / torch.norm(h) ** 2)
            losses.append(float(loss.detach()))
            if stop_top and bool((logits[t_row, t_pos].argmax(dim=-1) == t_tok).all()):
                on_top += 1
                if on_top >= top_checks:
                    break
            if losses[-1] < early or it == steps - 1:
                break
            loss.backward()
            opt.step()
            max_norm = clamp * h.norm()
            if delta.norm() > max_norm:
                with torch.no_grad():
                    delta[...] = delta * max_norm / delta.norm()
    finally:
        handle.remove()
    z = (state["h"] + delta.detach()).double()
    times["z_s"] = time.perf_counter() - t0

    # ---- spread over the layers ---------------------------------------------------------------
    t0 = time.perf_counter()
    key_prompts = job["key_prompts"]
    weights = torch.tensor(job["key_weights"], dtype=torch.float64)
    bare = job["bare_prompt"]
    norms = []
    for i, l in enumerate(layers):
        kp_ids, kp_mask = right_pad([p["tokens"] for p in key_prompts])
        kp_pos = torch.tensor([p["position"] for p in key_prompts])
        cap = {}
        down = model.model.layers[l].mlp.down_proj
        h1 = down.register_forward_pre_hook(lambda mod, args: cap.__setitem__("k", args[0][torch.arange(len(key_prompts)), kp_pos].detach().clone()))
        with torch.no_grad():
            model(input_ids=kp_ids, attention_mask=kp_mask, use_cache=False, logits_to_keep=1)
        h1.remove()
        k = (cap["k"].double() * weights[:, None]).sum(0)[:, None]  # [ff, 1]
        h2 = model.model.layers[L].register_forward_hook(
            lambda mod, args, out: cap.__setitem__("h", (out[0] if isinstance(out, tuple) else out)[0, bare["position"]].detach().clone()))
        with torch.no_grad():
            model(input_ids=torch.tensor([bare["tokens"]]), use_cache=False, logits_to_keep=1)
        h2.remove()
        r = ((z - cap["h"].double()) / (len(layers) - i))[:, None]  # [d, 1]
        if job["method"] == "memit":
            a = float(job["mom2_update_weight"]) * stats[l] + k @ k.T
            x = torch.linalg.solve(a, k)
        elif job["method"] == "encore":
            eye = torch.eye(k.shape[0], dtype=torch.float64)
            a = float(job["mom2_update_weight"]) * stats[l] + float(job["update_norm_lambda"]) * eye + k @ k.T
            x = torch.linalg.solve(a, k)
        else:
            p = projectors[l]
            # One edit from a fresh state: no kept keys, K_pK_pᵀ = 0.
            a = p @ (k @ k.T) + float(job["l2"]) * torch.eye(k.shape[0], dtype=torch.float64)
            x = torch.linalg.solve(a, p @ k)
        dw = (r @ x.T).float()
        with torch.no_grad():
            down.weight.add_(dw)
        norms.append(float(dw.norm()))
    times["spread_s"] = time.perf_counter() - t0
    times["edit_s"] = times["z_s"] + times["spread_s"]
    return {"times": times, "losses": losses, "delta_norm": float(delta.detach().norm()), "update_norms": norms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    job = json.loads(args.job.read_text())
    model = load_model(Path(job["model"]).resolve())
    ridge = float(job["mom2_ridge"])
    stats, projectors = {}, {}
    for l, path in zip(job["layers"], job["statistics"]):
        c = torch.from_numpy(read_stats(path))
        c = c + ridge * torch.trace(c) / c.shape[0] * torch.eye(c.shape[0], dtype=torch.float64)
        stats[l] = c
        if job["method"] == "alphaedit":
            vals, vecs = torch.linalg.eigh(torch.from_numpy(read_stats(path)))
            trace, kept, energy = float(vals.clamp(min=0).sum()), 0, 0.0
            while kept < len(vals) and energy + max(0.0, float(vals[kept])) <= float(job["nullspace_energy"]) * trace:
                energy += max(0.0, float(vals[kept])); kept += 1
            u = vecs[:, :kept]
            projectors[l] = u @ u.T
    originals = {l: model.model.layers[l].mlp.down_proj.weight.detach().clone() for l in job["layers"]}
    runs = []
    for rep in range(int(job.get("repeats", 1)) + 1):
        with torch.no_grad():
            for l, w in originals.items():
                model.model.layers[l].mlp.down_proj.weight.copy_(w)
        res = run_edit(model, job, stats, projectors, torch)
        log(f"run {rep}: " + ", ".join(f"{k} {v:.3f}" for k, v in res["times"].items()) + f"; |δ| {res['delta_norm']:.4f}")
        if rep > 0:
            runs.append(res)
    last = runs[-1]
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "method": job["method"], "repeats": len(runs),
        "phases": {k: statistics.median(r["times"][k] for r in runs) for k in last["times"]},
        "steps_run": len(last["losses"]), "losses": last["losses"], "delta_norm": last["delta_norm"], "update_norms": last["update_norms"],
    }), flush=True)


if __name__ == "__main__":
    main()
