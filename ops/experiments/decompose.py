#!/usr/bin/env python3
"""Where a sequential `mesa eval` report's specificity went: for each quarter of the stream (by edit
order), the neighbourhood success on the base model (pre), right after the record's own edit
(immediate: its own spill plus every earlier edit's) and after the whole stream (post: plus every
later edit's); and the mean change of the neighbour prompts' NLL of the true and of the new object
between those three points (nats; the neighbour margin is nll_new - nll_true).

Damage that is already there at "immediate" for late records but not for early ones, and that
grows from "immediate" to "post" for early records, comes from the accumulation of other edits, not
from each edit's spill onto its own neighbours. A second table gives ES, PS, NS and S (their harmonic
mean) per quarter right after the record's own edit and at the end: whether a stream loses its
score when an edit is made (immediate) or later (fading).

    python3 ops/experiments/decompose.py REPORT.json [--first N] [--out FILE]

--first N: only the first N records in edit order (to set a long run beside a shorter one).
"""
import gzip
import json
import statistics
import sys


def main():
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1]
        del args[i:i + 2]
    first = None
    if "--first" in args:
        i = args.index("--first")
        first = int(args[i + 1])
        del args[i:i + 2]
    cases = [c for c in json.load((gzip.open if args[0].endswith(".gz") else open)(args[0], "rt"))["cases"] if "post" in c and "immediate" in c]
    cases = cases[:first] if first else cases
    lines = [f"report: {args[0]}", f"cases: {len(cases)} (in edit order)", ""]

    def success(group, stage):
        return 100 * sum(c[stage]["neighborhood"][0]["nllNew"] > c[stage]["neighborhood"][0]["nllTrue"] for c in group) / len(group)

    lines.append("| edits | NS base | NS immediate | NS final |")
    lines.append("|---|---:|---:|---:|")
    quarter = max(1, len(cases) // 4)
    for lo in range(0, len(cases), quarter):
        g = cases[lo:lo + quarter]
        lines.append(f"| {lo}-{lo + len(g) - 1} | {success(g, 'pre'):.1f} | {success(g, 'immediate'):.1f} | {success(g, 'post'):.1f} |")
    lines.append(f"| all | {success(cases, 'pre'):.1f} | {success(cases, 'immediate'):.1f} | {success(cases, 'post'):.1f} |")
    def rate(group, stage, kind, new_wins):
        hits = 0
        for c in group:
            ps = c[stage][kind]
            hits += sum((p["nllNew"] < p["nllTrue"]) == new_wins for p in ps) / len(ps)
        return 100 * hits / len(group)

    def scores(group, stage):
        es, ps = rate(group, stage, "rewrite", True), rate(group, stage, "paraphrase", True)
        ns = rate(group, stage, "neighborhood", False)
        s = 3 / sum(1 / max(x, 1e-9) for x in (es, ps, ns))
        return f"{es:.1f} | {ps:.1f} | {ns:.1f} | {s:.2f}"

    lines += ["", "| edits | ES imm. | PS imm. | NS imm. | S imm. | ES final | PS final | NS final | S final |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lo in range(0, len(cases), quarter):
        g = cases[lo:lo + quarter]
        lines.append(f"| {lo}-{lo + len(g) - 1} | {scores(g, 'immediate')} | {scores(g, 'post')} |")
    lines.append(f"| all | {scores(cases, 'immediate')} | {scores(cases, 'post')} |")
    lines += ["", "| from → to | ΔNLL(new) | ΔNLL(true) | Δmargin |", "|---|---:|---:|---:|"]
    for a, b in [("pre", "immediate"), ("immediate", "post"), ("pre", "post")]:
        dn = statistics.mean(c[b]["neighborhood"][0]["nllNew"] - c[a]["neighborhood"][0]["nllNew"] for c in cases)
        dt = statistics.mean(c[b]["neighborhood"][0]["nllTrue"] - c[a]["neighborhood"][0]["nllTrue"] for c in cases)
        lines.append(f"| {a} → {b} | {dn:+.3f} | {dt:+.3f} | {dn - dt:+.3f} |")
    text = "\n".join(lines) + "\n"
    if out:
        open(out, "w").write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
