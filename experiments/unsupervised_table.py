"""Print the front table of docs/results.md (Unsupervised family) from results/unsupervised/*.json."""
import json, glob
from rules.unsupervised import UNSUPERVISED_TERMS
for f in sorted(glob.glob("results/unsupervised/digits_*_seed*.json")):
    r = json.load(open(f))
    if "args" not in r: continue
    print(f"### {f} ({r['wall_time_s']:.0f} s)")
    for p in r["front"]:
        m = p["rule"]["metrics"]
        names = ", ".join(f"{UNSUPERVISED_TERMS[t].name} {v:+.5f}" for t, v in p["theta"].items())
        ratio = m["oja_ratio"]
        print(f"| {'**sel**' if p['selected'] else ''} | {p['n_terms']} | {names} | {'—' if ratio is None else f'{ratio:.3f}'} | {p['heldout_accuracy']:.4f} ± {p['heldout_ci95'] or 0:.4f} | {m['horizon']} | {m['heldout_reconstruction']:.4f} | {m['subspace_error']:.4f} | {' / '.join(f'{v:.3f}' for v in m['subspace_error_passes'])} |")
