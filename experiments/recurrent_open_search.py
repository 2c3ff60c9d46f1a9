"""Issue 23 acceptance: a plain recurrent goal runs the open search over the generated recurrent library
(rules.recurrent_library), for several seeds; its selected rule is scored on fixedpoint-mnist beside rec_dW4 alone
(paired over the same episodes, discovery.analysis.stats.paired_difference) and on fixedpoint-linear beside
dW1–dW3 (docs/results.md, issue 23).

Run (both phases, or one):
    python -m experiments.recurrent_open_search --phase search --seed 0 --out results/recurrent_open_search
    python -m experiments.recurrent_open_search --phase score --seeds 0 1 2 --out results/recurrent_open_search

``search`` writes ``search_<seed>.json`` (the goal, the resolved spec's sizes, the front, the selected rule, wall
time); ``score`` reads them and writes ``score.json`` (per seed: the fixedpoint-mnist entries of the selected rule
and the baselines with η tuned the same way for all, the paired difference selected − dW4 per seed and pooled, the
fixedpoint-linear entries). Sizes are flags so that the run fits the machine; the JSON records them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GOAL = "find a local learning rule for a recurrent network that converges to fixed points"


def run_search(seed: int, out: Path, episodes: int | None, eval_episodes: int | None, width: int | None) -> dict:
    """The plain goal, read by discovery.goal, run by discovery.router.discover (the same path as a job)."""
    from discovery.goal import parse_goal
    from discovery.results import jsonable
    from discovery.router import discover
    from discovery.spec import DiscoverySpec

    parsed = parse_goal(GOAL)
    raw = parsed.spec.model_dump()
    raw["meta"]["seed"] = seed
    if episodes is not None:
        raw["meta"]["episodes"] = episodes
    if eval_episodes is not None:
        raw["meta"]["eval_episodes"] = eval_episodes
    if width is not None:
        raw["network"]["widths"] = [784, width, 10]
    spec = DiscoverySpec.model_validate(raw)
    t0 = time.perf_counter()
    result = discover(spec, checkpoint_dir=out / f"ckpt_{seed}")
    record = {"goal": GOAL, "understood": parsed.understood, "seed": seed, "wall_s": time.perf_counter() - t0,
              "sizes": {"N": spec.network.widths[1], "inner_steps": spec.task.shots,
                        "batch": spec.task.ways * spec.task.queries, "episodes": spec.meta.episodes,
                        "screen_episodes": spec.search.screen_episodes, "max_terms": spec.search.max_terms,
                        "eval_episodes": spec.meta.eval_episodes, "pool_size": len(spec.rule.terms or [])},
              "front": [p.model_dump() for p in result.front], "selected": result.rule, "theta": result.theta,
              "heldout_accuracy": result.heldout_accuracy, "heldout_ci95": result.heldout_ci95,
              "search": result.search}
    (out / f"search_{seed}.json").write_text(json.dumps(jsonable(record), indent=1))
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["search", "score", "all"], default="all")
    ap.add_argument("--seed", type=int, default=None, help="one seed (search phase)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("results/recurrent_open_search"))
    ap.add_argument("--episodes", type=int, default=None, help="the search's budget (default: the goal's)")
    ap.add_argument("--eval-episodes", type=int, default=None)
    ap.add_argument("--width", type=int, default=None, help="N of the search (default: the goal's)")
    ap.add_argument("--score-episodes", type=int, default=None, help="fixedpoint-mnist episodes per seed")
    ap.add_argument("--score-epochs", type=int, default=None)
    ap.add_argument("--score-n", type=int, default=None, help="N of the fixedpoint-mnist scoring")
    ap.add_argument("--linear-iterations", type=int, default=None)
    ap.add_argument("--score-eta-scales", type=float, nargs="+", default=None,
                    help="the η grid c of fixedpoint-mnist (the same for every learner)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed] if args.seed is not None else args.seeds
    if args.phase in ("search", "all"):
        for s in seeds:
            rec = run_search(s, args.out, args.episodes, args.eval_episodes, args.width)
            print(f"seed {s}: selected {rec['theta']} acc {rec['heldout_accuracy']} ({rec['wall_s']:.0f} s)",
                  flush=True)
    if args.phase in ("score", "all"):
        from experiments.recurrent_open_score import score_all

        score_all(seeds, args.out, episodes=args.score_episodes, epochs=args.score_epochs, N=args.score_n,
                  linear_iterations=args.linear_iterations, eta_scales=args.score_eta_scales)


if __name__ == "__main__":
    main()
