"""State control: how much slower or faster this machine runs now than when a table's correction was fitted.

A table predicts milliseconds for the machine *as it was* when its blocks and networks were timed. A shared VM does
not stay that machine: the Intel Xeon of 2026-12-07 ran the same network 1.8x slower in the afternoon than in the
morning (benchmarks/RESULTS.md), so a table measured in one state was 20-90% off in the other, while the ratios
between networks measured side by side held.

``segdistill latency fit`` therefore keeps the whole networks it timed and their times in the correction
(``correction["measured"]``). A later measurement times a few of them again, in the same passes as the networks it
cares about, and

    state ratio  s = median over the reference networks of  (time now / time at the fit)

A prediction times ``s`` is the table's prediction for the machine's state now. The spread of the per-network ratios
says whether the change is one uniform factor (then the scaled prediction can be trusted) or not (a different
machine, or a contended one: the scaled prediction is then only a rough guide).

``segdistill latency state --lut L`` prints the ratio; ``benchmarks/camvid_search.py --latency --state-tables DIR``
records it in every latency window and its report scales the predictions by it.
"""
from __future__ import annotations

import statistics

from ..errors import LatencyError
from .network import NetSpec


def fit_record(nets: list[NetSpec], measured_ms: list[float], timing: dict, date: str) -> dict:
    """What ``latency fit`` keeps of the networks it timed (``correction["measured"]``)."""
    return {"date": date, "timing": dict(timing),
            "networks": [{"net": n.to_dict(), "ms": float(ms)} for n, ms in zip(nets, measured_ms)]}


def kept_networks(table) -> list[dict]:
    """The timed networks the table's correction keeps (empty when it keeps none)."""
    return ((table.correction or {}).get("measured") or {}).get("networks") or []


def references(table, k: int = 3) -> list[tuple[str, NetSpec, float]]:
    """``k`` of the networks the table's correction was fitted on, spread over their range of times (fastest,
    slowest and evenly between), as ``(label, net, ms at the fit)``. The labels are unique even where two fit
    inputs gave networks of one name."""
    kept = kept_networks(table)
    if not kept:
        raise LatencyError(f"{table.path or 'the table'}: its correction keeps no timed networks (fitted before "
                           "2026-12-07, or never fitted), so there is nothing to time again; run `segdistill latency "
                           f"fit --lut {table.path or 'LUT'}` on the table's device first")
    nets = sorted(enumerate(kept), key=lambda im: im[1]["ms"])
    k = max(1, min(k, len(nets)))
    picks = sorted({round(i * (len(nets) - 1) / (k - 1)) for i in range(k)} if k > 1 else {len(nets) // 2})
    return [(f"ref{nets[j][0]}:{nets[j][1]['net']['name']}", NetSpec.from_dict(nets[j][1]["net"]), nets[j][1]["ms"])
            for j in picks]


def state_ratio(refs: list[tuple[str, NetSpec, float]], now_ms: dict[str, float]) -> dict:
    """The state ratio from the reference networks' times now (``now_ms``: label -> ms): its median, the
    per-network ratios, and their spread (largest over smallest)."""
    missing = [label for label, _, _ in refs if label not in now_ms]
    if missing:
        raise LatencyError(f"state control: no time now for {', '.join(missing)}")
    nets = {label: {"fit_ms": then, "now_ms": float(now_ms[label]), "ratio": float(now_ms[label]) / then}
            for label, _, then in refs}
    ratios = [v["ratio"] for v in nets.values()]
    return {"ratio": statistics.median(ratios), "spread": max(ratios) / min(ratios), "nets": nets}


def reference_fns(refs: list[tuple[str, NetSpec, float]], platform: str, threads: int) -> dict:
    """label -> the prepared runner of each reference network on ``platform`` (call inside ``torch_threads`` and
    the malloc mode of the measurement), to time with :func:`standalone.measure_interleaved` beside other runners."""
    from . import standalone as core
    from .network import ChainNet

    plat = core.get_platform(platform)
    return {label: plat.prepare(ChainNet(net).eval(), core.example_inputs([net.input_shape[1:]]), threads).fn
            for label, net, _ in refs}


def measure_state(table, nets: int = 3, repeats: int = 3, warmup: int = 5, min_runs: int = 20,
                  min_time: float = 1.0) -> dict:
    """Time ``nets`` of the table's reference networks now, in ``repeats`` round-robin passes on the table's platform
    with its threads and malloc mode (it must be the table's device), and return :func:`state_ratio` with the
    table's stamp, the date and the passes."""
    from . import standalone as core

    why = table.local_problem()
    if why:
        raise LatencyError(f"the state control times networks on the table's device, but {why}; run it there")
    refs = references(table, nets)
    malloc = core.table_malloc_mode(table.data) or "steady"
    with core.malloc_mode(malloc), core.torch_threads(table.threads):
        res = core.measure_interleaved(reference_fns(refs, table.platform, table.threads), repeats, warmup=warmup,
                                       min_runs=min_runs, min_time=min_time)
    out = state_ratio(refs, {k: v["median_ms"] for k, v in res.items()})
    out.update(table=table_stamp(table), date=core.now_iso(), repeats=repeats)
    return out


def describe(state: dict) -> str:
    """One line: the ratio, its spread and each reference network's times."""
    return (f"state ratio {state['ratio']:.3f} (spread {state['spread']:.3f}; "
            + ", ".join(f"{k} {v['fit_ms']:.2f} -> {v['now_ms']:.2f} ms" for k, v in state["nets"].items()) + ")")


def table_stamp(table) -> dict:
    """What identifies the table a state ratio is relative to (its path, build date and fit date)."""
    return {"path": str(table.path) if table.path else None, "date": table.data.get("date"),
            "fit_date": ((table.correction or {}).get("measured") or {}).get("date")}
