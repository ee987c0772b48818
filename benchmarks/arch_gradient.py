"""Can the search tell its candidate ops apart? Per term of the architecture loss (CE, KD, GED, latency), the gradient
with respect to every architecture logit of a search run's supernet, over many architecture batches, with its
signal-to-noise ratio.

The search's Adam moves a logit by about ``arch_lr`` per step when its gradient keeps one sign, and far less when the
sign flips from batch to batch. So per choice (a chain layer's ops, a strided layer's ops; an lgcnet edge or fusion
level) this prints, for the data terms (CE + KD, which change with the batch), the mean gradient of every candidate
over ``--batches`` batches and its t statistic (mean / standard error), and the share of candidates with |t| >= 2:
those the search can learn something about in its steps. GED and latency gradients do not depend on the batch
(printed once, for scale). Skip (chain) is listed apart from the other ops: "remove the layer or not" and "which op"
are separate questions.

It rebuilds the run's trainer from its saved ``config.yaml`` and checkpoint (the same data split, augmentation,
distillation terms and latency lambdas) in a scratch folder, and never steps an optimizer. The teacher runs live
(``distill.cache=null``), so nothing is written next to the run.

    python benchmarks/arch_gradient.py --run ../runs/camvid_search/abl_archlr/search --batches 24
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def term_gradients(hook, trainer, batches: int, progress: bool = True) -> dict[str, dict[str, list]]:
    """{term: {logits name (``name[row]`` for matrices): [gradient per batch]}} for every term of the architecture
    loss (the weights' gradients are never used)."""
    import torch
    from ged_gradient import is_logits
    from tqdm import tqdm

    params = {n: p for n, p in hook.supernet.named_arch_parameters() if is_logits(n)}
    out: dict[str, dict[str, list]] = {}
    for _ in tqdm(range(batches), desc="architecture batches", disable=not progress):
        terms = hook.objective(trainer, hook.next_arch_batch())
        for term, value in terms.items():
            grads = torch.autograd.grad(value, list(params.values()), retain_graph=True, allow_unused=True)
            for (n, p), g in zip(params.items(), grads):
                g = torch.zeros_like(p) if g is None else g.detach()
                rows = [g] if g.dim() == 1 else list(g)
                for i, r in enumerate(rows):
                    out.setdefault(term, {}).setdefault(n if g.dim() == 1 else f"{n}[{i}]", []).append(r.tolist())
    return out


def stats(samples: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per candidate: mean over batches and t = mean / (std / sqrt(n)) (0 where the gradient never varies)."""
    n = len(samples)
    means, ts = [], []
    for col in zip(*samples):
        m = sum(col) / n
        sd = math.sqrt(sum((v - m) ** 2 for v in col) / max(n - 1, 1))
        means.append(m)
        ts.append(m / (sd / math.sqrt(n)) if sd > 0 else 0.0)
    return means, ts


def t_tail(df: int, threshold: float = 2.0) -> float:
    """P(|T| >= threshold) for Student's t with ``df`` degrees of freedom (numerical integration of its density)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    step, x, inside = 1e-3, 0.0, 0.0
    while x < threshold:
        inside += step * c * (1 + (x + step / 2) ** 2 / df) ** (-(df + 1) / 2)
        x += step
    return 1.0 - 2.0 * inside


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a search run's folder (config.yaml, last.pt or best.pt)")
    ap.add_argument("--checkpoint", default="last.pt", help="checkpoint in --run (default last.pt: the end state)")
    ap.add_argument("--batches", type=int, default=24, help="architecture batches to average over")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="config overrides (e.g. data.root=...)")
    args = ap.parse_args()
    print("command: python benchmarks/arch_gradient.py " + shlex.join(sys.argv[1:]), flush=True)

    from ged_gradient import candidate_names

    from segdistill.config import load_config
    from segdistill.engine.hooks import build_hooks
    from segdistill.engine.trainer import Trainer

    run = Path(args.run)
    ckpt = run / args.checkpoint
    for need in (run / "config.yaml", ckpt):
        if not need.is_file():
            sys.exit(f"{need} not found: --run must be a search run's folder with config.yaml and {args.checkpoint}")
    with tempfile.TemporaryDirectory() as scratch:
        cfg = load_config(run / "config.yaml", [f"train.out_dir={scratch}", f"train.resume={ckpt}",
                                                "distill.cache=null", "data.workers=0", "train.progress=false",
                                                f"train.threads={args.threads}", *args.overrides])
        hooks = build_hooks(cfg)
        trainer = Trainer(cfg, hooks)
        hook = next(h for h in hooks if h.name == "search")
        print(f"{cfg.search.space} supernet at iteration {trainer.state.iteration}, {args.batches} architecture "
              f"batches of {cfg.data.batch_size}; terms: CE + KD (per batch), GED, latency (constant)", flush=True)
        grads = term_gradients(hook, trainer, args.batches)

    data_terms = [t for t in grads if t in ("arch/ce", "arch/kd")]
    names = list(grads[data_terms[0]])
    data = {n: [[sum(v) for v in zip(*(grads[t][n][b] for t in data_terms))] for b in range(args.batches)]
            for n in names}
    print(f"\n## Data terms ({' + '.join(data_terms)}): mean gradient and t per candidate\n")
    print("| logits | skip: mean (t) | ops with abs(t) >= 2 | most favoured op: mean (t) | least favoured op: mean (t) |")
    print("|---|---|---|---|---|")
    per = {n: stats(data[n]) for n in names}  # (means, t) per logits vector
    strong, total = 0, 0
    for n in names:
        if not n.startswith("alpha"):  # alpha, alpha_down, alpha_fusion
            continue
        means, ts = per[n]
        ops = candidate_names(hook.supernet, n.split("[")[0], len(means))
        rest = [i for i, o in enumerate(ops) if o not in ("skip", "none")]
        sk = ops.index("skip") if "skip" in ops else None
        strong += sum(abs(ts[i]) >= 2 for i in rest)
        total += len(rest)
        fav, unf = min(rest, key=lambda i: means[i]), max(rest, key=lambda i: means[i])
        skip = f"{means[sk]:+.5f} ({ts[sk]:+.1f})" if sk is not None else "-"
        print(f"| {n} | {skip} | {sum(abs(ts[i]) >= 2 for i in rest)} of {len(rest)} | {ops[fav]} {means[fav]:+.5f} "
              f"({ts[fav]:+.1f}) | {ops[unf]} {means[unf]:+.5f} ({ts[unf]:+.1f}) |")
    print(f"\nnon-skip candidates with abs(t) >= 2: {strong} of {total} ({100 * strong / max(total, 1):.0f}%; "
          f"about {100 * t_tail(args.batches - 1):.0f}% if the gradients were pure noise)")
    # Adam moves a logit by about lr * E[g] / sqrt(E[g^2]) per step (the bias-corrected moments' ratio)
    ratios = sorted(abs(sum(c) / len(c)) / math.sqrt(sum(v * v for v in c) / len(c))
                    for n in names if n.startswith("alpha") for c in zip(*data[n]) if any(c))
    steps = max(0, (cfg.train.iters - cfg.search.warmup_iters) // cfg.search.arch_interval)
    med, p90 = ratios[len(ratios) // 2], ratios[int(0.9 * (len(ratios) - 1))]
    print(f"consistency |mean| / rms of the data-term gradient per candidate: median {med:.2f}, 90th percentile "
          f"{p90:.2f}; over this search's {steps} architecture steps at arch_lr {cfg.search.arch_lr:g} that is a "
          f"drift of about {med * steps * cfg.search.arch_lr:.2f} (median) and {p90 * steps * cfg.search.arch_lr:.2f} "
          "(90th percentile) in a logit, were the gradient to stay as it is now")
    for t in grads:
        if t in data_terms:
            continue
        mags = [abs(v) for n in names for v in grads[t][n][0]]
        print(f"{t}: constant over batches; largest |gradient| {max(mags):.5f}, mean {sum(mags) / len(mags):.5f}")
    mags = [abs(m) for means, _ in per.values() for m in means]
    print(f"data terms: largest |mean gradient| {max(mags):.5f}, mean {sum(mags) / len(mags):.5f}")


if __name__ == "__main__":
    main()
