"""The exact area under the ROC curve of scores against 0/1 labels, from ranks (Mann-Whitney U).

Tied scores share their average rank, so a constant predictor scores exactly 0.5. A split that
holds one class only has no ranking to judge; it scores 0.5 too (chance), not NaN, so reports
and metrics stay finite.
"""

from __future__ import annotations

import torch

__all__ = ["binary_auc"]


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUC of ``scores`` (any real values, higher: more likely positive) for ``labels`` (0/1,
    the same number of entries; a label above 0.5 is positive)."""
    s = scores.detach().reshape(-1).to(torch.float64).cpu()
    positive = labels.detach().reshape(-1).cpu().to(torch.float64) > 0.5
    if len(s) != len(positive):
        raise ValueError(f"binary_auc: {len(s)} scores but {len(positive)} labels")
    n_pos = int(positive.sum())
    n_neg = len(s) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: its run's last rank minus half its ties.
    ends = torch.cumsum(counts, 0).to(torch.float64)
    ranks = (ends - (counts.to(torch.float64) - 1) / 2)[inverse]
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)
