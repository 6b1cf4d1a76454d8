#!/usr/bin/env python3
"""How far a rank-one write at an entity's key reaches other entities' keys and generic text keys.

Reads the key statistics mesa stored in the state directory: C (every token of 300,000 Wikipedia
tokens) and C_e (the last-token keys of 2,000 bare article titles, `entity_keys`) per layer. For
a write at key k* solved under A = C + ρ·C_e (λ cancels), x = A⁻¹k*, the update's own gain is
g = k*ᵀx and its response at another key k is kᵀx. With k* drawn from the entities and only
second moments known, the mean squared response per unit own gain is approximated by
    text:     tr(A⁻¹C·A⁻¹C_e) / tr(A⁻¹C_e)²      entities: tr(A⁻¹C_e·A⁻¹C_e) / tr(A⁻¹C_e)²
(ratios of expectations). Usage:
    python3 ops/experiments/entity_spill.py [--state DIR] [--layers 3 5 7] [--out results/entity-spill.md]
"""
import argparse, json, os, struct
import numpy as np

def load(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[8:16])[0]
    h = json.loads(b[16:16 + n])
    return np.frombuffer(b[16 + n:], dtype=np.float32).reshape(h['dim'], h['dim']).astype(np.float64)

def main():
    home = os.environ.get('MESA_HOME', os.path.expanduser('~/.local/share/mesa'))
    p = argparse.ArgumentParser()
    p.add_argument('--state', default=os.path.join(home, 'state', '0a8d0d8a6913af64', 'stats'))
    p.add_argument('--layers', type=int, nargs='+', default=[3, 5, 7])
    p.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results', 'entity-spill.md'))
    a = p.parse_args()
    lines = ['| layer | tr(C_e)/tr(C) | ρ | text spill | entity spill | entity / text |', '|---:|---:|---:|---:|---:|---:|']
    for l in a.layers:
        c = load(os.path.join(a.state, f'0a8d0d8a6913af64-layer{l}-n300000-seq512-seed0.stat'))
        e = load(os.path.join(a.state, f'0a8d0d8a6913af64-layer{l}-n2000-seq0-seed0-entities.stat'))
        ff = c.shape[0]
        c = c + 1e-4 * np.trace(c) / ff * np.eye(ff)   # mom2_ridge as deployed
        for rho in (0, 0.1, 1, 3):
            A = c + rho * e
            ae, ac = np.linalg.solve(A, e), np.linalg.solve(A, c)
            own = np.trace(ae)
            text, ent = np.trace(ac @ ae) / own ** 2, np.trace(ae @ ae) / own ** 2
            lines.append(f'| {l} | {np.trace(e) / np.trace(c):.2f} | {rho} | {text:.2e} | {ent:.2e} | {ent / text:.2f} |')
    open(a.out, 'w').write('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__':
    main()
