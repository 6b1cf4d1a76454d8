#!/usr/bin/env python3
"""What the canary facts are answered after a stream of edits: the facts a journal's snapshot lost, and
what the edited model says instead.

Exports snapshot N of a `mesa eval --sequential` journal as GGUF (`mesa export --store`), then asks
the edited model each canary fact (`mesa generate`, greedy, 3 tokens) and writes a Markdown table of
the facts whose answer changed, with the count. Usage:
    python3 ops/experiments/canary_answers.py --journal $MESA_HOME/runs/encore-train-baseline-b100-10000 \
        --snapshot 10 --out ops/experiments/results/canary-answers-encore-b100-1000.md
"""
import argparse, json, os, subprocess, tempfile

def main():
    home = os.environ.get('MESA_HOME', os.path.expanduser('~/.local/share/mesa'))
    p = argparse.ArgumentParser()
    p.add_argument('--journal', required=True)
    p.add_argument('--snapshot', type=int, required=True)
    p.add_argument('--canary', default=os.path.join(home, 'state', '0a8d0d8a6913af64', 'canary-64-512-p9.json'))
    p.add_argument('--mesa', default='.build/release/mesa')
    p.add_argument('--out', required=True)
    a = p.parse_args()
    facts = json.load(open(a.canary))['facts']
    with tempfile.TemporaryDirectory() as tmp:
        gguf = os.path.join(tmp, 'edited.gguf')
        subprocess.run([a.mesa, 'export', '--store', os.path.join(a.journal, 'lmdb'), '--snapshot', str(a.snapshot),
                        '--format', 'gguf', '--out', gguf, '--threads', '1'], check=True, capture_output=True)
        rows, lost = [], 0
        for f in facts:
            out = subprocess.run([a.mesa, 'generate', '--model', gguf, '--threads', '1', '--prompt', f['prompt'], '--max-tokens', '3'],
                                 check=True, capture_output=True, text=True).stdout.strip()
            said = out[len(f['prompt']):].strip() if out.startswith(f['prompt']) else out
            if not said.startswith(f['answer']):
                lost += 1
                rows.append(f"| {f['prompt']} | {f['answer']} | {said} |")
    text = (f"Snapshot {a.snapshot} of `{os.path.basename(os.path.normpath(a.journal))}`: {lost} of {len(facts)} canary facts "
            f"answered otherwise (greedy, first words).\n\n| prompt | base model's answer | edited model says |\n|---|---|---|\n"
            + '\n'.join(rows) + '\n')
    open(a.out, 'w').write(text)
    print(text)

if __name__ == '__main__':
    main()
