"""PyTorch reference of DiFashion's `FashionEvaluator` with the original's parameter names (written from the
architecture description in difashion_eval.md §3; used by the converter parity test and to produce state dicts)."""
from __future__ import annotations

import itertools

import torch
from torch import nn


def _group(din: int, dout: int, p: float) -> list[nn.Module]:
    return [nn.Linear(din, dout), nn.LayerNorm(dout), nn.ReLU(), nn.Dropout(p)]


class FashionEvaluator(nn.Module):
    """State-dict keys: feat_layer.*, emb_layer.{0,1,4,5,8,9,12,13}.*, eval_layer.{0,1,4,5,8,9,12}.*."""

    def __init__(self, cnn_feat_dim: int = 1024, item_dim: int = 1024, emb_widths=(512, 512, 256, 256),
                 eval_widths=(128, 128, 32), dropout: float = 0.35):
        super().__init__()
        self.feat_layer = nn.Linear(cnn_feat_dim, item_dim)
        widths = (2 * item_dim,) + tuple(emb_widths)
        self.emb_layer = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in _group(a, b, dropout)])
        widths = (emb_widths[-1],) + tuple(eval_widths)
        layers = [m for a, b in zip(widths, widths[1:]) for m in _group(a, b, dropout)]
        self.eval_layer = nn.Sequential(*layers, nn.Linear(eval_widths[-1], 1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # [B, 4, F] -> logits [B]
        f = self.feat_layer(feats)
        pairs = list(itertools.combinations(range(feats.shape[1]), 2))
        x = torch.stack([torch.cat([f[:, i], f[:, j]], dim=-1) for i, j in pairs], dim=1)
        return self.eval_layer(self.emb_layer(x).mean(dim=1)).view(-1)
