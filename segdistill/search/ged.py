"""Graph edit distances between architecture graphs (:mod:`segdistill.search.graph`): exact, under a fixed node
correspondence, and its differentiable expectation under a supernet's architecture distribution (L_struct of seed
000, ``../shared/docs/methods.md`` "Structural KD with architecture search").

Costs (:class:`EditCosts`, all in [0, 1])
-----------------------------------------
* node substitution a -> b: 1 when the labels differ; otherwise 0.5 if the strides differ plus 0.25 if the channel
  buckets differ (so 0, 0.25, 0.5 or 0.75); capped at 1, so a substitution never costs more than a deletion;
* with ``family`` set (``search.ged_family_cost``), two different labels of one family (:data:`LABEL_FAMILY`: the
  convolutions ``conv-k1``, ``conv-k3``, ``conv-k5+``, ``dilated``, ``dw-conv``, ``mbconv``; the token mixers
  ``attention``, ``linear``, ``mlp``) cost ``family`` plus the stride and bucket terms instead of 1: an MBConv in
  place of a teacher's 3x3 conv is then cheaper than no node at all (a deletion plus an insertion), so the term
  rewards resembling the teacher instead of only penalising extra nodes;
* node insertion / deletion: 1;
* edge insertion / deletion: 1 (edges carry no labels, so an edge substitution costs 0).

The size of a graph is its node count plus its edge count; ``normalize=True`` divides a distance by the size of the
**second** graph (the teacher), so a value of 1 means "as much editing as building the teacher from nothing".

Fixed correspondence (:func:`correspondence`)
---------------------------------------------
Nodes have a position (stage, relative depth) (:func:`~segdistill.search.graph.node_positions`). Each student node
*prefers* the teacher node of its stage with the nearest relative depth (ties: the smaller node id); a student node
whose stage has no teacher node prefers none. Each teacher node is matched to the nearest (by depth, ties: smaller
id) of the student nodes that prefer it; the other student nodes are deleted, teacher nodes without a match are
inserted. The mapping is one-to-one, so :func:`correspondence_ged` is the cost of one edit path and an upper bound of
:func:`exact_ged` (with the same costs).

Expected GED (:func:`expected_ged`)
-----------------------------------
The same rule on a :class:`~segdistill.search.graph.SoftGraph`, in expectation, with every node present
independently with probability P_i (mass of its non-absent candidates) and every edge present with probability
``prob * P_u * P_v``. A student node i preferring teacher node t wins t when it is present and none of the nearer
rivals is: P(win_i) = P_i * Q_i, Q_i = prod over nearer rivals k of (1 - P_k). Then

    E[cost] = sum_i [ Q_i * sum_c p_ic * subst(c, t) + (1 - Q_i) * P_i * c_node ]   (students preferring some t)
            + sum_i P_i * c_node                                                      (students preferring none)
            + sum_t prod_{i prefers t} (1 - P_i) * c_node                             (teacher nodes inserted)
            + sum_(u,v) prob_uv P_u P_v * c_edge + |E_t| * c_edge
            - sum_(u,v) maps onto a teacher edge prob_uv P(win_u) P(win_v) * 2 c_edge

(an edge is inserted unless it maps onto a teacher edge, and a teacher edge deleted unless one maps onto it). It is
exact under independence (the two ends of an edge prefer different teacher nodes, so their winning events involve
disjoint nodes), differentiable in every probability, and at one-hot probabilities it equals
:func:`correspondence_ged` of :meth:`SoftGraph.to_graph` (same normalisation), hence >= the exact GED.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import networkx as nx
import torch

from .graph import ABSENT, STAGE_STRIDES, SoftGraph, node_key, node_positions

LABEL_FAMILY = {**dict.fromkeys(("conv-k1", "conv-k3", "conv-k5+", "dilated", "dw-conv", "mbconv"), "conv"),
                **dict.fromkeys(("attention", "linear", "mlp"), "token")}  # other labels: a family of their own


@dataclass(frozen=True)
class EditCosts:
    """Edit costs (see the module docstring). ``node_subst`` = min(cap, label + stride + bucket mismatch terms);
    ``family`` (None: off) replaces ``label`` for two different labels of one :data:`LABEL_FAMILY`."""

    label: float = 1.0
    stride: float = 0.5
    bucket: float = 0.25
    cap: float = 1.0
    node_indel: float = 1.0
    edge_indel: float = 1.0
    family: float | None = None

    def node_subst(self, a: dict, b: dict) -> float:
        la, lb = a.get("label"), b.get("label")
        cost = 0.0
        if la != lb:
            if self.family is None or LABEL_FAMILY.get(la, la) != LABEL_FAMILY.get(lb, lb):
                return min(self.cap, self.label)
            cost = self.family
        cost += (self.stride if a.get("stride") != b.get("stride") else 0.0) + (
            self.bucket if a.get("bucket") != b.get("bucket") else 0.0)
        return min(self.cap, cost)


DEFAULT_COSTS = EditCosts()


def graph_size(g: nx.DiGraph) -> int:
    """Nodes plus edges: the normaliser of ``normalize=True``."""
    return g.number_of_nodes() + g.number_of_edges()


def _normalized(cost, teacher: nx.DiGraph, normalize: bool):
    return cost / max(1, graph_size(teacher)) if normalize else cost


# ---------------------------------------------------------------------------- exact GED
@dataclass
class GEDResult:
    """``value``: the best edit cost found (normalised when asked); ``exact``: proven minimal (the search finished
    before the time limit); otherwise ``value`` is an upper bound. ``cost``: the same value unnormalised;
    ``node_path``: the node mapping of the best path ((u, v), (u, None) = deletion, (None, v) = insertion), None when
    the bound came from :func:`correspondence_ged`."""

    value: float
    exact: bool
    seconds: float
    cost: float
    node_path: list | None = None


def exact_ged(g1: nx.DiGraph, g2: nx.DiGraph, timeout: float | None = 10.0, normalize: bool = False,
              costs: EditCosts = DEFAULT_COSTS, stage_strides: Sequence[int] = STAGE_STRIDES) -> GEDResult:
    """Graph edit distance of two directed graphs by networkx's exact search (``nx.optimize_edit_paths``, the engine
    of ``nx.graph_edit_distance``) with :class:`EditCosts`.

    The search starts with :func:`correspondence_ged` as its upper bound (it prunes paths that cost more) and stops
    after ``timeout`` seconds (None: no limit; building networkx's cost matrices comes on top, about a second for
    graphs of 40 nodes). ``exact`` is True only when it finished within the limit; otherwise ``value`` is the best
    cost found so far, never above the correspondence bound. Zoo models' graphs (30-140 nodes) are far beyond an exact
    search: expect ``exact=False`` and an upper bound for them; exact values come for graphs of about a dozen nodes.
    """
    if timeout is not None and timeout <= 0:
        raise ValueError(f"exact_ged: timeout must be > 0 seconds or None, got {timeout}")
    bound = correspondence_ged(g1, g2, normalize=False, costs=costs, stage_strides=stage_strides)
    best, path = bound, None
    start = time.perf_counter()
    paths = nx.optimize_edit_paths(
        g1, g2,
        node_subst_cost=costs.node_subst,
        node_del_cost=lambda a: costs.node_indel,
        node_ins_cost=lambda a: costs.node_indel,
        edge_subst_cost=lambda a, b: 0.0,
        edge_del_cost=lambda a: costs.edge_indel,
        edge_ins_cost=lambda a: costs.edge_indel,
        upper_bound=bound + 1e-9,
        strictly_decreasing=True,
        timeout=timeout,
    )
    for node_path, _edge_path, cost in paths:
        if cost <= best:
            best, path = float(cost), node_path
    seconds = time.perf_counter() - start
    # networkx starts its clock after ours, so finishing within the limit on our clock means it never timed out
    exact = timeout is None or seconds < timeout
    return GEDResult(_normalized(best, g2, normalize), exact, seconds, best, path)


# ---------------------------------------------------------------------------- fixed correspondence
def _preferences(student_pos: dict, teacher_pos: dict) -> dict:
    """Each student node's preferred teacher node (same stage, nearest depth, ties: smaller id) or None."""
    by_stage: dict[int, list] = {}
    for t in sorted(teacher_pos, key=node_key):
        by_stage.setdefault(teacher_pos[t][0], []).append(t)
    pref = {}
    for s in sorted(student_pos, key=node_key):
        stage, depth = student_pos[s]
        options = by_stage.get(stage, [])
        pref[s] = min(options, key=lambda t: abs(teacher_pos[t][1] - depth)) if options else None
    return pref


