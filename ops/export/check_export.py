#!/usr/bin/env python3
"""Checks what `mesa export` wrote, with numpy + safetensors + json only (no torch, no gguf package).

    check_export.py lora --adapter DIR --base MODEL --edited MODEL [--tolerance 1e-5]
        Reproduces the edited tensors from the base plus the LoRA factors: for every module of the
        adapter, W_base + (lora_alpha / r) · B·A must equal W_edited within tolerance · max|W_edited|
        (the daemon applied the updates one by one in float32, the adapter sums them at once), and
        every tensor the adapter does not cover must be identical in base and edited, so the adapter
        is the whole difference. MODEL: a GGUF file (e.g. the base model mesa serves, or a
        `--format gguf` export) or a `--format safetensors` export directory.

    check_export.py compare --gguf FILE --safetensors DIR [--tolerance 1e-6]
        Compares a `--format safetensors` export with a GGUF of the same snapshot (a `--format gguf`
        export): the same tensor set, and every tensor equal after mapping the names and un-permuting
        llama.cpp's Wq/Wk rows; the GGUF's F32 tensors (those an edit changed) bit for bit, its
        quantized ones dequantized as gguf-py does, within tolerance · max|W|. Also compares the
        `mesa.weight_hash` both files record.

    check_export.py selftest [--fixture Tests/Fixtures/gguf-quants.json]
        Dequantizes the committed gguf-py fixture blocks with this script's readers and requires the
        values bit for bit (F16, BF16, Q8_0, Q4_0, Q4_1; the K-quants are not read by this script).

Exit status: 0 when every check passes, 1 when one fails, 2 on a usage or environment problem.

GGUF tensor types read: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (the default model's Q4_1 GGUF holds
Q4_1, Q8_0 and F32). Block layouts as in ops/reference/make_fixtures.py's docstring.
llama.cpp stores Llama's Wq/Wk rows permuted per head for its interleaved RoPE:
w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2); transformers' order is the inverse.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
from pathlib import Path

try:
    import numpy as np
    from safetensors import safe_open
except ImportError as e:  # pragma: no cover - depends on the environment
    home = os.environ.get("MESA_HOME", "~/.local/share/mesa")
    sys.stderr.write(
        f"check_export.py needs numpy and safetensors ({e}). Install them in a virtual environment, not globally:\n"
        f"  python3 -m venv {home}/exportenv && {home}/exportenv/bin/pip install numpy safetensors\n"
        f"  {home}/exportenv/bin/python {sys.argv[0]} ...\n")
    sys.exit(2)


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 3, 8, 30
# type → (elements per block, bytes per block)
GGML_BLOCKS = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_BF16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q4_1: (32, 20), GGML_Q8_0: (32, 34)}
GGML_NAMES = {GGML_F32: "F32", GGML_F16: "F16", GGML_BF16: "BF16", GGML_Q4_0: "Q4_0", GGML_Q4_1: "Q4_1", GGML_Q8_0: "Q8_0"}


class GGUF:
    """A GGUF v2/v3 file: metadata, tensor directory, and tensors dequantized to float32."""

    def __init__(self, path: str):
        self.path = path
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        self.pos = 0
        magic, version = struct.unpack_from("<II", self.data, 0)
        if magic != 0x46554747 or version not in (2, 3):
            raise SystemExit(f"{path}: not a GGUF v2/v3 file")
        self.pos = 8
        n_tensors, n_kv = self._read("<QQ")
        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            (vtype,) = self._read("<I")
            self.metadata[key] = self._value(vtype)
        self.tensors = {}
        for _ in range(n_tensors):
            name = self._string()
            (nd,) = self._read("<I")
            dims = self._read("<" + "Q" * nd)
            ttype, offset = self._read("<IQ")
            self.tensors[name] = (list(reversed(dims)), ttype, offset)  # row-major shape, outermost first
        align = int(self.metadata.get("general.alignment", 32))
        self.start = (self.pos + align - 1) // align * align

    def _read(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def _string(self):
        (n,) = self._read("<Q")
        s = bytes(self.data[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def _value(self, t):
        scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
        if t in scalar:
            return self._read(scalar[t])[0]
        if t == 8:
            return self._string()
        if t == 9:
            et, n = self._read("<IQ")
            return [self._value(et) for _ in range(n)]
        raise SystemExit(f"{self.path}: unknown metadata value type {t}")

    def type_name(self, name):
        t = self.tensors[name][1]
        return GGML_NAMES.get(t, f"type {t}")

    def floats(self, name) -> np.ndarray:
        shape, t, offset = self.tensors[name]
        if t not in GGML_BLOCKS:
            raise SystemExit(f"{self.path}: tensor {name} has ggml type {t}, which this script does not dequantize")
        n = int(np.prod(shape))
        per, size = GGML_BLOCKS[t]
        raw = self.data[self.start + offset:self.start + offset + n // per * size]
        if t == GGML_F32:
            out = raw.view("<f4").astype(np.float32)
        elif t == GGML_F16:
            out = raw.view("<f2").astype(np.float32)
        elif t == GGML_BF16:
            out = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            blocks = raw.reshape(-1, size)
            d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)          # [blocks, 1]
            if t == GGML_Q8_0:
                out = d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)
            else:
                qs = blocks[:, 4:] if t == GGML_Q4_1 else blocks[:, 2:]       # [blocks, 16]
                q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)   # [blocks, 32]: low nibbles, then high
                if t == GGML_Q4_1:
                    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
                    out = (d * q) + m
                else:
                    out = d * (q - np.float32(8))
        return out.reshape(shape).astype(np.float32, copy=False)


def gguf_to_hf_name(name: str) -> str | None:
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk":
        sub = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}.get(parts[2])
        if sub:
            return f"model.layers.{parts[1]}.{sub}.{parts[3]}"
    return None


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Wq/Wk row order → transformers'. w: [heads·hd, cols] (or [heads·hd] for a bias)."""
    rows = w.shape[0]
    hd = rows // heads
    rest = w.shape[1:]
    return w.reshape(heads, hd // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------
# Models by transformers name
# ---------------------------------------------------------------------------------------------

class Model:
    """Float32 tensors in transformers' names and layout, from a GGUF or a safetensors export."""

    def __init__(self, path: str):
        p = Path(path)
        self.path = path
        self.gguf = None
        if p.is_dir():
            p = p / "model.safetensors"
        if p.suffix == ".safetensors":
            self.st = safe_open(str(p), framework="numpy")
            self.meta = self.st.metadata() or {}
            self.names = sorted(self.st.keys())
        else:
            self.gguf = GGUF(str(p))
            self.meta = {k: v for k, v in self.gguf.metadata.items() if isinstance(v, str)}
            arch = self.gguf.metadata.get("general.architecture")
            if arch != "llama":
                raise SystemExit(f"{path}: architecture {arch}; this script maps Llama GGUFs only")
            self.heads = int(self.gguf.metadata["llama.attention.head_count"])
            self.kv_heads = int(self.gguf.metadata.get("llama.attention.head_count_kv", self.heads))
            self.by_hf = {}
            for name in self.gguf.tensors:
                hf = gguf_to_hf_name(name)
                if hf is None:
                    raise SystemExit(f"{path}: tensor {name} has no transformers name")
                self.by_hf[hf] = name
            self.names = sorted(self.by_hf)

    def stored_type(self, hf: str) -> str:
        return self.gguf.type_name(self.by_hf[hf]) if self.gguf else "F32"

    def tensor(self, hf: str) -> np.ndarray:
        if not self.gguf:
            return self.st.get_tensor(hf).astype(np.float32, copy=False)
        name = self.by_hf[hf]
        w = self.gguf.floats(name)
        if ".attn_q." in name:
            w = unpermute(w, self.heads)
        elif ".attn_k." in name:
            w = unpermute(w, self.kv_heads)
        return w


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def check_lora(args) -> bool:
    adapter = Path(args.adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise SystemExit(f"{adapter}: peft_type is {config.get('peft_type')}, not LORA")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / r
    factors = safe_open(str(adapter / "adapter_model.safetensors"), framework="numpy")
    keys = sorted(factors.keys())
    modules = sorted({k[:-len(".lora_A.weight")] for k in keys if k.endswith(".lora_A.weight")})
    print(f"adapter {adapter}: r {r}, lora_alpha {alpha:g} (scale {scale:g}), target_modules {config.get('target_modules')}, "
          f"layers_to_transform {config.get('layers_to_transform')}, {len(modules)} modules")
    meta = factors.metadata() or {}
    if "mesa.snapshot" in meta:
        print(f"  snapshot {meta['mesa.snapshot']}, lineage {meta.get('mesa.lineage')}, weight hash {meta.get('mesa.weight_hash', '')[:16]}")
    base, edited = Model(args.base), Model(args.edited)
    if set(base.names) != set(edited.names):
        print(f"FAIL base and edited hold different tensors: {sorted(set(base.names) ^ set(edited.names))[:5]}")
        return False
    ok = True
    covered = set()
    for m in modules:
        name = m.removeprefix("base_model.model.") + ".weight"
        a = factors.get_tensor(m + ".lora_A.weight").astype(np.float64)   # [r, in]
        b = factors.get_tensor(m + ".lora_B.weight").astype(np.float64)   # [out, r]
        if name not in base.names:
            print(f"FAIL {m}: the model has no tensor {name}")
            ok = False
            continue
        w0, w = base.tensor(name), edited.tensor(name)                    # [out, in]
        if a.shape != (r, w.shape[1]) or b.shape != (w.shape[0], r):
            print(f"FAIL {name}: lora_A {a.shape}, lora_B {b.shape} do not fit the tensor {w.shape} at r {r}")
            ok = False
            continue
        delta = scale * (b @ a)
        diff = np.abs(w0.astype(np.float64) + delta - w.astype(np.float64)).max()
        changed = np.abs(w.astype(np.float64) - w0).max()
        bound = args.tolerance * float(np.abs(w).max())
        passed = diff <= bound
        ok &= passed
        covered.add(name)
        print(f"{'ok  ' if passed else 'FAIL'} {name} [{w.shape[0]}, {w.shape[1]}] ({base.stored_type(name)} in the base): "
              f"max|W_edited - W_base| {changed:.4g}, max|W_base + B·A - W_edited| {diff:.3g} (bound {bound:.3g})")
    others = [n for n in base.names if n not in covered]
    differing = [n for n in others if not np.array_equal(base.tensor(n), edited.tensor(n))]
    if differing:
        ok = False
        print(f"FAIL {len(differing)} tensor(s) the adapter does not cover differ between base and edited: {differing[:5]}")
    else:
        print(f"ok   the {len(others)} other tensors are identical in base and edited")
    return ok


def check_compare(args) -> bool:
    g, s = Model(args.gguf), Model(args.safetensors)
    print(f"gguf {args.gguf} ({len(g.names)} tensors) vs safetensors {args.safetensors} ({len(s.names)} tensors)")
    ok = True
    gh, sh = g.meta.get("mesa.weight_hash"), s.meta.get("mesa.weight_hash")
    if gh or sh:
        same = gh == sh
        ok &= same
        print(f"{'ok  ' if same else 'FAIL'} recorded weight hash: gguf {str(gh)[:16]}, safetensors {str(sh)[:16]}")
    if set(g.names) != set(s.names):
        print(f"FAIL different tensor sets: only in gguf {sorted(set(g.names) - set(s.names))[:5]}, "
              f"only in safetensors {sorted(set(s.names) - set(g.names))[:5]}")
        return False
    counts, worst, bad, f32_matrices = {}, {}, {}, []
    for name in g.names:
        a, b = g.tensor(name), s.tensor(name)
        t = g.stored_type(name)
        if a.shape != b.shape:
            print(f"FAIL {name}: shape {a.shape} in the gguf, {b.shape} in the safetensors")
            ok = False
            continue
        diff = float(np.abs(a - b).max())
        # F32 in the gguf (an edit's changed tensors, norms): exact; quantized: as dequantized, to rounding.
        bound = 0.0 if t == "F32" else args.tolerance * float(np.abs(a).max())
        if diff > bound:
            print(f"FAIL {name} ({t}): max |difference| {diff:.3g} > {bound:.3g}")
            ok = False
            bad[t] = bad.get(t, 0) + 1
        counts[t] = counts.get(t, 0) + 1
        worst[t] = max(worst.get(t, 0.0), diff)
        if t == "F32" and a.ndim == 2:
            f32_matrices.append(name)
    for t in sorted(counts):
        print(f"{'FAIL' if bad.get(t) else 'ok  '} {counts[t]} {t} tensor(s) in the gguf: max |difference| {worst[t]:.3g}"
              + (" (bit-identical)" if worst[t] == 0 else ""))
    if f32_matrices:
        print(f"     F32 matrices in the gguf (what the edits changed): {', '.join(f32_matrices)}")
    return ok


def check_selftest(args) -> bool:
    fixture = json.loads(Path(args.fixture).read_text())
    ok = True
    for t in fixture["types"]:
        if t["ggml_type"] not in GGML_BLOCKS:
            print(f"     {t['type']}: not read by this script")
            continue
        g = GGUF.__new__(GGUF)
        g.path, g.start = args.fixture, 0
        g.data = np.frombuffer(base64.b64decode(t["bytes_b64"]), dtype=np.uint8)
        g.tensors = {"x": ([t["n"]], t["ggml_type"], 0)}
        got, want = g.floats("x"), np.array(t["values"], dtype=np.float32)
        same = np.array_equal(got.view(np.uint32), want.view(np.uint32))
        ok &= same
        print(f"{'ok  ' if same else 'FAIL'} {t['type']}: {t['n']} values {'bit-identical to' if same else 'differ from'} gguf-py {fixture.get('gguf_py', '')}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    lora = sub.add_parser("lora", help="reproduce the edited tensors from the base plus the LoRA factors")
    lora.add_argument("--adapter", required=True, help="a --format peft-lora export directory")
    lora.add_argument("--base", required=True, help="the base model: a GGUF file or a --format safetensors export of snapshot 0")
    lora.add_argument("--edited", required=True, help="the edited model: a GGUF or safetensors export of the same snapshot")
    lora.add_argument("--tolerance", type=float, default=1e-5, help="relative to max|W| (default 1e-5)")
    cmp = sub.add_parser("compare", help="compare a safetensors export with a GGUF export of the same snapshot")
    cmp.add_argument("--gguf", required=True)
    cmp.add_argument("--safetensors", required=True, help="a --format safetensors export directory")
    cmp.add_argument("--tolerance", type=float, default=1e-6, help="for quantized GGUF tensors, relative to max|W| (default 1e-6)")
    self_test = sub.add_parser("selftest", help="check this script's dequantization against gguf-py's fixture")
    self_test.add_argument("--fixture", default=str(Path(__file__).resolve().parents[2] / "Tests/Fixtures/gguf-quants.json"))
    args = ap.parse_args()
    ok = {"lora": check_lora, "compare": check_compare, "selftest": check_selftest}[args.command](args)
    print("check_export: OK" if ok else "check_export: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
