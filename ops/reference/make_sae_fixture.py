"""Golden fixture for mesa's BatchTopK trainer: one training step of dictionary_learning's
BatchTopKTrainer (trainers/batch_top_k.py, as METHODS.md §4 describes it), re-implemented here in
torch with autograd, on a small SAE (D=8, F=32, B=12, k=2), plus inference encodes with the θ it sets.

The step: ReLU(W_enc(x − b_dec) + b_enc), top k·B over the flattened batch, x̂ = W_dec f + b_dec,
L = mean‖x − x̂‖² + α_aux·L_aux (dead latents: not fired for dead_tokens tokens, counted after this
batch; top-k_aux post-ReLU activations of dead latents per row; residual reconstructed without b_dec;
normalized by the residual's variance), backward, decoder-parallel gradient removed, global grad norm
clipped to 1, Adam (0.9, 0.999), decoder rows renormalized; θ from the smallest positive selected
activation (first value set directly). b_dec starts at the geometric median of the batch
(dictionary_learning's Weiszfeld, 100 iterations, tol 1e-5).

    ~/.local/share/mesa/refenv/bin/python ops/reference/make_sae_fixture.py   # writes Tests/Fixtures/batchtopk-step.json
"""
import argparse
import json
import pathlib

import torch as t


def geometric_median(points, max_iter=100, tol=1e-5):
    guess = points.mean(dim=0)
    for _ in range(max_iter):
        prev = guess
        weights = 1 / t.norm(points - guess, dim=1)
        weights /= weights.sum()
        guess = (weights.unsqueeze(1) * points).sum(dim=0)
        if t.norm(guess - prev) < tol:
            break
    return guess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[2] / "Tests/Fixtures/batchtopk-step.json"))
    args = ap.parse_args()
    t.manual_seed(0)
    D, F, B, k = 8, 32, 12, 2
    lr, aux_alpha, k_aux, dead_tokens = 1e-2, 1 / 32, D // 2, B
    dec = t.randn(D, F, dtype=t.float64)
    dec = dec / dec.norm(dim=0, keepdim=True)          # decoder.weight [D, F], unit columns
    enc = dec.T.clone()                                 # encoder.weight [F, D]
    b_enc = t.zeros(F, dtype=t.float64)
    x = t.randn(B, D, dtype=t.float64) * 0.7 + 0.2
    b_dec = geometric_median(x)
    init = {"encoder": enc.flatten().tolist(), "decoder_rows": dec.T.contiguous().flatten().tolist(),
            "b_enc": b_enc.tolist(), "b_dec": b_dec.tolist()}

    params = [p.clone().requires_grad_(True) for p in (enc, b_enc, dec, b_dec)]
    W_enc, B_enc, W_dec, B_dec = params
    post = t.relu((x - B_dec) @ W_enc.T + B_enc)        # [B, F]
    flat = post.flatten()
    top = flat.topk(k * B, sorted=False)
    f = t.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(B, F)
    x_hat = f @ W_dec.T + B_dec
    e = x - x_hat
    fired = (f.sum(0) != 0)
    since = t.full((F,), B)
    since[fired] = 0
    dead = since >= dead_tokens
    l2 = e.pow(2).sum(-1).mean()
    aux = t.zeros((), dtype=t.float64)
    if dead.sum() > 0:
        ka = int(min(k_aux, int(dead.sum())))
        lat = t.where(dead[None], post, t.tensor(-float("inf"), dtype=t.float64))
        acts, idx = lat.topk(ka, sorted=False)
        buf = t.zeros_like(post).scatter(-1, idx, acts)
        rec = buf @ W_dec.T
        resid = e.detach()
        l2_aux = (resid - rec).pow(2).sum(-1).mean()
        denom = (resid - resid.mean(0, keepdim=True)).pow(2).sum(-1).mean()
        aux = (l2_aux / denom).nan_to_num(0.0)
    loss = l2 + aux_alpha * aux
    loss.backward()
    # Remove the decoder gradient parallel to each (unit) column.
    g = W_dec.grad
    W_dec.grad = g - (g * W_dec.detach()).sum(0, keepdim=True) * W_dec.detach()
    t.nn.utils.clip_grad_norm_(params, 1.0)
    opt = t.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    opt.step()
    with t.no_grad():
        W_dec /= W_dec.norm(dim=0, keepdim=True)
    pos = f.detach()[f.detach() > 0]
    theta = float(pos.min()) if pos.numel() else 0.0

    # Inference with the global θ on fresh inputs.
    xq = t.randn(4, D, dtype=t.float64) * 0.7 + 0.2
    with t.no_grad():
        pre = (xq - B_dec) @ W_enc.T + B_enc
        fq = t.relu(pre) * (pre > theta)
        xq_hat = fq @ W_dec.T + B_dec

    out = {
        "D": D, "F": F, "B": B, "k": k, "lr": lr, "aux_alpha": aux_alpha, "aux_k": k_aux, "dead_tokens": dead_tokens,
        "x": x.flatten().tolist(), "init": init,
        "loss": {"l2": float(l2.detach()), "aux": float(aux.detach()), "dead": int(dead.sum()), "l0": float((f != 0).sum()) / B},
        "after": {"encoder": W_enc.detach().flatten().tolist(), "decoder_rows": W_dec.detach().T.contiguous().flatten().tolist(),
                  "b_enc": B_enc.detach().tolist(), "b_dec": B_dec.detach().tolist(), "threshold": theta},
        "inference": {"x": xq.flatten().tolist(), "f": fq.flatten().tolist(), "x_hat": xq_hat.flatten().tolist()},
        "generator": "ops/reference/make_sae_fixture.py (torch %s, float64)" % t.__version__,
    }
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
