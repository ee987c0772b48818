"""Which way does the structural term push a search? The gradient of the normalised expected GED
(``segdistill.search.ged.expected_ged``, the term lambda_ged multiplies) with respect to every architecture logit of a
supernet, at its saved logits and at uniform logits, against a teacher's graph.

A gradient step lowers the logits with positive gradient and raises those with negative gradient, so per layer (lgcnet:
per edge and fusion level) it prints the candidate the term favours most (most negative gradient) and least, and the
gradient of skip (chain: negative removes the layer) and of none (lgcnet: negative drops the edge or fusion level).
"Uniform logits" zeroes every logit (an lgcnet GGM keeps its weights). No training, a few seconds on a CPU.

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
    """Names of the ``n`` candidates of arch parameter ``name`` (chain or lgcnet ops; indices otherwise)."""
    from segdistill.search import space_chain

    space = getattr(supernet, "space", None)
    if getattr(space, "name", "") == "lgcnet":
        ops = space.fusion_ops if name == "alpha_fusion" else space.cell_ops
        return list(ops) if n == len(ops) else [str(i) for i in range(n)]
    if name.startswith("alpha.") and n == len(space_chain.LAYER_OPS):
        return list(space_chain.LAYER_OPS)
    if name.startswith("alpha_down.") and n == len(space_chain.DOWN_OPS):
        return list(space_chain.DOWN_OPS)
    return [str(i) for i in range(n)]


def ged_gradients(supernet, teacher_graph, family: float | None = None,
                  edge: float = 1.0) -> tuple[float, dict[str, list[float]]]:
    """(expected GED, {logits name: d E[GED] / d logits}) at the supernet's current logits; a matrix of logits
    (lgcnet: one row per edge or fusion level) gives one entry per row, ``name[row]``. The GGM's weights are left
    out (not logits)."""
    from segdistill.search.ged import EditCosts, expected_ged
    from segdistill.search.objective import soft_graph

    params = dict(supernet.named_arch_parameters())
    for p in params.values():
        p.grad = None
    value = expected_ged(soft_graph(supernet), teacher_graph, costs=EditCosts(family=family, edge_indel=edge))
    value.backward()
    out = {}
    for n, p in params.items():
        if p.grad is None or not is_logits(n):
            continue
        rows = [p.grad] if p.dim() == 1 else list(p.grad)
        out.update({n if p.dim() == 1 else f"{n}[{i}]": g.tolist() for i, g in enumerate(rows)})
    return float(value.detach()), out


def is_logits(name: str) -> bool:
    return name.split(".")[0] in ("alpha", "alpha_down", "alpha_fusion", "beta", "width_logits")


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
    for state in ("saved logits", "uniform logits"):
        if state.startswith("uniform"):
            with torch.no_grad():
                for n, p in net.named_arch_parameters():
                    if is_logits(n):
                        p.zero_()
        value, grads = ged_gradients(net, tg, args.family_cost, args.edge_cost)
        print(f"\n== {state}: normalised E[GED] {value:.3f} (teacher graph: {tg.number_of_nodes()} nodes, "
              f"{tg.number_of_edges()} edges)")
        print("| logits | favoured most (grad) | favoured least (grad) | skip / none grad |")
        print("|---|---|---|---|")
        pushed = {"skip": [], "none": []}
        for name, g in grads.items():
            names = candidate_names(net, name.split("[")[0], len(g))
            lo, hi = min(range(len(g)), key=g.__getitem__), max(range(len(g)), key=g.__getitem__)
            for op, seen in pushed.items():
                if op in names:
                    seen.append(g[names.index(op)])
            marks = [f"{op} {g[names.index(op)]:+.4f}" for op in pushed if op in names]
            print(f"| {name} | {names[lo]} ({g[lo]:+.4f}) | {names[hi]} ({g[hi]:+.4f}) | {', '.join(marks) or '-'} |")
        for op, seen in pushed.items():
            if seen:
                print(f"choices the term pushes to {op} (negative {op} gradient): {sum(v < 0 for v in seen)} of "
                      f"{len(seen)}")


if __name__ == "__main__":
    main()
