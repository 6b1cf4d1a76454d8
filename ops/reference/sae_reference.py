"""PyTorch baseline for `mesa-bench sae`: steps of dictionary_learning's BatchTopK training step
(the same one ops/reference/make_sae_fixture.py checks in float64), in float32 on the CPU, on the
rows of a mesa activation cache. Prints one JSON line: tokens/s over the timed steps.

    python ops/reference/sae_reference.py --cache FILE.f16 --width 4608 --k 32 --batch 1024 --steps 20 --threads 1
"""
import argparse
import json
import time

import numpy as np
import torch as t


def load_cache(path, rows):
    with open(path, "rb") as f:
        raw = f.read(4096)
    header = json.loads(raw[8:].decode().strip())
    dim, n = header["dim"], header["rows"]
    data = np.memmap(path, dtype="<f2", mode="r", offset=4096, shape=(n, dim))
    return t.from_numpy(np.asarray(data[: min(rows, n)], dtype=np.float32)), dim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    t.set_num_threads(args.threads)
    t.manual_seed(0)
    need = (args.steps + args.warmup) * args.batch
    x_all, D = load_cache(args.cache, need)
    F, B, k = args.width, args.batch, args.k
    x_all = x_all / x_all.pow(2).sum(-1).mean().sqrt()
    dec = t.randn(D, F)
    dec = dec / dec.norm(dim=0, keepdim=True)
    enc = dec.T.clone()
    W_enc, B_enc, W_dec, B_dec = (p.requires_grad_(True) for p in (enc, t.zeros(F), dec, x_all[:B].median(0).values.clone()))
    params = [W_enc, B_enc, W_dec, B_dec]
    opt = t.optim.Adam(params, lr=2e-4 / (F / 2**14) ** 0.5, betas=(0.9, 0.999))
    since = t.zeros(F, dtype=t.long)
    dead_tokens, k_aux, aux_alpha = 10 * B, D // 2, 1 / 32
    times = []
    for step in range(args.steps + args.warmup):
        x = x_all[(step * B) % (x_all.shape[0] - B):][:B]
        t0 = time.perf_counter()
        post = t.relu((x - B_dec) @ W_enc.T + B_enc)
        flat = post.flatten()
        top = flat.topk(k * B, sorted=False)
        f = t.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(B, F)
        x_hat = f @ W_dec.T + B_dec
        e = x - x_hat
        fired = (f.detach().sum(0) != 0)
        since += B
        since[fired] = 0
        dead = since >= dead_tokens
        loss = e.pow(2).sum(-1).mean()
        if dead.sum() > 0:
            ka = int(min(k_aux, int(dead.sum())))
            lat = t.where(dead[None], post, t.tensor(-float("inf")))
            acts, idx = lat.topk(ka, sorted=False)
            rec = t.zeros_like(post).scatter(-1, idx, acts) @ W_dec.T
            resid = e.detach()
            loss = loss + aux_alpha * ((resid - rec).pow(2).sum(-1).mean() / (resid - resid.mean(0, keepdim=True)).pow(2).sum(-1).mean())
        opt.zero_grad()
        loss.backward()
        with t.no_grad():
            g = W_dec.grad
            W_dec.grad = g - (g * W_dec).sum(0, keepdim=True) * W_dec
        t.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with t.no_grad():
            W_dec /= W_dec.norm(dim=0, keepdim=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    sec = sum(times)
    print(json.dumps({"steps": len(times), "batch": B, "width": F, "k": k, "d_in": D, "threads": args.threads,
                      "seconds": sec, "tokens_per_second": len(times) * B / sec, "torch": t.__version__}))


if __name__ == "__main__":
    main()
