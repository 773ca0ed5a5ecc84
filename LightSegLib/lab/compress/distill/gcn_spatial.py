"""Spatial (graph) distillation for TinyUnet: match student and teacher on a graph of edge keypoints.

Why: boundaries are where a small segmentation net loses Dice, and a graph over boundary points carries the
*relations* between distant parts of a structure, not just per-pixel values. Steps (teacher side detached):
1. edge-strengthen the teacher's deep feature map: Sobel magnitude of its channel mean;
2. keypoints: the top-k pixels of that edge map (per image);
3. graph: k-nearest neighbours of each keypoint in image coordinates, symmetric, self loops, D^-1/2 A D^-1/2;
4. node features: teacher and (1x1-adapted) student features at the keypoints, weighted by 1 + edge strength;
5. the same small GCN on both, MSE between its outputs relative to the teacher's (scale-free).
The GCN's weights are fixed random orthogonal projections: trained jointly they could shrink to zero and make
the loss trivially small; fixed, they are a stable relational embedding. The student's adapter does train.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import adapter, match_size, relative_mse

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def edge_strength(feat: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the channel mean, [N, 1, H, W], scaled to [0, 1] per image."""
    m = feat.mean(dim=1, keepdim=True)
    kx = _SOBEL_X.to(feat)[None, None]
    ky = kx.transpose(-1, -2)
    padded = F.pad(m, [1, 1, 1, 1], mode="replicate")
    mag = torch.sqrt(F.conv2d(padded, kx) ** 2 + F.conv2d(padded, ky) ** 2 + 1e-12)
    peak = mag.flatten(1).amax(dim=1).clamp_min(1e-12)
    return mag / peak[:, None, None, None]


def keypoints(edge: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices [N, k] of the k strongest edge pixels of each image."""
    flat = edge.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).indices


def knn_adjacency(idx: torch.Tensor, width: int, neighbours: int) -> torch.Tensor:
    """Normalised adjacency [N, K, K] of the kNN graph over keypoint coordinates (self loops included)."""
    yx = torch.stack([idx // width, idx % width], dim=-1).float()
    dist = torch.cdist(yx, yx)
    nn_idx = dist.topk(min(neighbours + 1, idx.shape[1]), dim=-1, largest=False).indices  # includes self
    adj = torch.zeros_like(dist).scatter_(-1, nn_idx, 1.0)
    adj = ((adj + adj.transpose(1, 2)) > 0).float()
    deg = adj.sum(-1)
    inv = deg.rsqrt()
    return inv[:, :, None] * adj * inv[:, None, :]


def gather_nodes(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] at flat indices [N, K] -> [N, K, C]."""
    flat = feat.flatten(2)
    return flat.gather(2, idx[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


class GraphKD(nn.Module):
    def __init__(self, student_channels: int, teacher_channels: int, keypoints: int = 64, neighbours: int = 8,
                 hidden: int = 64, seed: int = 0):
        super().__init__()
        self.adapter = adapter(student_channels, teacher_channels)
        self.k = int(keypoints)
        self.neighbours = int(neighbours)
        g = torch.Generator().manual_seed(seed)
        w1 = torch.empty(teacher_channels, hidden)
        w2 = torch.empty(hidden, hidden)
        for w in (w1, w2):
            q, _ = torch.linalg.qr(torch.randn(max(w.shape), max(w.shape), generator=g))
            w.copy_(q[:w.shape[0], :w.shape[1]])
        self.register_buffer("w1", w1)
        self.register_buffer("w2", w2)

    def gcn(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = F.relu(adj @ x @ self.w1)
        return adj @ h @ self.w2

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        t = teacher_feat.detach()
        s = match_size(self.adapter(student_feat), t)
        with torch.no_grad():
            edge = edge_strength(t)
            idx = keypoints(edge, self.k)
            adj = knn_adjacency(idx, t.shape[-1], self.neighbours)
            weight = 1.0 + gather_nodes(edge, idx)  # [N, K, 1]
        node_t = gather_nodes(t, idx) * weight
        node_s = gather_nodes(s, idx) * weight
        return relative_mse(self.gcn(node_s, adj), self.gcn(node_t, adj))
