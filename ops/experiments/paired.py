#!/usr/bin/env python3
"""Paired comparison of two `mesa eval` reports on the same CounterFact records (a baseline and a
variant): per neighbourhood prompt, kept (true object ahead of the new one) under one and not the
other, the McNemar statistic, the mean change of the neighbour margin nll_new - nll_true (nats, +
is better for specificity) with its standard error, and paraphrases won and lost.

    python3 ops/experiments/paired.py [--stage immediate] BASELINE.json VARIANT.json [VARIANT.json ...]

--stage immediate compares the scores taken right after each record's own edit (sequential reports)
instead of those at the end of the run: the quality of the edits as made, before later edits act on
them. Only records both reports hold are compared.
"""
import gzip
import json
import sys


STAGE = "post"


def cases(path):
    return {c["caseId"]: c for c in json.load((gzip.open if path.endswith(".gz") else open)(path, "rt"))["cases"] if STAGE in c}


def compare(base, other):
    kept_here = lost_here = para_won = para_lost = 0
    diffs = []
    for k, a in base.items():
        b = other.get(k)
        if b is None:
            continue
        for x, y in zip(a[STAGE]["neighborhood"], b[STAGE]["neighborhood"]):
            sx, sy = x["nllNew"] > x["nllTrue"], y["nllNew"] > y["nllTrue"]
            kept_here += sy and not sx
            lost_here += sx and not sy
            diffs.append((y["nllNew"] - y["nllTrue"]) - (x["nllNew"] - x["nllTrue"]))
        for x, y in zip(a[STAGE]["paraphrase"], b[STAGE]["paraphrase"]):
            sx, sy = x["nllNew"] < x["nllTrue"], y["nllNew"] < y["nllTrue"]
            para_won += sy and not sx
            para_lost += sx and not sy
    n = len(diffs)
    mean = sum(diffs) / n
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5 / n ** 0.5 if n > 1 else float("nan")
    discordant = kept_here + lost_here
    mcnemar = (abs(kept_here - lost_here) - 1) ** 2 / discordant if discordant else 0.0
    return {"neighbour_prompts": n, "kept_only_in_variant": kept_here, "lost_only_in_variant": lost_here, "mcnemar_chi2": mcnemar,
            "neighbour_margin_change_nats": mean, "neighbour_margin_change_se": se,
            "paraphrases_won": para_won, "paraphrases_lost": para_lost}


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--stage"]:
        STAGE = args[1]
        args = args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    base = cases(args[0])
    for path in args[1:]:
        print(path, json.dumps(compare(base, cases(path))))
