#!/usr/bin/env python3
"""Why MESA design 2 (`key_features`) moves neighbours more than ROME: for two `mesa eval` reports of
the same records, ROME's and design 2's (both written by a build whose results carry
`uncertainty.update_norm`, and design 2's `key_latents` and `key_part_share`), per edit:

- how many key-SAE latents qualified as the subject's own (0: u is ROME's own and the edit is ROME's);
- key_part_share = ||k*_parts|| / ||k*||: how much of the subject's key those latents reconstruct;
- the update's Frobenius norm against ROME's: u from a small part of k* has a small u.k*, so the
  write must be larger to give k* the same change;
- the neighbour margin (mean NLL(new) - NLL(true) over the neighbourhood prompts) against ROME's,
  for the edits where u changed and where it did not.

    python3 ops/experiments/key_features.py ROME.json DESIGN2.json [--out FILE.md]
"""
import gzip
import json
import statistics as st
import sys


def cases(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return {c["caseId"]: c for c in json.load(f)["cases"] if c.get("post")}


def margin(case):
    return st.mean(p["nllNew"] - p["nllTrue"] for p in case["post"]["neighborhood"])


def quantiles(xs):
    xs = sorted(xs)
    return "median %.3g, 10%% %.3g, 90%% %.3g" % (st.median(xs), xs[len(xs) // 10], xs[(9 * len(xs)) // 10])


def main(argv):
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    rome, design = cases(argv[0]), cases(argv[1])
    ids = sorted(set(rome) & set(design))
    lines = ["# Design 2 (key_features) against ROME, edit by edit", "",
             "- ROME: `%s`" % argv[0], "- design 2: `%s`" % argv[1], "- edits: %d" % len(ids), ""]
    changed = [i for i in ids if design[i]["uncertainty"].get("key_latents", 0) > 0]
    same = [i for i in ids if i not in changed]
    lines.append("| edits | count | update norm / ROME's | neighbour margin change (nats) | neighbours' NS, ROME → design 2 |")
    lines.append("|---|---:|---|---:|---|")
    for name, group in (("u from the key latents", changed), ("no latent qualified (u is ROME's)", same)):
        if not group:
            continue
        ratio = [design[i]["uncertainty"]["update_norm"] / rome[i]["uncertainty"]["update_norm"] for i in group]
        change = [margin(design[i]) - margin(rome[i]) for i in group]
        ns = lambda c: 100 * st.mean(1.0 if p["nllTrue"] < p["nllNew"] else 0.0 for p in c["post"]["neighborhood"])
        lines.append("| %s | %d | %s | %+.3f | %.1f → %.1f |" % (
            name, len(group), quantiles(ratio), st.mean(change),
            st.mean(ns(rome[i]) for i in group), st.mean(ns(design[i]) for i in group)))
    if changed:
        latents = [design[i]["uncertainty"]["key_latents"] for i in changed]
        share = [design[i]["uncertainty"]["key_part_share"] for i in changed]
        lines += ["", "Where u changed: %s latents; key_part_share %s." % (quantiles(latents), quantiles(share))]
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
