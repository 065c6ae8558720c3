"""Independent PyTorch LV-ViT written from SPEC §1 with the official parameter names, used as the
numerical reference for conversion. Not derived from ppim's Paddle code."""
import torch
from torch import nn


class Stem(nn.Module):
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


class Attn(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q * (d // self.heads) ** -0.5) @ k.transpose(-1, -2)).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, skip_lam):
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = Attn(dim, heads), Mlp(dim, 3 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) / self.skip_lam
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
