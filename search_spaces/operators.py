"""Operators of the unified space: the blocks of MetaNet and UniNet, and UniNet's downsampling modules.

Every block maps an NCHW tensor to an NCHW tensor, so stages can mix convolution and transformer
blocks freely; attention blocks flatten to tokens inside. Layer order, bias flags and shortcuts follow
the released MetaNet (gv-benchmark) and UniNet code so that the presets reproduce their sizes.
Every attention operator goes through :func:`metanet.kernels.attention` (:func:`attend`).

Forward passes are plain tensor ops with no Python-side shape branching, so every block runs under
``torch.jit.script``, ``torch.fx.symbolic_trace`` and timm's FX feature extraction: :func:`attend`
and :func:`rel_pos_bias` are FX leaves (``torch.fx.wrap``), and scripted models take SDPA in place of
the Triton kernel (a custom op TorchScript cannot carry).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, SqueezeExcite, make_divisible, trunc_normal_

from metanet.kernels import attention

LAYER_SCALE_INIT = 1e-6


@torch.jit.unused
def _kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                      scale: Optional[float]) -> torch.Tensor:
    return attention(q, k, v, bias=bias, scale=scale)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
           scale: Optional[float] = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v through metanet's attention op; SDPA inside TorchScript."""
    if torch.jit.is_scripting():
        if bias is not None:
            bias = bias.to(q.dtype)
            if bias.dim() == 3:
                bias = bias.unsqueeze(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return _kernel_attention(q, k, v, bias, scale)


def relative_index(h: int, w: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """(N, N) indices into a flattened (2h-1, 2w-1) table of relative offsets on an (h, w) grid."""
    ys = torch.arange(h, device=device)[:, None].expand(h, w).flatten()
    xs = torch.arange(w, device=device)[None, :].expand(h, w).flatten()
    dy = ys[:, None] - ys[None, :] + h - 1
    dx = xs[:, None] - xs[None, :] + w - 1
    return dy * (2 * w - 1) + dx


def rel_pos_bias(table: torch.Tensor, index: torch.Tensor, grid: Tuple[int, int], h: int, w: int) -> torch.Tensor:
    """The (heads, N, N) bias of an (h, w) grid from a table learned on ``grid`` (resized bicubically,
    as timm's ``resize_rel_pos_bias_table`` does, when the grids differ)."""
    if h == grid[0] and w == grid[1]:
        return table.flatten(1)[:, index]
    resized = F.interpolate(table.unsqueeze(0), size=(2 * h - 1, 2 * w - 1), mode="bicubic", align_corners=False)
    return resized[0].flatten(1)[:, relative_index(h, w, table.device)]


# leaves for FX: the kernel call and the grid-dependent branch are recorded as calls, not traced into
torch.fx.wrap("attend")
torch.fx.wrap("rel_pos_bias")


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def se_channels(channels: int) -> int:
    # MetaNet squeezes by 4 and rounds to a multiple of 8 (never down by more than 10%).
    return make_divisible(channels // 4, 8)


def squeeze_excite(channels: int) -> nn.Module:
    return SqueezeExcite(channels, rd_channels=se_channels(channels), act_layer=nn.ReLU, gate_layer="hard_sigmoid")


def strided_shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """MetaNet's shortcut when the shape changes: max-pool for the stride, 1x1 conv for the width."""
    return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.Conv2d(cin, cout, 1))


class MBConv(nn.Module):
    """Expand 1x1, depthwise 3x3, squeeze-excitation, project 1x1 (MetaNet MBConv3x3 / UniNet DWConvBlock)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: float = 4, drop_path: float = 0.0, **_):
        super().__init__()
        hidden = int(cin * expand)
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else strided_shortcut(cin, cout, stride)
        self.expand = None
        if cin != hidden or stride != 1:
            self.expand = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, hidden, 1, bias=False),
                                        nn.BatchNorm2d(hidden), nn.GELU())
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.se = squeeze_excite(hidden)
        self.conv_pw = nn.Conv2d(hidden, cout, 1)
        self.bn_pw = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn_pw.weight)  # the block starts as its shortcut
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        shortcut = self.shortcut(x)
        if self.expand is not None:
            x = self.expand(x)
        x = self.se(self.act(self.bn_dw(self.conv_dw(x))))
        x = self.bn_pw(self.conv_pw(x))
        return shortcut + self.drop_path(x)


class FusedMBConv(nn.Module):
    """A full 3x3 conv replaces MBConv's expand + depthwise pair (MetaNet FusedMBConv3x3)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: float = 4, drop_path: float = 0.0, **_):
        super().__init__()
        hidden = int(cin * expand)
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else strided_shortcut(cin, cout, stride)
        self.conv_exp = None
        if cin != hidden:
            self.conv_exp = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, hidden, 3, stride, 1, bias=False),
                                          nn.BatchNorm2d(hidden), nn.GELU())
        self.se = squeeze_excite(hidden)
        # Without an expansion the projection is the 3x3 conv and carries the stride.
        k, s = (1, 1) if self.conv_exp is not None else (3, stride)
        self.conv_pw = nn.Conv2d(hidden, cout, k, s, k // 2)
        self.bn_pw = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn_pw.weight)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        shortcut = self.shortcut(x)
        if self.conv_exp is not None:
            x = self.conv_exp(x)
        x = self.bn_pw(self.conv_pw(self.se(x)))
        return shortcut + self.drop_path(x)


