#!/usr/bin/env python3
"""Writes the small sparsify-layout TopK SAE fixture under Tests/Fixtures/sparsify-topk/ (run once; the
files are committed): layers.1.mlp/cfg.json + sae.safetensors as EleutherAI's sparsify saves them
(encoder.weight [F, D], encoder.bias [F], W_dec [F, D], b_dec [D]), and expected.json with inputs and
the latents and reconstructions sparsify's forward gives for them, computed here in float64:

    pre = relu((x - b_dec) @ encoder.weight.T + encoder.bias);  keep each row's top k
    x_hat = f @ W_dec + b_dec

Pure Python (no numpy/torch), so it runs anywhere: python3 ops/sae/make_sparsify_fixture.py
"""
import json
import random
import struct
from pathlib import Path

D, F, K, ROWS = 8, 24, 3, 5
out = Path(__file__).resolve().parents[2] / "Tests" / "Fixtures" / "sparsify-topk"
rng = random.Random(1234)


def rnd(n, scale):
    # Values exactly representable in float32: multiples of 1/1024.
    return [round(rng.uniform(-scale, scale) * 1024) / 1024 for _ in range(n)]


enc = rnd(F * D, 1.0)
b_enc = rnd(F, 0.3)
w_dec = rnd(F * D, 0.5)
b_dec = rnd(D, 0.2)
xs = [rnd(D, 2.0) for _ in range(ROWS)]


def safetensors(tensors):
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in tensors.items():
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


site = out / "layers.1.mlp"
site.mkdir(parents=True, exist_ok=True)
(site / "cfg.json").write_text(json.dumps({"expansion_factor": F // D, "normalize_decoder": True, "num_latents": 0, "k": K,
                                           "multi_topk": False, "skip_connection": False, "d_in": D}, indent=2) + "\n")
(site / "sae.safetensors").write_bytes(safetensors({
    "encoder.weight": ([F, D], enc), "encoder.bias": ([F], b_enc), "W_dec": ([F, D], w_dec), "b_dec": ([D], b_dec)}))

cases = []
for x in xs:
    pre = [max(0.0, sum((x[i] - b_dec[i]) * enc[j * D + i] for i in range(D)) + b_enc[j]) for j in range(F)]
    top = sorted(range(F), key=lambda j: (-pre[j], j))[:K]
    f = [pre[j] if j in top and pre[j] > 0 else 0.0 for j in range(F)]
    x_hat = [sum(f[j] * w_dec[j * D + i] for j in range(F)) + b_dec[i] for i in range(D)]
    cases.append({"x": x, "latents": f, "reconstruction": x_hat})
(out / "expected.json").write_text(json.dumps({"d_in": D, "d_sae": F, "k": K, "site": "mlp_out@1", "cases": cases}, indent=1) + "\n")
print("wrote", out)
