#!/usr/bin/env python3
"""PyTorch-eager baseline for mesa's forward-pass benchmarks (SmolLM2-135M from the GGUF).

    ~/.local/share/mesa/refenv/bin/python ops/reference/bench_forward.py [--threads 2] [--repeats 5]
        [--decode-tokens 32] [--ids-file ids.json] [--model path/to.gguf]

Loads the GGUF the way the fixtures do (transformers dequantizes it to float32), then, under
torch.inference_mode():
  (i)  prefill: one forward of a 64-token prompt, logits for all 64 positions (what a plain HF
       forward computes by default); tokens/s = 64 / median wall time of --repeats runs after
       one warm-up run; and the same with logits_to_keep=1 (last position only, as generate() does);
  (ii) decode: from that prompt's KV cache, greedily generate --decode-tokens tokens one at a
       time with past_key_values (a manual loop, not generate()); tokens/s = decode tokens /
       wall time of the loop, median over --repeats runs (each after a fresh prefill, untimed).
Prints ONE JSON object on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

DEFAULT_MODEL = Path.home() / ".local/share/mesa/models/SmolLM2-135M-Instruct.Q4_1.gguf"
FALLBACK_TEXT = ("The history of the city begins in the early Middle Ages, when a small settlement grew up "
                 "around a river crossing. Over the following centuries it became an important centre of "
                 "trade, learning and government, and its population grew rapidly during the industrial era. ")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def prompt_ids(args) -> list[int]:
    if args.ids_file:
        ids = json.loads(Path(args.ids_file).read_text())
        if len(ids) < 64:
            raise SystemExit(f"--ids-file has {len(ids)} ids, need 64")
        return [int(i) for i in ids[:64]]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_fixtures import build_reference_tokenizer, gguf_fields

    tok = build_reference_tokenizer(gguf_fields(args.model))
    ids: list[int] = []
    while len(ids) < 64:
        ids = tok.encode(FALLBACK_TEXT * (len(ids) // 32 + 2), add_special_tokens=False).ids
    return ids[:64]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--ids-file", default=None)
    ap.add_argument("--attn-implementation", default=None,
                    help="transformers attn_implementation (default: transformers' own default)")
    args = ap.parse_args()
    args.model = args.model.resolve()

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    kw = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(args.model.parent), gguf_file=args.model.name,
                                                 dtype=torch.float32, **kw)
    model.eval()
    log(f"loaded {args.model.name} in {time.perf_counter() - t0:.1f} s; "
        f"attn_implementation={model.config._attn_implementation}; threads={torch.get_num_threads()}")

    ids = prompt_ids(args)
    x = torch.tensor([ids], dtype=torch.long)
    n = x.shape[1]

    with torch.inference_mode():
        # (i) prefill
        model(input_ids=x, use_cache=True)  # warm-up
        prefill_times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = model(input_ids=x, use_cache=True)
            prefill_times.append(time.perf_counter() - t)
        assert out.logits.shape[1] == n
        prefill_s = statistics.median(prefill_times)
        log(f"prefill {n} tokens: " + ", ".join(f"{t * 1000:.1f}" for t in prefill_times) + " ms")

        # (i') prefill as generate() runs it: logits for the last position only (logits_to_keep=1).
        model(input_ids=x, use_cache=True, logits_to_keep=1)  # warm-up
        last_times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = model(input_ids=x, use_cache=True, logits_to_keep=1)
            last_times.append(time.perf_counter() - t)
        assert out.logits.shape[1] == 1
        prefill_last_s = statistics.median(last_times)
        log(f"prefill {n} tokens, last logits: " + ", ".join(f"{t * 1000:.1f}" for t in last_times) + " ms")

        # (ii) decode
        decode_times = []
        generated = []
        for r in range(args.repeats + 1):  # the first run is a warm-up
            out = model(input_ids=x, use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            toks = []
            t = time.perf_counter()
            for _ in range(args.decode_tokens):
                toks.append(nxt)
                out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(out.logits[0, -1].argmax())
            dt = time.perf_counter() - t
            if r > 0:
                decode_times.append(dt)
            generated = toks
        decode_s = statistics.median(decode_times)
        log(f"decode {args.decode_tokens} tokens: " + ", ".join(f"{t * 1000:.1f}" for t in decode_times) + " ms")
        log(f"greedy continuation ids: {generated}")

    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
        "prefill_tokens_per_s": round(n / prefill_s, 3),
        "decode_tokens_per_s": round(args.decode_tokens / decode_s, 3),
        "prefill_ms": round(prefill_s * 1000, 3),
        "prefill_last_logits_tokens_per_s": round(n / prefill_last_s, 3),
        "prefill_last_logits_ms": round(prefill_last_s * 1000, 3),
        "decode_ms_per_token": round(decode_s * 1000 / args.decode_tokens, 3),
    }), flush=True)


if __name__ == "__main__":
    main()
