"""A tiny BatchNorm CNN shared by the CNN-repair tests: conv → BN → ReLU6 → depthwise conv
→ BN → ReLU → pointwise conv → BN → pool → Linear → BN1d → ReLU → Linear.

Its BatchNorm statistics are set (not trained) so that folded per-channel weight ranges differ
by a factor of about 100, like a real MobileNet's depthwise layers."""

import torch
from torch import nn


class ToyCNN(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.dw_act = nn.ReLU()
        self.pw = nn.Conv2d(8, 16, 1)
        self.pw_bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 12)
        self.fc_bn = nn.BatchNorm1d(12)
        self.fc_act = nn.ReLU()
        self.head = nn.Linear(12, 4)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                    c = m.num_features
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.3)
                    m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                    # variances spanning four decades: folded ranges differ ~100x
                    m.running_var.copy_(10 ** (torch.rand(c, generator=g) * 4 - 3))
        self.eval()

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        x = self.dw_act(self.dw_bn(self.dw(x)))
        x = self.flatten(self.pool(self.pw_bn(self.pw(x))))
        return self.head(self.fc_act(self.fc_bn(self.fc(x))))


def images(n: int = 4, batch: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 6, 6, generator=g) for _ in range(n)]