def _rivals(pref: dict, student_pos: dict, teacher_pos: dict) -> dict:
    """``{teacher node: student nodes preferring it, nearest first (ties: smaller id)}``."""
    out: dict = {t: [] for t in teacher_pos}
    for s, t in pref.items():
        if t is not None:
            out[t].append(s)
    for t, ss in out.items():
        ss.sort(key=lambda s: (abs(student_pos[s][1] - teacher_pos[t][1]), node_key(s)))
    return out


def correspondence(student: nx.DiGraph, teacher: nx.DiGraph, stage_strides: Sequence[int] = STAGE_STRIDES) -> dict:
    """The fixed one-to-one node mapping ``{student node: teacher node}`` by (stage, relative depth) (module
    docstring); student nodes not in it are deleted, teacher nodes not in it inserted."""
    s_pos, t_pos = node_positions(student, stage_strides), node_positions(teacher, stage_strides)
    rivals = _rivals(_preferences(s_pos, t_pos), s_pos, t_pos)
    return {ss[0]: t for t, ss in rivals.items() if ss}


def edit_path_cost(g1: nx.DiGraph, g2: nx.DiGraph, mapping: dict, costs: EditCosts = DEFAULT_COSTS) -> float:
    """Cost of the edit path g1 -> g2 given by a one-to-one node ``mapping`` (g1 node -> g2 node): substitutions of
    mapped nodes, deletion of unmapped g1 nodes, insertion of unmapped g2 nodes; an edge (u, v) of g1 is kept when
    (mapping[u], mapping[v]) is an edge of g2, else deleted; g2 edges nobody maps onto are inserted."""
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("edit_path_cost: the mapping is not one-to-one")
    cost = sum(costs.node_subst(g1.nodes[u], g2.nodes[v]) for u, v in mapping.items())
    cost += (g1.number_of_nodes() - len(mapping) + g2.number_of_nodes() - len(mapping)) * costs.node_indel
    kept = sum(1 for u, v in g1.edges if u in mapping and v in mapping and g2.has_edge(mapping[u], mapping[v]))
    cost += (g1.number_of_edges() - kept + g2.number_of_edges() - kept) * costs.edge_indel
    return float(cost)


