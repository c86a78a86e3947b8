"""The backbones, written out with timm's module and key names, each giving dense cell features.

ResNet-18/50 (``conv1``, ``bn1``, ``layer1.0.conv1`` …, ``fc``) and ViT-S/16, ViT-B/16
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.0.attn.qkv`` …, ``norm``,
``head``) compute what timm's ``resnet*`` and ``vit_*_patch16_224`` compute on the same state
dict (tests/timm compares them with timm itself), so torchgeo's SSL4EO-S12 files load as they
are. Written here rather than imported from timm because timm needs torchvision, which does not
install beside the CPU build of PyTorch this project pins.

``features(x)`` is the map of one vector per 32 px cell: a ResNet's stride-32 map, or a ViT's
16 px patch tokens averaged 2 x 2 (position embeddings resampled to the window's patch grid as
timm's ``dynamic_img_size`` does).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}

# (embedding width, blocks, heads) of timm's ViTs with 16 px patches.
_VITS = {
    "vit_small_patch16_224": (384, 12, 6),
    "vit_base_patch16_224": (768, 12, 12),
}
ARCHS: tuple[str, ...] = (*_LAYERS, *_VITS)
EMBEDDING_DIM = {"resnet18": 512, "resnet50": 2048, **{a: v[0] for a, v in _VITS.items()}}
CELL_PX = 32  # the embedding cell: a ResNet's output stride, 2 x 2 ViT patches


def is_vit(arch: str) -> bool:
    return arch in _VITS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-18/50 with timm key names; ``features`` is the dense stride-32 map."""

    def __init__(self, arch: str, in_chans: int, num_classes: int = 1000):
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = (
            BasicBlock if arch == "resnet18" else Bottleneck
        )
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        layers = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), _LAYERS[arch], strict=True)):
            layers.append(self._make_layer(block, planes, blocks, 1 if i == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The model's own embedding of a whole input (n, dim): global average pooling."""
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)


class VisionTransformer(nn.Module):
    """timm's ``vit_*_patch16_224`` (class token, pre-norm blocks, final norm).

    ``pos_embed`` keeps the checkpoint's 14 x 14 grid and is resampled to the input's patch grid
    on each pass (bicubic, antialiased: timm's ``resample_abs_pos_embed``), so any window that is
    a multiple of 16 px runs with the published weights unchanged.
    """

    def __init__(self, arch: str, in_chans: int, num_classes: int = 1000, img_size: int = 224):
        super().__init__()
        dim, depth, heads = _VITS[arch]
        self.patch = 16
        self.grid = img_size // self.patch
        self.patch_embed = PatchEmbed(in_chans, dim, self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        # timm's initialisation, for the seeded encoder.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = grid.shape[-1]
        grid = grid.float().reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True)
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(self.pos_embed.dtype)
        return torch.cat([cls, grid], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The normed tokens (n, 1 + patches, dim): timm's ``forward_features``."""
        x = self.patch_embed.proj(x)
        n, dim, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + self._pos_embed(gh, gw)
        return self.norm(self.blocks(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell features (n, dim, h/32, w/32): each 32 px cell's 2 x 2 patch tokens averaged."""
        n, _, h, w = x.shape
        patches = self.tokens(x)[:, 1:]
        gh, gw = h // self.patch, w // self.patch
        grid = patches.transpose(1, 2).reshape(n, -1, gh, gw)
        return F.avg_pool2d(grid, CELL_PX // self.patch)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The model's own embedding of a whole input (n, dim): the class token, normed."""
        return self.tokens(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def build_backbone(arch: str, in_chans: int) -> ResNet | VisionTransformer:
    """The backbone ``arch`` with ``in_chans`` input bands, initialised as timm does."""
    if arch in _LAYERS:
        return ResNet(arch, in_chans)
    if arch in _VITS:
        return VisionTransformer(arch, in_chans)
    raise ValueError(f"unknown model.arch {arch!r}; known: {', '.join(ARCHS)}")
