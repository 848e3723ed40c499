"""BEATs audio encoder (Chen et al. 2022, microsoft/unilm `beats/`), inference-focused, with the upstream parameter
names, so the released `BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt` state dict loads with every key matched.

No PyPI package ships a BEATs that runs beside this torch (the ones that exist import torchaudio), so the encoder is
written here: 16×16 patch embedding → LayerNorm → projection to the encoder width; a weight-normed grouped-conv
positional embedding; post-LN transformer layers with deep-norm residual scaling, a bucketed relative position bias
owned by layer 0 and shared by all layers, gated per head (GRU-style `grep_*`). Input is the Kaldi log-mel fbank that
the pipeline stores as `media/mel/{clip_id}.npy` (T×128, `pipeline.ingest.audio_features.log_mel`); BEATs' own
normalisation `(x − 15.41663) / (2 · 6.55582)` is applied by `normalise_fbank`.

`BEATs.forward` returns the last hidden state and the concatenation of the outputs of the tapped layers (ACL-SSL
taps the 0-based layers 3, 7 and 11 → 3 × 768 = 2304 channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from is4.manifests.errors import FatalError

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
ATTENTION_ALPHA = 32.0  # upstream's logit rescaling: q / alpha, then (qk - max) * alpha


class BEATsError(FatalError, ValueError):
    """A BEATs checkpoint cannot be read or does not match the encoder."""


@dataclass
class BEATsConfig:
    """Upstream `BEATsConfig` fields and defaults; a checkpoint's `cfg` dict overrides them (unknown keys ignored)."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> BEATsConfig:
        """The config of a checkpoint's `cfg` dict (keys this encoder does not use are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})


def normalise_fbank(fbank: torch.Tensor) -> torch.Tensor:
    """BEATs' input normalisation of a Kaldi log-mel fbank."""
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