def correspondence_ged(student: nx.DiGraph, teacher: nx.DiGraph, normalize: bool = False,
                       costs: EditCosts = DEFAULT_COSTS, stage_strides: Sequence[int] = STAGE_STRIDES) -> float:
    """Edit cost under the fixed correspondence (:func:`correspondence`): an upper bound of :func:`exact_ged`."""
    cost = edit_path_cost(student, teacher, correspondence(student, teacher, stage_strides), costs)
    return _normalized(cost, teacher, normalize)


# ---------------------------------------------------------------------------- expected GED
def expected_ged(soft: SoftGraph, teacher: nx.DiGraph, normalize: bool = True, costs: EditCosts = DEFAULT_COSTS,
                 stage_strides: Sequence[int] = STAGE_STRIDES) -> torch.Tensor:
    """Differentiable expected edit cost between the architecture distribution ``soft`` and ``teacher`` under the
    fixed correspondence (formula in the module docstring); a scalar tensor on the probabilities' device, normalised
    by the teacher's size by default. At one-hot probabilities: ``correspondence_ged(soft.to_graph(), teacher)``."""
    if not soft.nodes:
        raise ValueError("expected_ged: the soft graph has no nodes")
    ref = soft.nodes[0].probs
    zero = torch.zeros((), dtype=ref.dtype if ref.is_floating_point() else torch.float32, device=ref.device)
    t_pos = node_positions(teacher, stage_strides)
    s_pos = {i: (n.stage, n.depth) for i, n in enumerate(soft.nodes)}
    pref = _preferences(s_pos, t_pos)
    present = [n.presence() for n in soft.nodes]
    node_cost, win = zero, {}
    for t, ss in _rivals(pref, s_pos, t_pos).items():
        none_nearer = zero + 1.0
        for s in ss:
            node = soft.nodes[s]
            subst = [(c, costs.node_subst({"label": lab, "stride": node.strides[c], "bucket": node.buckets[c]},
                                          teacher.nodes[t])) for c, lab in enumerate(node.labels) if lab != ABSENT]
            e_subst = sum((node.probs[c] * w for c, w in subst), zero)
            node_cost = node_cost + none_nearer * e_subst + (1 - none_nearer) * present[s] * costs.node_indel
            win[s] = present[s] * none_nearer
            none_nearer = none_nearer * (1 - present[s])
        node_cost = node_cost + none_nearer * costs.node_indel
    for s, t in pref.items():
        if t is None:
            node_cost = node_cost + present[s] * costs.node_indel
    edge_cost = zero + teacher.number_of_edges() * costs.edge_indel
    for e in soft.edges:
        edge_cost = edge_cost + e.prob * present[e.u] * present[e.v] * costs.edge_indel
        a, b = pref[e.u], pref[e.v]
        if a is not None and b is not None and a != b and teacher.has_edge(a, b):
            edge_cost = edge_cost - e.prob * win[e.u] * win[e.v] * 2 * costs.edge_indel
    return _normalized(node_cost + edge_cost, teacher, normalize)
