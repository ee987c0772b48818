"""The GCN-guided module (GGM) of the LGCNet / GAS search (seed 001, ``../shared/docs/methods.md`` "Local-to-global
communication search"): it passes one cell's architecture to the next one. Search-time only: it changes the
architecture weights the supernet mixes with, never a derived network (a genotype holds ops and inputs, no GGM).

**Source and what was implemented.** The issue asks for the equations of GAS (Lin et al., CVPR 2020, "Graph-guided
Architecture Search for Real-time Semantic Segmentation"). Its text could not be retrieved in this environment (the
reference search found only its abstract and introduction), so this module implements the form written in
``methods.md`` and the issue, not a checked transcription of the paper:

* graph nodes: the operation slots (edges) of cell ``k-1``; node features ``X_{k-1} = alpha_{k-1}`` (an
  ``E x O`` matrix: E edges, O candidate ops, the raw logits);
* learned similarity adjacency between the two cells' operation nodes::

      A = softmax_rows( phi(X_k) phi'(X_{k-1})^T )          phi(X) = X W_phi,  phi'(X) = X W_phi'   (O -> d)

  (``A[i, j]``: how much edge i of cell k listens to edge j of cell k-1; rows sum to 1);
* one graph convolution::

      Z = A X_{k-1} W                                        W: O x O

* the update of the next cell's architecture: ``alpha'_k = alpha_k + gamma * Z``.

**Where we chose** (the methods note leaves the exact form open):

* ``methods.md`` writes ``A = softmax(phi(X) phi'(X)^T)`` with one X; the issue says "a learned similarity adjacency
  between the two cells' operation nodes". We take the cross-cell reading: queries from ``alpha_k``, keys from
  ``alpha_{k-1}`` (both cells have the same E x O shape in :mod:`.space_lgcnet`). With ``cross=False`` the
  adjacency is the methods.md self-similarity of ``X_{k-1}`` (then E_k must equal E_{k-1} too).
* features are the raw logits (not their softmax), as written; no scaling of the similarity, no bias, no
  non-linearity after the convolution (one layer);
* the update of cell k uses the *raw* ``alpha_{k-1}``, not its own updated ``alpha'_{k-1}`` (local exchange between
  neighbours only; no chain of updates from the first cell);
* initialisation: ``W_phi``, ``W_phi'``, ``W`` ~ N(0, 1/fan_in) so that ``Z`` starts at the scale of alpha
  (small); ``gamma`` is a fixed hyper-parameter (``search.ggm_gamma``), not learned;
* the GGM's weights are **architecture-side**: stepped by the search's architecture Adam on the architecture half
  of the data (they only shape alpha, so they are fitted to the same validation objective as alpha), never by the
  weights' optimizer.

``gamma = 0`` returns ``alpha_k`` itself (plain cell-independent search), bit for bit.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class GCNGuidedModule(nn.Module):
    """One GGM link from cell ``k-1`` to cell ``k`` (see the module docstring).

    ``forward(alpha_prev, alpha_next) -> alpha_next'``, both ``(E, O)``. ``ops``: O, ``hidden``: d."""

    def __init__(self, ops: int, hidden: int = 16, gamma: float = 0.5, cross: bool = True):
        super().__init__()
        self.gamma, self.cross = float(gamma), bool(cross)
        self.phi = nn.Parameter(torch.randn(ops, hidden) / math.sqrt(ops))
        self.phi_prime = nn.Parameter(torch.randn(ops, hidden) / math.sqrt(ops))
        self.weight = nn.Parameter(torch.randn(ops, ops) / math.sqrt(ops))

    def adjacency(self, alpha_prev: torch.Tensor, alpha_next: torch.Tensor) -> torch.Tensor:
        """``A`` (E_next x E_prev), rows softmax-normalised."""
        query = (alpha_next if self.cross else alpha_prev) @ self.phi
        return torch.softmax(query @ (alpha_prev @ self.phi_prime).t(), dim=1)

    def update(self, alpha_prev: torch.Tensor, alpha_next: torch.Tensor) -> torch.Tensor:
        """``Z = A X_{k-1} W`` (E_next x O)."""
        return self.adjacency(alpha_prev, alpha_next) @ alpha_prev @ self.weight

    def forward(self, alpha_prev: torch.Tensor, alpha_next: torch.Tensor) -> torch.Tensor:
        if self.gamma == 0:
            return alpha_next
        return alpha_next + self.gamma * self.update(alpha_prev, alpha_next)