class _WeightNormConv1d(nn.Module):
    """`nn.utils.weight_norm(Conv1d, dim=2)` with the same parameter names (`weight_g`, `weight_v`, `bias`)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel) * 0.02)
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=(0, 1), keepdim=True).clone())
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class _SamePad(nn.Module):
    """Drops the last time step after an even-kernel convolution (upstream `SamePad`)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class MultiheadAttention(nn.Module):
    """Self-attention with BEATs' rescaled logits, optional bucketed relative bias and its per-head gating."""

    def __init__(self, cfg: BEATsConfig, has_relative_bias: bool):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.num_heads, self.head_dim = heads, dim // heads
        self.scaling = self.head_dim**-0.5
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        self.dropout = nn.Dropout(cfg.attention_dropout)

    def _buckets(self, relative: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        buckets = (relative > 0).long() * half
        distance = relative.abs()
        exact = half // 2
        large = (
            exact + (torch.log(distance.float() / exact) / math.log(self.max_distance / exact) * (half - exact)).long()
        )
        large = torch.clamp(large, max=half - 1)
        return buckets + torch.where(distance < exact, distance, large)

    def compute_bias(self, length: int) -> torch.Tensor:
        """Relative position bias, heads × length × length."""
        positions = torch.arange(length, device=self.relative_attention_bias.weight.device)
        relative = positions[None, :] - positions[:, None]
        return self.relative_attention_bias(self._buckets(relative)).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, dim = x.shape
        if position_bias is None and hasattr(self, "relative_attention_bias"):
            position_bias = self.compute_bias(length)
        heads = (batch, length, self.num_heads, self.head_dim)
        q = (self.q_proj(x) * self.scaling / ATTENTION_ALPHA).view(heads).transpose(1, 2)
        k = self.k_proj(x).view(heads).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        logits = q @ k.transpose(-1, -2)
        logits = (logits - logits.amax(dim=-1, keepdim=True)) * ATTENTION_ALPHA
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.gru_rel_pos:
                query = q * ATTENTION_ALPHA / self.scaling
                gates = torch.sigmoid(self.grep_linear(query).view(batch, self.num_heads, length, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            logits = logits + bias
        attention = self.dropout(torch.softmax(logits, dim=-1))
        out = (attention @ v).transpose(1, 2).reshape(batch, length, dim)
        return self.out_proj(out), position_bias


class EncoderLayer(nn.Module):
    """A transformer layer: post-LN with deep-norm residual scaling (or pre-LN when `layer_norm_first`)."""

    def __init__(self, cfg: BEATsConfig, has_relative_bias: bool):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = MultiheadAttention(cfg, has_relative_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.layer_norm_first:
            attended, position_bias = self.self_attn(self.self_attn_layer_norm(x), position_bias)
            x = x + self.dropout(attended)
            return x + self._ffn(self.final_layer_norm(x)), position_bias
        attended, position_bias = self.self_attn(x, position_bias)
        x = self.self_attn_layer_norm(x * self.alpha + self.dropout(attended))
        return self.final_layer_norm(x * self.alpha + self._ffn(x)), position_bias


class TransformerEncoder(nn.Module):
    """Positional convolution, LayerNorm and the layers; the relative bias module is layer 0's, shared by all."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            _WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups), _SamePad(cfg.conv_pos), nn.GELU()
        )
        self.layers = nn.ModuleList(
            EncoderLayer(cfg, cfg.relative_position_embedding and i == 0) for i in range(cfg.encoder_layers)
        )
        if cfg.relative_position_embedding:
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.layerdrop = cfg.encoder_layerdrop
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, taps: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        tapped, position_bias = [], None
        for i, layer in enumerate(self.layers):
            if not self.training or self.layerdrop == 0 or float(torch.rand(())) > self.layerdrop:
                x, position_bias = layer(x, position_bias)
            if i in taps:
                tapped.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, tapped


class BEATs(nn.Module):
    """The BEATs encoder; `forward(fbank)` takes raw log-mel fbanks (B × T × 128) and normalises them itself."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        patch = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=patch, stride=patch, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)
        self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class) if cfg.finetuned_model else None

    def forward(self, fbank: torch.Tensor, taps: tuple[int, ...] = (3, 7, 11)) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state B×N×D, tapped layers concatenated B×N×(len(taps)·D)) for raw fbanks B×T×128."""
        patch = self.cfg.input_patch_size
        frames = fbank.shape[1] - fbank.shape[1] % patch
        if frames == 0:
            raise BEATsError(f"BEATs needs at least {patch} fbank frames, got {fbank.shape[1]}")
        x = self.patch_embedding(normalise_fbank(fbank[:, :frames]).unsqueeze(1))
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x, tapped = self.encoder(self.dropout_input(x), taps)
        return x, (torch.cat(tapped, dim=-1) if tapped else x[:, :, :0])


def load_beats(path: str | Path, drop_predictor: bool = True) -> BEATs:
    """A BEATs encoder from an upstream checkpoint (`{'cfg': ..., 'model': state_dict}`; a directory holding one
    `.pt` file works too), loaded strictly with `weights_only=True`. ACL drops the AudioSet classifier head."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.pt"))
        if len(candidates) != 1:
            raise BEATsError(f"{path}: expected one BEATs .pt checkpoint in the directory, found {len(candidates)}")
        path = candidates[0]
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BEATsError(f"{path}: cannot read BEATs checkpoint: {exc}") from None
    if not isinstance(checkpoint, dict) or "cfg" not in checkpoint or "model" not in checkpoint:
        raise BEATsError(f"{path}: not a BEATs checkpoint (expected the keys 'cfg' and 'model')")
    model = BEATs(BEATsConfig.from_dict(checkpoint["cfg"]))
    result = model.load_state_dict(checkpoint["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BEATsError(
            f"{path}: state dict does not match BEATs: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    if drop_predictor:
        model.predictor = None
    return model


# The upstream-format `cfg` of `build_tiny_beats`'s checkpoint.
TINY_BEATS_CFG: dict[str, Any] = {
    "input_patch_size": 16,
    "embed_dim": 8,
    "encoder_layers": 12,
    "encoder_embed_dim": 16,
    "encoder_ffn_embed_dim": 32,
    "encoder_attention_heads": 2,
    "deep_norm": True,
    "conv_pos": 8,
    "conv_pos_groups": 4,
    "relative_position_embedding": True,
    "num_buckets": 32,
    "max_distance": 64,
    "gru_rel_pos": True,
    "finetuned_model": True,
    "predictor_class": 5,
}


def build_tiny_beats(out_dir: Path, seed: int = 0) -> Path:
    """A BEATs checkpoint in the upstream format (`{'cfg': ..., 'model': state_dict}` in `beats.pt`): 12 layers of
    width 16 with deep norm, shared bucketed relative position bias, gating and an AudioSet-style predictor head."""
    torch.manual_seed(seed)
    model = BEATs(BEATsConfig.from_dict(TINY_BEATS_CFG))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": TINY_BEATS_CFG, "model": model.state_dict()}, out_dir / "beats.pt")
    return out_dir
