"""Auto-weight adaptation ``W`` (Jiang et al. 2023, Sec. 2.3, eqs. 7-10), exactly as written.

For encoded conditions ``y`` of ``c`` channels (``(B, c, h, w)``) with learnable ``mu, nu, o in R^c``:

    G_c     = mu_c * ( sum_{m,n} (y_c^{m,n})^2 + varpi )^(1/2)                       (eq. 8)
    G^_c    = sqrt(S) G_c / ( sum_{c'} G_{c'}^2 + varpi )^(1/2),   S = c (channels)   (eq. 9)
    y~_c    = y_c [ 1 + sigmoid(nu_c G^_c + o_c) ]                                    (eq. 10)

``varpi`` is the paper's small constant that keeps the square roots differentiable at zero. The
paper calls ``S`` "the scale" of ``G = {G_c}_{c=1}^S``: the number of channels the normalisation runs
over, so ``sum_c G^_c^2 = S`` (up to ``varpi``). Initialisation: ``mu = 1, nu = 0, o = 0`` (every
channel starts with the same gate 1.5; the gates then learn which conditions to favour).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["AutoWeight"]


class AutoWeight(nn.Module):
    """Channel gates from L2 embeddings with cross-channel normalisation (eqs. 7-10).

    Args:
        channels: ``c``, the number of condition channels.
        epsilon: ``varpi`` in eqs. 8 and 9.
    """

    def __init__(self, channels: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.epsilon = epsilon
        self.mu = nn.Parameter(torch.ones(channels))
        self.nu = nn.Parameter(torch.zeros(channels))
        self.o = nn.Parameter(torch.zeros(channels))

    def embedding(self, y: Tensor) -> Tensor:
        """``G`` of eq. 8, shape ``(B, c)``."""
        return self.mu * (y.pow(2).flatten(2).sum(-1) + self.epsilon).sqrt()

    def normalised(self, g: Tensor) -> Tensor:
        """``G^`` of eq. 9, shape ``(B, c)``."""
        return math.sqrt(self.channels) * g / (g.pow(2).sum(-1, keepdim=True) + self.epsilon).sqrt()

    def forward(self, y: Tensor) -> Tensor:
        g_hat = self.normalised(self.embedding(y))
        gate = 1.0 + torch.sigmoid(self.nu * g_hat + self.o)
        return y * gate.reshape(*gate.shape, *([1] * (y.dim() - 2)))