class RelPosBias(nn.Module):
    """A learned relative-position bias per head for global attention on an (h, w) grid.

    The table is sized for the grid at the build resolution and resized bicubically when the model
    runs at another resolution, so one set of weights serves every input size.
    """

    def __init__(self, num_heads: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = tuple(grid)
        gh, gw = self.grid
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * gh - 1, 2 * gw - 1))
        trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", relative_index(gh, gw), persistent=False)

    def forward(self, h: int, w: int) -> torch.Tensor:
        return rel_pos_bias(self.table, self.index, self.grid, h, w)


class MultiHeadAttention(nn.Module):
    """Global multi-head self-attention over tokens; the projection may change the width."""

    def __init__(self, dim: int, out_dim: int, head_dim: int, rel_pos_grid: tuple[int, int] | None = None):
        super().__init__()
        self.num_heads = dim // head_dim
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, out_dim)
        self.rel_pos = RelPosBias(self.num_heads, rel_pos_grid) if rel_pos_grid else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, C = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias: Optional[torch.Tensor] = None
        if self.rel_pos is not None:
            bias = self.rel_pos(h, w)
        x = attend(q, k, v, bias)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossCovarianceAttention(nn.Module):
    """XCA (XCiT): a d x d attention map per head across channels, linear in the token count.

    Written as ordinary attention on transposed operands: channels are the "sequence" and tokens the
    "feature" axis; the learned per-head temperature is folded into the normalised queries.
    """

    def __init__(self, dim: int, out_dim: int, head_dim: int, rel_pos_grid=None):
        super().__init__()
        self.num_heads = dim // head_dim
        self.temperature = nn.Parameter(torch.ones(self.num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, C = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1).unbind(0)
        q = F.normalize(q, dim=-1) * self.temperature
        k = F.normalize(k, dim=-1)
        x = attend(q, k, v, None, 1.0)  # (B, heads, d, N)
        return self.proj(x.permute(0, 3, 1, 2).reshape(B, N, C))


class TransformerBlock(nn.Module):
    """MetaNet SABlock / XCA Block and UniNet AttentionBlock.

    At constant shape: positional encoding, pre-norm attention and MLP, each with LayerScale.
    When the block changes stride or width (``dsm='block'``): norm, max-pool, attention whose
    projection sets the new width, against a max-pool + 1x1 shortcut, without an MLP (MetaNet).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: float = 4, head_dim: int = 32,
                 drop_path: float = 0.0, mixer: str = "attention", rel_pos_grid: tuple[int, int] | None = None, **_):
        super().__init__()
        self.reduce = stride != 1 or cin != cout
        self.pos_embed = None if rel_pos_grid else nn.Conv2d(cin, cin, 3, 1, 1, groups=cin)
        self.norm1 = nn.LayerNorm(cin)
        attn_cls = CrossCovarianceAttention if mixer == "xca" else MultiHeadAttention
        self.attn = attn_cls(cin, cout, head_dim, rel_pos_grid=rel_pos_grid)
        self.ls1 = LayerScale(cout, LAYER_SCALE_INIT)
        # the other form's modules are None, so TorchScript drops the branch that would use them
        self.pool = self.shortcut = self.norm2 = self.mlp = self.ls2 = None
        if self.reduce:
            self.pool = nn.MaxPool2d(3, stride, 1)
            self.shortcut = strided_shortcut(cin, cout, stride)
        else:
            self.norm2 = nn.LayerNorm(cin)
            self.mlp = Mlp(cin, int(cin * expand), act_layer=nn.GELU)
            self.ls2 = LayerScale(cout, LAYER_SCALE_INIT)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)
        if self.shortcut is not None and self.pool is not None:
            shortcut = self.shortcut(x)
            h, w = shortcut.shape[2], shortcut.shape[3]
            y = to_map(self.norm1(to_tokens(x)), x.shape[2], x.shape[3])
            y = self.attn(to_tokens(self.pool(y)), h, w)
            return shortcut + to_map(self.ls1(y), h, w)
        assert self.norm2 is not None and self.mlp is not None and self.ls2 is not None
        h, w = x.shape[2], x.shape[3]
        t = to_tokens(x)
        t = t + self.drop_path(self.ls1(self.attn(self.norm1(t), h, w)))
        t = t + self.drop_path(self.ls2(self.mlp(self.norm2(t))))
        return to_map(t, h, w)


class LocalDSM(nn.Module):
    """UniNet L-DSM: strided depthwise 3x3 + BN + 1x1, against a max-pool + 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 2, **_):
        super().__init__()
        self.shortcut = strided_shortcut(cin, cout, stride) if stride > 1 else nn.Conv2d(cin, cout, 1)
        self.local = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.BatchNorm2d(cin),
                                   nn.Conv2d(cin, cout, 1))

    def forward(self, x):
        return self.local(x) + self.shortcut(x)


