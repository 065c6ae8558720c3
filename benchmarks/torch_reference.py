"""Independent PyTorch references written from the papers with the official parameter names: LV-ViT
and SuperViT over DeiT or LV-ViT, structured like the official code. The numerical references
for conversion and for every SuperViT sub-network; not derived from ppim's Paddle code. Shared by
the tests (tests/conftest.py puts this folder on sys.path) and the benchmarks (the PyTorch peer)."""
import math

import torch
from torch import nn
from torch.nn import functional as F

SUPERVIT_SIZES = (128, 160, 192, 224)


class Stem(nn.Module):
    """LV-ViT's 4_2 stem."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.conv1 = nn.Conv2d(3, hidden, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(hidden)
        self.proj = nn.Conv2d(hidden, dim, 8, 8)

    def forward(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = torch.relu(bn(conv(x)))
        return self.proj(x)


class PatchStem(nn.Module):
    """DeiT's stem: one 16x16/16 convolution."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 16, 16)

    def forward(self, x):
        return self.proj(x)


class Attn(nn.Module):
    def __init__(self, dim, heads, qkv_bias=False, scale_logits=False):
        super().__init__()
        self.heads, self.scale, self.scale_logits = heads, (dim // heads) ** -0.5, scale_logits
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.scale_logits:  # DeiT: (q k^T) * scale
            weights = (q @ k.transpose(-1, -2)) * self.scale
        else:  # LV-ViT: (q * scale) k^T
            weights = (q * self.scale) @ k.transpose(-1, -2)
        weights = weights.softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d)), weights


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block with scaled residuals; keep_ratio < 1 keeps the tokens the cls token attends
    to most between attention and MLP (SuperViT). ``kept`` records the last kept patch indices."""

    def __init__(self, dim, heads, skip_lam=1.0, mlp_ratio=3.0, qkv_bias=False, eps=1e-5, scale_logits=False):
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = Attn(dim, heads, qkv_bias, scale_logits)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.kept = None

    def forward(self, x, keep_ratio=1):
        out, attn = self.attn(self.norm1(x))
        x = x + out / self.skip_lam
        if keep_ratio != 1:
            n = math.ceil(keep_ratio * x.shape[1])
            score = attn.mean(dim=1)[:, 0, 1:]
            index = torch.topk(score, k=min(n, score.shape[1]), dim=1, sorted=True).indices
            self.kept = index
            index = torch.cat([torch.zeros_like(index[:, :1]), index + 1], dim=1)
            x = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        return x + self.mlp(self.norm2(x)) / self.skip_lam


class TorchLVViT(nn.Module):
    def __init__(self, img_size=64, dim=48, depth=2, heads=3, skip_lam=2.0, stem=8, classes=10):
        super().__init__()
        tokens = (img_size // 16) ** 2
        self.patch_embed = Stem(dim, stem)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.5)
        self.blocks = nn.ModuleList(Block(dim, heads, skip_lam) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head, self.aux_head = nn.Linear(dim, classes), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0]) + 0.5 * self.aux_head(x[:, 1:]).max(1).values


class TorchSuperViT(nn.Module):
    """``arch``: deit (stem and logit scaling), skip_lam, eps, qkv_bias, mlp_ratio, aux_weight."""

    def __init__(self, arch, dim, depth, heads, classes, c0=8):
        super().__init__()
        self.arch = arch
        self.patch_embed = PatchStem(dim) if arch["deit"] else Stem(dim, c0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_list = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, (s // 16) ** 2 + 1, dim)) for s in SUPERVIT_SIZES])
        self.blocks = nn.ModuleList([
            Block(dim, heads, arch["skip_lam"], arch["mlp_ratio"], arch["qkv_bias"], arch["eps"], arch["deit"])
            for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=arch["eps"])
        self.head = nn.Linear(dim, classes)
        if arch["aux_weight"] is not None:
            self.aux_head = nn.Linear(dim, classes)

    def tokens(self, x, img_size, keep_ratio):
        x = F.interpolate(x, (img_size, img_size), mode="bilinear", align_corners=True)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed_list[SUPERVIT_SIZES.index(img_size)]
        for index, block in enumerate(self.blocks):
            x = block(x, keep_ratio if index in (3, 6, 9) else 1)
        return self.norm(x)

    def forward(self, x, img_size, keep_ratio):
        x = self.tokens(x, img_size, keep_ratio)
        logits = self.head(x[:, 0])
        if self.arch["aux_weight"] is not None:
            logits = logits + self.arch["aux_weight"] * self.aux_head(x[:, 1:]).max(1)[0]
        return logits


def randomized(model, seed=0):
    """Well-conditioned random weights and BN statistics, so every op shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(1 + 0.2 * noise.abs())
            elif tensor.ndim == 1:
                tensor.copy_((1 if name.endswith("weight") else 0) + 0.1 * noise)
            elif tensor.ndim >= 2 and not name.endswith(("pos_embed", "cls_token")):
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
    return model.eval()
