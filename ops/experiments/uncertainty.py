#!/usr/bin/env python3
"""Does an SAE uncertainty signal predict failed edits? For every signal in the cases' `uncertainty`
of a `mesa eval` report (ROME with an SAE attached: outside, subject_error, crowding), the AUC of the
signal for two failures of the case's edit:

- neighbour lost: a neighbourhood prompt whose true object led the new one before the edit (on the
  unedited model, `pre`) and no longer does after it;
- paraphrase failed: a paraphrase prompt on which the new object does not lead the true one after
  the edit.

AUC = P(signal of a failed case > signal of a good case), ties counted half (Mann-Whitney); 0.5 is
no information, and an AUC below 0.5 means the signal is higher on the good cases. The standard error
is Hanley and McNeil's (1982).

    python3 ops/experiments/uncertainty.py REPORT.json [REPORT.json ...] [--out FILE.json]

Several reports (e.g. the halves of one run) are pooled.
"""
import gzip
import json
import sys


def cases(path):
    doc = json.load((gzip.open if path.endswith(".gz") else open)(path, "rt"))
    return [c for c in doc["cases"] if "post" in c and c.get("uncertainty")]


def neighbour_lost(c):
    return any(a["nllNew"] > a["nllTrue"] and b["nllNew"] <= b["nllTrue"]
               for a, b in zip(c["pre"]["neighborhood"], c["post"]["neighborhood"]))


def paraphrase_failed(c):
    return any(p["nllNew"] >= p["nllTrue"] for p in c["post"]["paraphrase"])


def auc(positives, negatives):
    if not positives or not negatives:
        return None, None
    ranked = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    # Mann-Whitney U from average ranks (ties share their mean rank).
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    n1, n0 = len(positives), len(negatives)
    a = (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = ((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)) ** 0.5
    return a, se


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    out = None
    if "--out" in args:
        k = args.index("--out")
        out = args[k + 1]
        del args[k:k + 2]
    cs = [c for path in args for c in cases(path)]
    if not cs:
        sys.exit("no case carries uncertainty signals (run the eval with an SAE attached)")
    signals = sorted({k for c in cs for k in c["uncertainty"]})
    failures = {"neighbour_lost": neighbour_lost, "paraphrase_failed": paraphrase_failed}
    result = {"reports": args, "cases": len(cs), "signals": {}}
    for f, failed in failures.items():
        result[f + "_cases"] = sum(1 for c in cs if failed(c))
    for s in signals:
        have = [c for c in cs if s in c["uncertainty"]]
        row = {"cases": len(have), "mean": sum(c["uncertainty"][s] for c in have) / len(have)}
        for f, failed in failures.items():
            a, se = auc([c["uncertainty"][s] for c in have if failed(c)], [c["uncertainty"][s] for c in have if not failed(c)])
            row[f] = {"auc": a, "se": se}
        result["signals"][s] = row
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
