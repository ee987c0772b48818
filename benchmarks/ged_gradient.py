"""Which way does the structural term push a search? The gradient of the normalised expected GED
(``segdistill.search.ged.expected_ged``, the term lambda_ged multiplies) with respect to every architecture logit of a
supernet, at its saved logits and at uniform logits, against a teacher's graph.

A gradient step lowers the logits with positive gradient and raises those with negative gradient, so per layer it
prints the candidate the term favours most (most negative gradient) and least, and, for the chain space, the skip
candidate's gradient (negative: the term removes the layer). No training, a few seconds on a CPU.

    python benchmarks/ged_gradient.py --teacher ../runs/camvid_baselines/teacher/seed0/best.pt \
        --supernet ../runs/camvid_search/torch20/search/best.pt
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def candidate_names(supernet, name: str, n: int) -> list[str]:
    """Names of the ``n`` candidates of arch parameter ``name`` (chain space layer ops; indices otherwise)."""
    from segdistill.search import space_chain

    if name.startswith("alpha.") and n == len(space_chain.LAYER_OPS):
        return list(space_chain.LAYER_OPS)
    if name.startswith("alpha_down.") and n == len(space_chain.DOWN_OPS):
        return list(space_chain.DOWN_OPS)
    return [str(i) for i in range(n)]


def ged_gradients(supernet, teacher_graph, family: float | None = None,
                  edge: float = 1.0) -> tuple[float, dict[str, list[float]]]:
    """(expected GED, {arch parameter name: d E[GED] / d logits}) at the supernet's current logits."""
    from segdistill.search.ged import EditCosts, expected_ged
    from segdistill.search.objective import soft_graph

    params = dict(supernet.named_arch_parameters())
    for p in params.values():
        p.grad = None
    value = expected_ged(soft_graph(supernet), teacher_graph, costs=EditCosts(family=family, edge_indel=edge))
    value.backward()
    return float(value.detach()), {n: p.grad.flatten().tolist() for n, p in params.items() if p.grad is not None and p.dim() == 1}


def main():
    import torch

    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.search.graph import STAGE_RULES, model_graph
    from segdistill.search.space_chain import EXPECTATIONS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the teacher's checkpoint (best.pt)")
    ap.add_argument("--supernet", required=True, help="a search run's checkpoint (best.pt or last.pt)")
    ap.add_argument("--input", default="1x3x180x240", help="N x C x H x W of the teacher's graph (the search input)")
    ap.add_argument("--teacher-stages", choices=STAGE_RULES, default="stride",
                    help="how the teacher's nodes get their stage (search.ged_stages)")
    ap.add_argument("--family-cost", type=float, help="substitution cost within a label family (search.ged_family_cost)")
    ap.add_argument("--edge-cost", type=float, default=1.0,
                    help="edge insertion/deletion cost (1 as the search; 0 shows the push without the edge terms)")
    ap.add_argument("--expectation", choices=EXPECTATIONS, default="derived",
                    help="what the term's expectation is over (search.expectation): derived (the derived network's "
                         "graph, the default) or supernet (the supernet's own wiring, the searches before 2026-12-07)")
    args = ap.parse_args()
    print("command: python benchmarks/ged_gradient.py " + shlex.join(sys.argv[1:]))
    teacher, _ = build_from_checkpoint(args.teacher)
    tg = model_graph(teacher.eval(), tuple(int(v) for v in args.input.split("x")), stages=args.teacher_stages)
    net, _ = build_from_checkpoint(args.supernet)
    if not hasattr(net, "named_arch_parameters"):
        raise SystemExit(f"{args.supernet}: not a supernet checkpoint (no architecture logits)")
    net.expectation = args.expectation
    saved = {n: p.detach().clone() for n, p in net.named_arch_parameters()}
    for state in ("saved logits", "uniform logits"):
        if state.startswith("uniform"):
            with torch.no_grad():
                for n, p in net.named_arch_parameters():
                    if n in saved and p.dim() == 1:
                        p.zero_()
        value, grads = ged_gradients(net, tg, args.family_cost, args.edge_cost)
        print(f"\n== {state}: normalised E[GED] {value:.3f} (teacher graph: {tg.number_of_nodes()} nodes, "
              f"{tg.number_of_edges()} edges)")
        print("| logits | favoured most (grad) | favoured least (grad) | skip grad |")
        print("|---|---|---|---|")
        skips = []
        for name, g in grads.items():
            names = candidate_names(net, name, len(g))
            lo, hi = min(range(len(g)), key=g.__getitem__), max(range(len(g)), key=g.__getitem__)
            if "skip" in names:
                skips.append(g[names.index("skip")])
            skip = f"{skips[-1]:+.4f}" if "skip" in names else "-"
            print(f"| {name} | {names[lo]} ({g[lo]:+.4f}) | {names[hi]} ({g[hi]:+.4f}) | {skip} |")
        if skips:
            print(f"layers the term pushes to skip (negative skip gradient): {sum(v < 0 for v in skips)} of {len(skips)}")


if __name__ == "__main__":
    main()
