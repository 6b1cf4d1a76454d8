"""Converts a dictionary_learning SAE folder (`ae.pt` + `config.json`, e.g. MESA's
`mlp_out_layer_{L}/trainer_0`) into what `SparseAutoencoder.load` reads: `ae.safetensors` beside the
unchanged `config.json`. The state dict's keys are kept (encoder.weight [F, D], encoder.bias [F],
decoder.weight [D, F], b_dec [D], threshold, k); mesa takes the site from config.json's
trainer.layer and trainer.submodule_name. Needs torch and safetensors (the reference environment has both):

    ~/.local/share/mesa/refenv/bin/python ops/sae/convert_dictionary_learning.py path/to/trainer_0 [--out DIR]
"""
import argparse
import pathlib
import shutil

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", help="dictionary_learning trainer folder with ae.pt and config.json")
    ap.add_argument("--out", help="output folder (default: the input folder)")
    args = ap.parse_args()
    src = pathlib.Path(args.folder)
    out = pathlib.Path(args.out) if args.out else src
    out.mkdir(parents=True, exist_ok=True)
    state = torch.load(src / "ae.pt", map_location="cpu", weights_only=True)
    missing = {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "threshold"} - set(state)
    if missing:
        raise SystemExit(f"{src / 'ae.pt'} lacks {sorted(missing)}: not a BatchTopK state dict")
    tensors = {k: v.detach().to(torch.float32).contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()}
    save_file(tensors, str(out / "ae.safetensors"))
    if out != src:
        shutil.copy(src / "config.json", out / "config.json")
    print("wrote", out / "ae.safetensors")


if __name__ == "__main__":
    main()
