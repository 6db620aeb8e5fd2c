"""A loss: ``objective: "byo_user.losses:focal_loss"``.

tidal calls ``focal_loss(output, target)`` on every batch, where ``output`` is the model's
(batch, classes) logits and ``target`` the (batch,) class ids, and differentiates the scalar it
returns (the batch's mean loss). Evaluations report the mean of it over the validation split as
the job's metric, named ``focal_loss`` (lower is better).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAMMA = 2.0  # how much easy examples are down-weighted (0: plain cross-entropy)


def focal_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_true)^gamma, batch mean."""
    log_p = F.log_softmax(output.float(), dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (-((1 - log_p.exp()) ** GAMMA) * log_p).mean()
