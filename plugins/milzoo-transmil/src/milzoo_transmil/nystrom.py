"""Nystrom self-attention (Xiong et al. 2021) as TransMIL uses it (docs/methods.md section 4.1).

Written from that description, not from the ``nystrom-attention`` package.
For a sequence of ``L`` tokens (zero-padded at the *front* to a multiple of the
landmark count ``m``) and per-head queries/keys/values ``q, k, v``:

- ``q`` is scaled by ``dim_head ** -0.5``;
- landmarks ``q~, k~`` are the means of ``m`` consecutive groups of ``L / m`` tokens;
- ``A1 = softmax(q k~^T)`` ``[L, m]``, ``A2 = softmax(q~ k~^T)`` ``[m, m]``,
  ``A3 = softmax(q~ k^T)`` ``[m, L]``;
- output ``(A1 pinv(A2)) (A3 v)``, evaluated as ``A1 (pinv(A2) (A3 v))``, plus a depthwise convolution of ``v`` along the
  sequence (kernel 33, one filter per head, no bias), then the output projection
  and dropout, then the front padding is stripped.  (milzoo projects before padding and strips
  before the output projection: the same numbers, since ``to_qkv`` has no bias and ``to_out`` acts
  row by row, without the work on up to ``m - 1`` zero tokens.)

No ``L x L`` tensor is ever built: the largest intermediates are ``[H, L, m]``,
so memory grows linearly with the bag size.  The class-token attention row is
obtained the same way, ``(A1[cls] pinv(A2)) A3`` (``[H, L]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``a [B, H, m, m]`` by the iterative scheme of Nystromformer.

    ``Z0 = a^T / (max_i sum_j |a_ij| * max_j sum_i |a_ij|)``, then
    ``Z <- 1/4 Z (13 I - aZ (15 I - aZ (7 I - aZ)))``.  The two maxima are taken
    per bag over all heads (the reference code takes them over the whole
    tensor, which with its batch of one bag is the same), so that bags batched
    together never influence each other.
    """
    m = a.shape[-1]
    absa = a.abs()
    row_max = absa.sum(dim=-1).flatten(1).amax(dim=1)  # [B]
    col_max = absa.sum(dim=-2).flatten(1).amax(dim=1)  # [B]
    z = a.transpose(-1, -2) / (row_max * col_max).view(-1, 1, 1, 1)
    eye = torch.eye(m, dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nystrom self-attention with a convolutional value residual."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
        padding_output: str = "strip",
    ):
        super().__init__()
        if padding_output not in ("strip", "keep"):
            raise ValueError(f"padding_output must be 'strip' or 'keep', not {padding_output!r}")
        #: "strip": the output rows of the front zero-padding are dropped (nystrom-attention >= 0.0.10);
        #: "keep": the first n rows are kept, padding included, and the last ones dropped (0.0.9's out[:, :n])
        self.padding_output = padding_output
        self.heads = heads
        self.dim_head = dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.res_conv = (
            nn.Conv2d(
                heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0), groups=heads, bias=False
            )
            if residual_kernel > 0
            else None
        )

    def factors(self, x: Tensor) -> dict[str, Tensor | int]:
        """The Nystrom pieces for ``x [B, n, dim]`` (after front padding to ``L`` tokens).

        Returns ``a1 [B,H,L,m]``, ``a2_inv [B,H,m,m]``, ``a3 [B,H,m,L]``,
        ``v [B,H,L,dh]`` and ``pad`` (the number of zero tokens put in front).
        """
        b, n, _ = x.shape
        m = self.num_landmarks
        pad = (-n) % m
        length = n + pad
        # Project, then pad: ``to_qkv`` has no bias, so a zero token's q, k, v are zero and this is
        # exactly the reference's "pad x, then project", without projecting up to m - 1 zero rows.
        qkv = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if pad:
            qkv = F.pad(qkv, (0, 0, pad, 0))
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # [B, H, L, dh]
        group = length // m
        q_land = q.reshape(b, self.heads, m, group, self.dim_head).mean(dim=3)
        k_land = k.reshape(b, self.heads, m, group, self.dim_head).mean(dim=3)
        a1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)
        a2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)
        a3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)
        a2_inv = iterative_pinv(a2, self.pinv_iterations)
        return {"a1": a1, "a2_inv": a2_inv, "a3": a3, "v": v, "pad": pad}

    def forward(self, x: Tensor, query_index: int | None = None) -> tuple[Tensor, Tensor | None]:
        """``x [B, n, dim] -> [B, n, dim]``.

        With ``query_index`` also returns that token's approximate attention row
        over the ``n`` tokens, ``[B, H, n]`` (front padding dropped).
        """
        n = x.shape[1]
        f = self.factors(x)
        a1, a2_inv, a3, v, pad = f["a1"], f["a2_inv"], f["a3"], f["v"], f["pad"]
        # (A1 pinv(A2)) (A3 v) evaluated right to left: A1 (pinv(A2) (A3 v)).  The same product,
        # but the [B, H, L, m] matrix A1 pinv(A2) is never built (nor kept for backward), and the
        # L x m x m product becomes L x m x dh.
        out = a1 @ (a2_inv @ (a3 @ v))  # [B, H, L, dh]
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        b, h, _, dh = out.shape
        # the front padding is stripped before the (row-wise) output projection, not after it; nystrom-attention
        # 0.0.9 (which the official TransMIL requirements pin) kept the first n rows instead
        start = pad if self.padding_output == "strip" else 0
        out = self.to_out(out[:, :, start:start + n].transpose(1, 2).reshape(b, n, h * dh))
        row = None
        if query_index is not None:
            qi = start + query_index
            row = ((a1[:, :, qi : qi + 1] @ a2_inv) @ a3).squeeze(2)[:, :, pad:]  # [B, H, n]
        assert out.shape[1] == n
        return out, row