class LocalGlobalDSM(nn.Module):
    """UniNet LG-DSM: queries from the strided local path, keys and values from every input token."""

    def __init__(self, cin: int, cout: int, stride: int = 2, head_dim: int = 32, **_):
        super().__init__()
        self.num_heads = cout // head_dim
        self.shortcut = strided_shortcut(cin, cout, stride) if stride > 1 else nn.Conv2d(cin, cout, 1)
        self.q = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.BatchNorm2d(cin),
                               nn.Conv2d(cin, cout, 1))
        self.q_norm = nn.LayerNorm(cout)
        self.kv_norm = nn.LayerNorm(cin)
        self.kv = nn.Linear(cin, cout * 2)
        self.proj = nn.Linear(cout, cout)

    def forward(self, x):
        shortcut = self.shortcut(x)
        B, C, h, w = shortcut.shape[0], shortcut.shape[1], shortcut.shape[2], shortcut.shape[3]
        d = C // self.num_heads
        q = self.q_norm(to_tokens(self.q(x))).reshape(B, h * w, self.num_heads, d).transpose(1, 2)
        kv = self.kv(self.kv_norm(to_tokens(x)))
        k, v = kv.reshape(B, kv.shape[1], 2, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        y = attend(q, k, v).transpose(1, 2).reshape(B, h * w, C)
        return shortcut + to_map(self.proj(y), h, w)


# -- factories with the operator signature every plugin uses ------------------------------------
# factory(cin, cout, stride, expand, head_dim, drop_path, grid); registered by metanet.plugins.operators.

def mbconv(cin, cout, stride, expand, head_dim, drop_path, grid) -> nn.Module:
    return MBConv(cin, cout, stride, expand, drop_path)


def fused_mbconv(cin, cout, stride, expand, head_dim, drop_path, grid) -> nn.Module:
    return FusedMBConv(cin, cout, stride, expand, drop_path)


def attention_block(cin, cout, stride, expand, head_dim, drop_path, grid) -> nn.Module:
    return TransformerBlock(cin, cout, stride, expand, head_dim, drop_path)


def attention_rpb_block(cin, cout, stride, expand, head_dim, drop_path, grid) -> nn.Module:
    return TransformerBlock(cin, cout, stride, expand, head_dim, drop_path, rel_pos_grid=grid)


def xca_block(cin, cout, stride, expand, head_dim, drop_path, grid) -> nn.Module:
    return TransformerBlock(cin, cout, stride, expand, head_dim, drop_path, mixer="xca")


def make_block(op: str, cin: int, cout: int, stride: int, expand: float, head_dim: int,
               drop_path: float, grid: tuple[int, int]) -> nn.Module:
    """One block of the registered operator ``op``; ``grid`` is its output token grid at the build resolution."""
    from metanet.plugin.manager import registry
    return registry().operator(op).build(cin, cout, stride, expand, head_dim, drop_path, grid)


DOWNSAMPLERS = {"local": LocalDSM, "local_global": LocalGlobalDSM}


def make_downsample(dsm: str, cin: int, cout: int, stride: int, head_dim: int) -> nn.Module:
    if dsm not in DOWNSAMPLERS:
        raise ValueError(f"unknown downsampling module {dsm!r}")
    return DOWNSAMPLERS[dsm](cin, cout, stride, head_dim=head_dim)
