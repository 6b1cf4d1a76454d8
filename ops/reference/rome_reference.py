#!/usr/bin/env python3
"""Faithful PyTorch ROME edit (kmeng01/rome style) on SmolLM2 from the GGUF, driven by a JSON job.

    PY=~/.local/share/mesa/refenv/bin/python
    $PY ops/reference/rome_reference.py --job job.json [--threads 2] > result.json
    $PY ops/reference/rome_reference.py --write-example-job job.json [--layer 7] [--covariance C.f32|--random-covariance C.f32]

The job carries token ids (so mesa can feed exactly the same ones); see ops/reference/README.md
for the format. ONE JSON object goes to stdout; logs go to stderr.

What one edit does (all on CPU, float32, model parameters frozen, only δ has requires_grad):

  k_star       one no-grad forward of the right-padded batch of rewrite prompts (attention mask);
               a forward pre-hook on layers[L].mlp.down_proj reads its input (the MLP key,
               silu(gate(x))*up(x), width d_ff) at each prompt's `position`; k* = their mean.
  v_star       for it in range(steps): one forward of the right-padded batch rewrite + kl prompts
               with a forward hook on layers[L].mlp that adds δ to its output at every prompt's
               `position` (v_init = that output at rewrite_prompts[0].position, read on the first
               forward, before δ is added);
                 L_NLL = mean_prompts( mean_targets( -log_softmax(logits[pos])[token] ) )
                 L_KL  = kl_factor * kl_div(P_init, P_cur, log_target=True, batchmean)
                         (KL(P_cur || P_init) at the kl prompts' positions; P_init from forward 0)
                 L_wd  = weight_decay * ||δ|| / ||v_init||^2
               loss = sum; stop if loss < early_stop_loss or it == steps-1; else backward, Adam
               step (lr, torch defaults otherwise), then project δ into the ball of radius
               clamp_norm_factor*||v_init||.
  closed_form  u = C^-1 k* (float64 solve with the Cholesky factor of C computed once, before any
               timing) or u = k* without covariance; u /= ||u||; v* = W k* + δ;
               r = (v* - W k*) / (u·k*); W += r uᵀ (in place, float32). W = layers[L].mlp.down_proj.weight.
  eval         one forward per eval prompt on the edited model; token-averaged NLL over its targets.

The whole edit runs once untimed (warm-up), then `repeats` times timed, W restored in between;
the phases reported are medians. Vectors/losses are those of the last run (every run is identical;
this is checked and logged).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_fixtures import DEFAULT_MODEL, f32, f32list, log  # noqa: E402

PAD_ID = 2  # SmolLM2's padding token; its value is irrelevant (masked, right padding)


# --------------------------------------------------------------------------------------------
# Model / batching helpers
# --------------------------------------------------------------------------------------------

def load_model(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def right_pad(seqs: list[list[int]]):
    """(input_ids [B,T], attention_mask [B,T]) with right padding."""
    import torch

    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def delta_batch(rw: list[dict], kl: list[dict]):
    """The padded batch of rewrite + KL prompts and where δ enters and the loss reads it:
    (ids, mask, rows, pos, t_row, t_pos, t_tok, t_w, kl_rows, kl_pos). Targets are flattened with a
    weight 1/(n_targets of their prompt); the caller divides by the number of rewrite prompts."""
    import torch

    n_rw, n_kl = len(rw), len(kl)
    ids, mask = right_pad([p["tokens"] for p in rw] + [p["tokens"] for p in kl])
    rows = torch.arange(n_rw + n_kl)
    pos = torch.tensor([p["position"] for p in rw] + [p["position"] for p in kl], dtype=torch.long)
    t_row, t_pos, t_tok, t_w = [], [], [], []
    for i, p in enumerate(rw):
        for tp, tt in p["targets"]:
            t_row.append(i)
            t_pos.append(tp)
            t_tok.append(tt)
            t_w.append(1.0 / len(p["targets"]))
    return (ids, mask, rows, pos, torch.tensor(t_row), torch.tensor(t_pos), torch.tensor(t_tok),
            torch.tensor(t_w, dtype=torch.float32), torch.arange(n_rw, n_rw + n_kl), pos[n_rw:])


def check_prompts(job: dict) -> None:
    for kind in ("rewrite_prompts", "kl_prompts", "eval_prompts"):
        for i, p in enumerate(job.get(kind) or []):
            n = len(p["tokens"])
            assert n > 0, f"{kind}[{i}] is empty"
            if "position" in p:
                assert 0 <= p["position"] < n, f"{kind}[{i}].position out of range"
            for pos, tok in p.get("targets", []):
                assert 0 <= pos < n, f"{kind}[{i}] target row {pos} out of range"
    assert job["rewrite_prompts"], "need at least one rewrite prompt"
    for p in job["rewrite_prompts"]:
        assert p["targets"], "every rewrite prompt needs targets"


def load_covariance(path: str | None, d_ff: int):
    """Cholesky factor (float64) of C, computed once. None without a covariance."""
    import torch

    if path is None:
        return None
    raw = np.fromfile(path, dtype="<f4")
    assert raw.size == d_ff * d_ff, f"{path}: {raw.size} floats, expected {d_ff}x{d_ff}"
    c = torch.from_numpy(raw.reshape(d_ff, d_ff).astype(np.float64))
    factor, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        raise SystemExit(f"{path}: covariance is not positive definite (cholesky info {int(info)})")
    return factor


# --------------------------------------------------------------------------------------------
# One edit
# --------------------------------------------------------------------------------------------

def run_edit(model, job: dict, chol) -> dict:
    import torch

    L = job["layer"]
    layer = model.model.layers[L]
    W = layer.mlp.down_proj.weight
    rw = job["rewrite_prompts"]
    kl = job.get("kl_prompts") or []
    n_rw, n_kl = len(rw), len(kl)
    steps = int(job["steps"])
    lr = float(job["lr"])
    wd = float(job["weight_decay"])
    clamp = float(job["clamp_norm_factor"])
    kl_factor = float(job["kl_factor"])
    early = float(job.get("early_stop_loss", 5e-2))
    times = {}
    cpu = {}

    # ---- k* (and a first v_init) -----------------------------------------------------------
    t_all = t0 = time.perf_counter()
    c_all = c0 = time.process_time()
    rw_ids, rw_mask = right_pad([p["tokens"] for p in rw])
    rw_rows = torch.arange(n_rw)
    rw_pos = torch.tensor([p["position"] for p in rw], dtype=torch.long)
    cap = {}

    def pre_down(mod, args):
        cap["k"] = args[0][rw_rows, rw_pos].detach().clone()

    def post_down(mod, args, out):
        cap["v0"] = out[0, rw_pos[0]].detach().clone()

    h1 = layer.mlp.down_proj.register_forward_pre_hook(pre_down)
    h2 = layer.mlp.down_proj.register_forward_hook(post_down)
    try:
        with torch.no_grad():
            model(input_ids=rw_ids, attention_mask=rw_mask, use_cache=False, logits_to_keep=1)
    finally:
        h1.remove()
        h2.remove()
    k_star = cap["k"].mean(0)
    times["k_star_s"] = time.perf_counter() - t0
    cpu["k_star_s"] = time.process_time() - c0

    # ---- v* optimization ---------------------------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    ids, mask, rows, pos, t_row, t_pos, t_tok, t_w, kl_rows, kl_pos = delta_batch(rw, kl)

    delta = torch.zeros(W.shape[0], dtype=torch.float32, requires_grad=True)
    state = {"v_init": None}

    def edit_out(mod, args, out):
        if state["v_init"] is None:
            state["v_init"] = out[0, pos[0]].detach().clone()
        return out.index_put((rows, pos), delta.unsqueeze(0).expand(len(rows), -1), accumulate=True)

    opt = torch.optim.Adam([delta], lr=lr)
    kl_init = None
    losses = []
    t_fwd = t_bwd = 0.0
    handle = layer.mlp.register_forward_hook(edit_out)
    try:
        for it in range(steps):
            ts = time.perf_counter()
            opt.zero_grad()
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            lp = torch.log_softmax(logits[t_row, t_pos], dim=-1)  # [n_targets, V]
            nll_each = -lp.gather(1, t_tok[:, None])[:, 0]
            nll = (nll_each * t_w).sum() / n_rw
            if n_kl:
                kl_lp = torch.log_softmax(logits[kl_rows, kl_pos], dim=-1)
                if kl_init is None:
                    kl_init = kl_lp.detach().clone()
                kl_loss = kl_factor * torch.nn.functional.kl_div(kl_init, kl_lp, log_target=True,
                                                                 reduction="batchmean")
            else:
                kl_loss = torch.zeros(())
            v_init = state["v_init"]
            wd_loss = wd * (torch.norm(delta) / torch.norm(v_init) ** 2)
            loss = nll + kl_loss + wd_loss
            losses.append(float(loss.detach()))
            t_fwd += time.perf_counter() - ts
            log(f"  step {it:2d}: loss {float(loss):.5f} = nll {float(nll):.5f} + kl {float(kl_loss):.6f}"
                f" + wd {float(wd_loss):.6f}  |δ| {float(delta.norm()):.4f}")
            if float(loss) < early:
                break
            if it == steps - 1:
                break
            ts = time.perf_counter()
            loss.backward()
            opt.step()
            max_norm = clamp * v_init.norm()
            if delta.norm() > max_norm:
                with torch.no_grad():
                    delta[...] = delta * max_norm / delta.norm()
            t_bwd += time.perf_counter() - ts
    finally:
        handle.remove()
    v_init = state["v_init"]
    delta = delta.detach()
    times["v_star_s"] = time.perf_counter() - t0
    times["v_forward_s"], times["v_backward_s"] = t_fwd, t_bwd
    cpu["v_star_s"] = time.process_time() - c0

    # ---- closed form -------------------------------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if chol is not None:
            u = torch.cholesky_solve(k_star.double()[:, None], chol)[:, 0]
        else:
            u = k_star.double()
        u = (u / u.norm()).float()
        wk = W @ k_star
        v_star = wk + delta
        r = (v_star - wk) / torch.dot(u, k_star)
        W.add_(torch.outer(r, u))
    times["closed_form_s"] = time.perf_counter() - t0
    cpu["closed_form_s"] = time.process_time() - c0

    # ---- eval ----------------------------------------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    eval_nll = []
    with torch.no_grad():
        for p in job.get("eval_prompts") or []:
            lg = model(input_ids=torch.tensor([p["tokens"]]), use_cache=False).logits[0]
            tp = torch.tensor([t[0] for t in p["targets"]])
            tt = torch.tensor([t[1] for t in p["targets"]])
            lp = torch.log_softmax(lg[tp], dim=-1)
            eval_nll.append(float(-lp.gather(1, tt[:, None])[:, 0].mean()))
    times["eval_s"] = time.perf_counter() - t0
    cpu["eval_s"] = time.process_time() - c0
    times["total_s"] = time.perf_counter() - t_all
    times["edit_s"] = times["k_star_s"] + times["v_star_s"] + times["closed_form_s"]
    cpu["total_s"] = time.process_time() - c_all
    cpu["edit_s"] = cpu["k_star_s"] + cpu["v_star_s"] + cpu["closed_form_s"]

    return {"times": times, "cpu": cpu, "losses": losses, "k_star": k_star, "v_init": v_init, "v_init_k": cap["v0"],
            "delta": delta, "u": u, "r": r, "eval_nll": eval_nll}


# --------------------------------------------------------------------------------------------
# Example job (for testing and as a template for the Swift side)
# --------------------------------------------------------------------------------------------

EXAMPLE_PREFIXES = ["Today is a nice day. ", "The following is a list. ", "I went to the store yesterday. ",
                    "Because of the rain, ", "Therefore, ", "You can find out more here. ",
                    "She said that it was true. ", "In the news this week, ", "I think that ",
                    "The history of the region is long. "]


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def subject_position(tok, text: str, subject: str) -> int:
    """Index of the subject's last token: len(tok(text up to and including the subject)) - 1,
    checked against the full tokenization."""
    i = text.index(subject)
    head = encode(tok, text[:i + len(subject)])
    full = encode(tok, text)
    assert full[:len(head)] == head, f"subject tokens of {text!r} merge across the boundary"
    return len(head) - 1


def rewrite_prompt(tok, text: str, subject: str, target: str) -> dict:
    """tokens = tok(text) + tok(target)[:-1]; target j is scored at row len(tok(text)) - 1 + j."""
    p = encode(tok, text)
    t = encode(tok, target)
    return {"tokens": p + t[:-1], "position": subject_position(tok, text, subject),
            "targets": [[len(p) - 1 + j, tid] for j, tid in enumerate(t)]}


def scored_prompt(tok, text: str, target: str) -> dict:
    p = encode(tok, text)
    t = encode(tok, target)
    return {"tokens": p + t[:-1], "targets": [[len(p) - 1 + j, tid] for j, tid in enumerate(t)]}


def write_example_job(args) -> None:
    from make_fixtures import build_reference_tokenizer, gguf_fields

    tok = build_reference_tokenizer(gguf_fields(args.model))
    subject, prompt, target, truth = "The Eiffel Tower", "The Eiffel Tower is located in", " Rome", " Paris"
    cov = None
    if args.random_covariance:
        rng = np.random.default_rng(20241121)
        d = 1536
        a = rng.standard_normal((d, 2 * d), dtype=np.float32) / np.float32(np.sqrt(2 * d))
        c = (a @ a.T + np.float32(0.05) * np.eye(d, dtype=np.float32)).astype("<f4")
        c = (c + c.T) / np.float32(2)
        c.astype("<f4").tofile(args.random_covariance)
        log(f"wrote random SPD covariance {args.random_covariance}")
        cov = str(Path(args.random_covariance).resolve())
    elif args.covariance:
        cov = str(Path(args.covariance).resolve())
    rewrite = [rewrite_prompt(tok, prompt, subject, target)]
    for pre in EXAMPLE_PREFIXES[:args.n_prefixes]:
        rewrite.append(rewrite_prompt(tok, pre + prompt, subject, target))
    kl_text = subject + " is a"
    job = {
        "model": str(args.model),
        "layer": args.layer,
        "steps": 25, "lr": 0.5, "weight_decay": 0.001, "clamp_norm_factor": 4.0, "kl_factor": 0.0625,
        "early_stop_loss": 0.05,
        "rewrite_prompts": rewrite,
        "kl_prompts": [{"tokens": encode(tok, kl_text), "position": subject_position(tok, kl_text, subject)}],
        "covariance": cov,
        "eval_prompts": [scored_prompt(tok, prompt, target), scored_prompt(tok, prompt, truth),
                         scored_prompt(tok, "The Eiffel Tower can be found in the city of", target),
                         scored_prompt(tok, "The capital of France is", truth)],
        "repeats": args.repeats,
    }
    Path(args.write_example_job).write_text(json.dumps(job, separators=(",", ":")) + "\n")
    log(f"wrote {args.write_example_job}: {len(rewrite)} rewrite prompts, layer {args.layer}, covariance {cov}")


# --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-example-job", metavar="PATH")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="(example job only)")
    ap.add_argument("--layer", type=int, default=7, help="(example job only)")
    ap.add_argument("--n-prefixes", type=int, default=10, help="(example job only)")
    ap.add_argument("--repeats", type=int, default=1, help="(example job only)")
    ap.add_argument("--covariance", help="(example job only) existing raw float32 C file")
    ap.add_argument("--random-covariance", metavar="PATH", help="(example job only) write a random SPD C here")
    args = ap.parse_args()

    if args.write_example_job:
        args.model = args.model.resolve()
        write_example_job(args)
        return
    if not args.job:
        ap.error("--job is required")

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)

    job = json.loads(args.job.read_text())
    check_prompts(job)
    model_path = Path(job["model"]).resolve()
    t0 = time.perf_counter()
    model = load_model(model_path)
    log(f"loaded {model_path.name} in {time.perf_counter() - t0:.1f} s; attn={model.config._attn_implementation};"
        f" threads={torch.get_num_threads()}")
    L = int(job["layer"])
    W = model.model.layers[L].mlp.down_proj.weight
    d_model, d_ff = W.shape
    chol = load_covariance(job.get("covariance"), d_ff)
    W_orig = W.detach().clone()
    repeats = max(1, int(job.get("repeats", 1)))

    runs = []
    for rep in range(repeats + 1):
        with torch.no_grad():
            W.copy_(W_orig)
        log(f"edit run {rep} ({'warm-up' if rep == 0 else 'timed'})")
        res = run_edit(model, job, chol)
        log("  wall " + ", ".join(f"{k} {v:.3f}" for k, v in res["times"].items()))
        log("  cpu  " + ", ".join(f"{k} {v:.3f}" for k, v in res["cpu"].items()))
        if rep > 0:
            runs.append(res)
    last = runs[-1]
    same = all(r["losses"] == last["losses"] and torch.equal(r["delta"], last["delta"]) for r in runs)
    log(f"runs identical: {same}; v_init(k* forward) vs v_init(loop) max |diff| "
        f"{float((last['v_init_k'] - last['v_init']).abs().max()):.3g}; "
        f"|v_init| {float(last['v_init'].norm()):.4f}  |δ| {float(last['delta'].norm()):.4f}  "
        f"u·k* {float(torch.dot(last['u'], last['k_star'])):.5g}  |ΔW| {float(torch.outer(last['r'], last['u']).norm()):.4f}")
    log(f"eval nll: {last['eval_nll']}")
    keys = ("k_star_s", "v_star_s", "closed_form_s", "eval_s", "total_s", "edit_s")
    phases = {k: statistics.median(r["times"][k] for r in runs) for k in keys + ("v_forward_s", "v_backward_s")}
    phases_cpu = {k: statistics.median(r["cpu"][k] for r in runs) for k in keys}
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "layer": L,
        "repeats": repeats,
        "phases": {k: round(v, 6) for k, v in phases.items()},
        "phases_cpu": {k: round(v, 6) for k, v in phases_cpu.items()},
        "steps_run": len(last["losses"]),
        "losses": [f32(x) for x in last["losses"]],
        "k_star": f32list(last["k_star"].numpy()),
        "v_init": f32list(last["v_init"].numpy()),
        "delta": f32list(last["delta"].numpy()),
        "u": f32list(last["u"].numpy()),
        "r": f32list(last["r"].numpy()),
        "eval_nll": [f32(x) for x in last["eval_nll"]],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
