"""PyTorch transcription of `models/dvbpr.py` (same layers, NCHW), for parity tests and the JAX-vs-PyTorch benchmark.

`from_jax(model)` copies a Flax DVBPR's params: conv kernels [kh, kw, in, out] -> [out, in, kh, kw], linear
kernels [in, out] -> [out, in], theta as is. `bpr_step` is the PyTorch side of one BPR training step.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig


class TorchDVBPR(nn.Module):
    """theta [U, K] + CNN (3x3 convs, ReLU, mean pool, fc-ReLU-fc); inputs NCHW."""

    def __init__(self, cfg: DVBPRConfig):
        super().__init__()
        self.cfg = cfg
        widths = (cfg.in_channels, *cfg.channels)
        self.theta = nn.Parameter(torch.zeros(cfg.num_users, cfg.embed_dim))
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, stride=s, padding=1)
                                    for a, b, s in zip(widths[:-1], widths[1:], cfg.strides())])
        self.fc1 = nn.Linear(cfg.channels[-1], cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.embed_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = F.relu(c(x))  # [B, C_k, H/2^k, W/2^k]
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))  # [B, K]

    def forward(self, uids, pos, neg):
        e = self.encode(torch.cat([pos, neg], 0))
        e_pos, e_neg = e.chunk(2, 0)
        th = self.theta[uids]
        return (th * e_pos).sum(-1), (th * e_neg).sum(-1)


def from_jax(model: DVBPR) -> TorchDVBPR:
    """A TorchDVBPR holding the Flax model's parameter values (fp32)."""
    t = TorchDVBPR(model.cfg)
    a = lambda v: torch.from_numpy(np.array(v[...], np.float32))  # noqa: E731
    with torch.no_grad():
        t.theta.copy_(a(model.theta))
        for tc, jc in zip(t.convs, model.encoder.convs):
            tc.weight.copy_(a(jc.kernel).permute(3, 2, 0, 1))
            tc.bias.copy_(a(jc.bias))
        for tl, jl in ((t.fc1, model.encoder.fc1), (t.fc2, model.encoder.fc2)):
            tl.weight.copy_(a(jl.kernel).T)
            tl.bias.copy_(a(jl.bias))
    return t


def bpr_step(model: TorchDVBPR, opt: torch.optim.Optimizer, uids, pos, neg, user_l2: float) -> torch.Tensor:
    """One AdamW step on the BPR objective (the same loss as training/dvbpr.py); returns the loss."""
    opt.zero_grad(set_to_none=True)
    sp, sn = model(uids, pos, neg)
    loss = F.softplus(sn - sp).mean() + user_l2 * model.theta[uids].pow(2).sum(-1).mean()
    loss.backward()
    opt.step()
    return loss.detach()
