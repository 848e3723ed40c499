"""Joint Slot Attention (Kim, Song, Park, Kim, Kwak, CVPR'25 "Improving Sound Source Localization with Joint Slot
Attention on Image and Audio") over the manifests; the official code (InhoKim429/JSA) cannot run as released.

Model (paper §3, App. A; the official `model_slot.py` / `resnet.py` shapes, so the parameter count is the paper's
29,708,288 at inference and 31,818,498 in training): ResNet-18 image (`imgnet`, optionally ImageNet-initialised) and
audio (`audnet`, from scratch) trunks with layer4 stride 2, a 1x1 projection conv each (`img_proj`, `aud_proj`), the
audio map max-pooled over frequency (16 time tokens for a 5-s, 257-bin spectrogram); joint slot attention
(`slot_attn`): two learnable initial slots (target, off-target) shared by both modalities, N iterations of softmax over
the slots then key-normalised weights, a GRU update and a residual MLP, per modality; in training a share of the input
tokens is replaced by learnable mask tokens (per item, keyed by clip and epoch, so masks do not depend on ranks or
resume); spatial-broadcast decoders (`img_decoder`, `aud_decoder`) reconstruct the features from the slots.

Losses (Eq. 7-13): L_ctr = symmetric InfoNCE on the target slots (tau 0.03) whose negatives exclude the reciprocal
k-NN false negatives (`false_negatives`), L_match (cross-modal target attention vs the stop-gradient intra-modal one),
L_div, L_recon; total L_ctr + 100 L_match + 0.1 L_div + 0.1 L_recon. Under DDP the target slots are gathered from
every rank and the false-negative mask is computed on the whole global batch, so W ranks x B/W train like 1 x B.

Inference: ca = audio query x image keys, ia = image query x image keys (target column, key-normalised), each bicubic
to `heatmap_size` and min-max normalised, IQR = norm(alpha ca + (1 - alpha) ia). Every place where the official code
differs from the paper is a `train.jsa` setting (`preset: jsa_official` selects the code's values); the release's
defects (the `break` that ends each epoch after one batch, the test-time forward that runs the training branch, model
selection on the test set) are not reproduced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from is4.config import JSAConfig, TrainConfig
from is4.manifests.ids import derive_seed
from is4.trainers import transforms
from is4.trainers.acl import infonce
from is4.trainers.align import _load, with_imagenet_trunk
from is4.trainers.backbones import ResNet
from is4.trainers.data import ClipIndex, item_rng, read_frame, read_wav
from is4.trainers.dist import gather, rank_offset
from is4.trainers.method import TrainError, TrainMethod

SAMPLE_RATE = 16000
N_FFT, HOP = 512, 160
SPEC_SCALE = 12.0


# --- input ----------------------------------------------------------------------------------------------------------


def centre_window(wav: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The centre `seconds` of a mono clip, tiled from its start when shorter (the official test loader)."""
    n = int(round(seconds * sample_rate))
    if len(wav) == 0:
        return np.zeros(n, dtype=np.float32)
    if len(wav) < n:
        return np.tile(wav, n // len(wav) + 1)[:n]
    start = (len(wav) - n) // 2
    return wav[start : start + n]


def power_spectrogram(wav: np.ndarray) -> torch.Tensor:
    """|STFT|^2 (n_fft 512, periodic Hann 512, hop 160, centred with reflect padding) -> (257, 1 + len / 160): the
    official loader's torchaudio Spectrogram, here with torch.stft."""
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    spec = torch.stft(
        x, N_FFT, HOP, N_FFT, torch.hann_window(N_FFT), center=True, pad_mode="reflect", return_complex=True
    )
    return spec.abs() ** 2


def log_spectrogram(wav: np.ndarray, sample_rate: int, cfg: JSAConfig, eps: float = 1e-7) -> torch.Tensor:
    """(1, 257, T) log(S + eps) / 12 of the centre `audio_seconds`."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"audio at {sample_rate} Hz, expected {SAMPLE_RATE} Hz")
    window = np.clip(centre_window(wav, cfg.audio_seconds), -1.0, 1.0)
    return (torch.log(power_spectrogram(window) + eps) / SPEC_SCALE)[None]


def trunk_size(n: int, strides: list[int], blocks: list[int]) -> int:
    """The side of a ResNet trunk's output for an input side n (7x7 conv s2, 3x3 max-pool s2, stages)."""
    n = (n + 2 * 3 - 7) // 2 + 1
    n = (n + 2 - 3) // 2 + 1
    for stride, count in zip(strides, blocks):
        if count:
            n = (n + 2 - 3) // stride + 1
    return n


def token_grid(cfg: JSAConfig) -> tuple[tuple[int, int], int]:
    """((h, w) image tokens, t audio tokens) of the configured input sizes."""
    side = trunk_size(cfg.image_size, cfg.strides, cfg.blocks)
    frames = 1 + int(round(cfg.audio_seconds * SAMPLE_RATE)) // HOP
    return (side, side), trunk_size(frames, cfg.strides, cfg.blocks)


# --- joint slot attention ------------------------------------------------------------------------------------------


def key_normalised_attention(q: torch.Tensor, k: torch.Tensor, scale: float, eps: float = 1e-8) -> torch.Tensor:
    """(B, S, N) weights of S slot queries over N keys: softmax over the slots (Eq. 3), + eps, then each slot's row
    divided by its sum over the keys (Eq. 4)."""
    attn = torch.einsum("bid,bjd->bij", q, k).mul(scale).softmax(dim=1) + eps
    return attn / attn.sum(dim=-1, keepdim=True)


class SlotAttention(nn.Module):
    """Two learnable initial slots shared by image and audio; per-modality q/k/v, GRU, MLP, LayerNorms (the official
    module names; `slot_weights: shared` keeps only the `img_*` ones, used for both)."""

    PARTS = ("to_q", "to_k", "to_v", "gru", "mlp", "norm_input", "norm_slots", "norm_pre_ff")

    def __init__(self, dim: int, iterations: int, shared: bool):
        super().__init__()
        self.dim, self.iterations, self.shared = dim, iterations, shared
        self.scale = dim**-0.5
        self.slots = nn.Parameter(torch.randn(1, 2, dim))
        self.mask_token_img = nn.Parameter(torch.randn(1, 1, dim))
        self.mask_token_aud = nn.Parameter(torch.randn(1, 1, dim))
        for prefix in ("img",) if shared else ("img", "aud"):
            for name in ("to_q", "to_k", "to_v"):
                setattr(self, f"{prefix}_{name}", nn.Linear(dim, dim))
            setattr(self, f"{prefix}_gru", nn.GRUCell(dim, dim))
            setattr(self, f"{prefix}_mlp", nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)))
            for name in ("norm_input", "norm_slots", "norm_pre_ff"):
                setattr(self, f"{prefix}_{name}", nn.LayerNorm(dim))

    def part(self, modality: str, name: str) -> nn.Module:
        return getattr(self, f"{'img' if self.shared else modality}_{name}")

    def keys_values(self, tokens: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.part(modality, "norm_input")(tokens)
        return self.part(modality, "to_k")(x), self.part(modality, "to_v")(x)

    def iterate(self, k: torch.Tensor, v: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(final slots S_N, the last iteration's query Q_N = W^q LN(S_{N-1})) of one modality."""
        b, d = k.shape[0], self.dim
        slots = self.slots.expand(b, -1, -1)
        q = slots
        for _ in range(self.iterations):
            prev = slots
            q = self.part(modality, "to_q")(self.part(modality, "norm_slots")(slots))
            attn = key_normalised_attention(q, k, self.scale)
            updates = torch.einsum("bjd,bij->bid", v, attn)
            slots = self.part(modality, "gru")(updates.reshape(-1, d), prev.reshape(-1, d)).view(b, -1, d)
            slots = slots + self.part(modality, "mlp")(self.part(modality, "norm_pre_ff")(slots))
        return slots, q

    def forward(self, img: torch.Tensor, aud: torch.Tensor) -> dict[str, torch.Tensor]:
        """Slots, last queries and keys of both modalities from (B, hw, d) image and (B, t, d) audio tokens."""
        k_v, v_v = self.keys_values(img, "img")
        k_a, v_a = self.keys_values(aud, "aud")
        slots_v, q_v = self.iterate(k_v, v_v, "img")
        slots_a, q_a = self.iterate(k_a, v_a, "aud")
        return {"slots_v": slots_v, "slots_a": slots_a, "q_v": q_v, "q_a": q_a, "k_v": k_v, "k_a": k_a}


def apply_masks(tokens: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, d) with the positions of `mask` (B, N) replaced by the learnable mask token."""
    return torch.where(mask[..., None], token.to(tokens.dtype), tokens)


def token_masks(keys: torch.Tensor, sizes: tuple[int, int], ratio: float, exact: bool) -> list[torch.Tensor]:
    """Per item, masks of `sizes` tokens from a generator seeded by the item's key: exactly round(ratio x n) tokens,
    or each token with probability `ratio` (the official code's Bernoulli)."""
    out: list[list[torch.Tensor]] = [[] for _ in sizes]
    for key in keys.tolist():
        g = torch.Generator().manual_seed(int(key))
        for i, n in enumerate(sizes):
            if exact:
                m = torch.zeros(n, dtype=torch.bool)
                m[torch.randperm(n, generator=g)[: int(round(ratio * n))]] = True
            else:
                m = torch.rand(n, generator=g) < ratio
            out[i].append(m)
    return [torch.stack(ms).to(keys.device) for ms in out]


class PositionEmbedding2D(nn.Module):
    """Learned row and column tables (dim/2 each), concatenated [column, row] per grid cell, row-major."""

    def __init__(self, h: int, w: int, half: int):
        super().__init__()
        self.row_embed = nn.Embedding(h, half)
        self.col_embed = nn.Embedding(w, half)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        h, w = self.row_embed.num_embeddings, self.col_embed.num_embeddings
        cols = self.col_embed.weight[None].expand(h, -1, -1)
        rows = self.row_embed.weight[:, None].expand(-1, w, -1)
        return torch.cat([cols, rows], dim=-1).reshape(h * w, -1)


class SpatialBroadcastDecoder(nn.Module):
    """Each slot tiled over the token grid + position embedding -> MLP (3 x ReLU) -> d features + 1 alpha; the
    reconstruction is the alpha-softmax (over slots) weighted sum of the slots' features."""

    def __init__(self, h: int, w: int, dim: int):
        super().__init__()
        self.pos_emb = PositionEmbedding2D(h, w, dim // 2)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
            nn.Linear(dim, dim + 1),
        )  # fmt: skip

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        out = self.mlp(slots[:, :, None, :] + self.pos_emb()[None, None])  # (B, S, N, d + 1)
        alpha = out[..., -1].softmax(dim=1)
        return torch.einsum("bsnd,bsn->bnd", out[..., :-1], alpha)


# --- losses --------------------------------------------------------------------------------------------------------


def false_negatives(p_v: torch.Tensor, p_a: torch.Tensor, k: int, include_self: bool = False) -> torch.Tensor:
    """(B, B) bool: j is a predicted false negative of i (Eq. 12-13): j among i's k nearest image target slots and i
    among j's, and likewise for audio; never the diagonal. `include_self`: the top-k lists count the item itself
    (the official code: k - 1 real neighbours)."""
    n = len(p_v)
    eye = torch.eye(n, dtype=torch.bool, device=p_v.device)
    near = []
    for p in (p_v, p_a):
        p = F.normalize(p.detach().float(), dim=-1)
        sim = p @ p.T
        if not include_self:
            sim = sim.masked_fill(eye, float("-inf"))
        top = sim.topk(min(k, n if include_self else n - 1), dim=1).indices
        member = torch.zeros(n, n, dtype=torch.bool, device=p.device).scatter_(1, top, True)
        near.append(member & member.T)  # reciprocal
    return near[0] & near[1] & ~eye


def contrastive_loss(
    p_v: torch.Tensor,
    p_a: torch.Tensor,
    tau: float,
    exclude: torch.Tensor | None = None,
    *,
    everyone: tuple[torch.Tensor, torch.Tensor] | None = None,
    own: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_ctr (Eq. 7): InfoNCE image -> audio + audio -> image on the target slots, each a mean over the anchors;
    `exclude` (anchors x all items, symmetric over the global batch) drops the predicted false negatives. Under DDP
    `everyone` = the global batch's (p_v, p_a) and `own` = this rank's rows in it."""
    v_all, a_all = everyone if everyone is not None else (p_v, p_a)
    return infonce(p_v, a_all, tau, own, exclude) + infonce(p_a, v_all, tau, own, exclude)


def _squared_error(pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """sum: per item the squared L2 norm, averaged over the batch (the paper's ||.||^2); mean: MSE (the code)."""
    diff = (pred - target) ** 2
    return diff.mean() if reduction == "mean" else diff.flatten(1).sum(1).mean()


def match_loss(
    ca_av: torch.Tensor, ia_vv: torch.Tensor, ca_va: torch.Tensor, ia_aa: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """L_match (Eq. 8): the cross-modal target maps against the stop-gradient intra-modal ones."""
    return _squared_error(ca_av, ia_vv.detach(), reduction) + _squared_error(ca_va, ia_aa.detach(), reduction)


def diversity_loss(slots_v: torch.Tensor, slots_a: torch.Tensor) -> torch.Tensor:
    """L_div (Eq. 9): max(0, cos(target, off-target)) per modality, averaged over the batch."""
    return sum(F.relu(F.cosine_similarity(s[:, 0], s[:, 1], dim=-1)).mean() for s in (slots_v, slots_a))  # type: ignore[return-value]


def recon_loss(
    v_hat: torch.Tensor,
    v: torch.Tensor,
    a_hat: torch.Tensor,
    a: torch.Tensor,
    reduction: str = "sum",
    stop_gradient: bool = False,
) -> torch.Tensor:
    """L_recon (Eq. 10): decoder outputs against the (unmasked) encoder tokens."""
    if stop_gradient:
        v, a = v.detach(), a.detach()
    return _squared_error(v_hat, v, reduction) + _squared_error(a_hat, a, reduction)


# --- the model -----------------------------------------------------------------------------------------------------


class JSAModel(nn.Module):
    """Encoders, joint slot attention, decoders; `forward(batch)` = the training loss terms, `heatmaps` / `embeddings`
    for inference (the decoders are not used there)."""

    def __init__(self, cfg: JSAConfig):
        super().__init__()
        self.cfg = cfg
        kw = {"width": cfg.width, "blocks": cfg.blocks, "strides": cfg.strides, "norm": cfg.norm}
        self.imgnet = ResNet(3, **kw)
        self.audnet = ResNet(1, **kw)
        c = self.imgnet.out_channels
        self.img_proj = nn.Conv2d(c, cfg.dim, 1)
        self.aud_proj = nn.Conv2d(c, cfg.dim, 1)
        for conv in (self.img_proj, self.aud_proj):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.slot_attn = SlotAttention(cfg.dim, cfg.iterations, cfg.slot_weights == "shared")
        (h, w), t = token_grid(cfg)
        self.img_decoder = SpatialBroadcastDecoder(h, w, cfg.dim)
        self.aud_decoder = SpatialBroadcastDecoder(1, t, cfg.dim)

    def encode(self, frames: torch.Tensor, specs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(B, hw, d) image tokens, (B, t, d) audio tokens (max over frequency), the image grid (h, w)."""
        v = self.img_proj(self.imgnet(frames))
        a = self.aud_proj(self.audnet(specs)).amax(dim=2)
        return v.flatten(2).transpose(1, 2), a.transpose(1, 2), (v.shape[2], v.shape[3])

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, sa = self.cfg, self.slot_attn
        v, a, _ = self.encode(batch["frame"], batch["spec"])
        v_in, a_in = v, a
        if cfg.mask_ratio > 0:
            if "mask_key" in batch:
                mv, ma = token_masks(
                    batch["mask_key"], (v.shape[1], a.shape[1]), cfg.mask_ratio, cfg.mask_sampling == "exact"
                )
            else:  # inputs without keys (benchmarks): torch's generator
                mv = torch.rand(v.shape[:2], device=v.device) < cfg.mask_ratio
                ma = torch.rand(a.shape[:2], device=a.device) < cfg.mask_ratio
            v_in, a_in = apply_masks(v, mv, sa.mask_token_img), apply_masks(a, ma, sa.mask_token_aud)
        out = sa(v_in, a_in)
        slots_v, slots_a = out["slots_v"], out["slots_a"]
        # target columns of the last iteration's attention: intra-modal and cross-modal (Eq. 8)
        ia_vv = key_normalised_attention(out["q_v"], out["k_v"], sa.scale)[:, 0]
        ia_aa = key_normalised_attention(out["q_a"], out["k_a"], sa.scale)[:, 0]
        ca_av = key_normalised_attention(out["q_a"], out["k_v"], sa.scale)[:, 0]
        ca_va = key_normalised_attention(out["q_v"], out["k_a"], sa.scale)[:, 0]
        p_v, p_a = slots_v[:, 0], slots_a[:, 0]
        everyone = (gather(p_v), gather(p_a))
        own = rank_offset(len(p_v)) + torch.arange(len(p_v), device=p_v.device)
        fn = false_negatives(*everyone, cfg.fn_k, cfg.fn_include_self)
        ctr = contrastive_loss(p_v, p_a, cfg.tau, fn[own], everyone=everyone, own=own)
        match = match_loss(ca_av, ia_vv, ca_va, ia_aa, cfg.squared_error)
        div = diversity_loss(slots_v, slots_a)
        recon = recon_loss(
            self.img_decoder(slots_v), v, self.aud_decoder(slots_a), a, cfg.squared_error, cfg.recon_stop_gradient
        )
        loss = ctr + cfg.weight_match * match + cfg.weight_div * div + cfg.weight_recon * recon
        return {
            "loss": loss,
            "ctr": ctr.detach(),
            "match": match.detach(),
            "div": div.detach(),
            "recon": recon.detach(),
            "fn_masked": fn.sum(1).float().mean(),  # predicted false negatives per anchor (global batch)
        }

    @torch.no_grad()
    def heatmaps(self, frames: torch.Tensor, specs: torch.Tensor) -> torch.Tensor:
        """(B, S, S) IQR maps: norm(alpha norm(ca) + (1 - alpha) norm(ia)), maps bicubic to S = heatmap_size."""
        cfg, sa = self.cfg, self.slot_attn
        v, a, (h, w) = self.encode(frames, specs)
        out = sa(v, a)
        scale = sa.scale * cfg.infer_sharpening
        ca = key_normalised_attention(out["q_a"], out["k_v"], scale)[:, 0]
        ia = key_normalised_attention(out["q_v"], out["k_v"], scale)[:, 0]
        size = (cfg.heatmap_size, cfg.heatmap_size)
        ca, ia = (
            min_max(F.interpolate(m.view(-1, 1, h, w).float(), size=size, mode="bicubic", align_corners=False))
            for m in (ca, ia)
        )
        return min_max(cfg.iqr_alpha * ca + (1 - cfg.iqr_alpha) * ia)[:, 0]

    @torch.no_grad()
    def embeddings(self, frames: torch.Tensor, specs: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2-normalised target slots p^v, p^a (no masking): the retrieval features of S004 Table 4."""
        v, a, _ = self.encode(frames, specs)
        out = self.slot_attn(v, a)
        return {"image": F.normalize(out["slots_v"][:, 0], dim=-1), "audio": F.normalize(out["slots_a"][:, 0], dim=-1)}


def min_max(x: torch.Tensor) -> torch.Tensor:
    """Per map (B, 1, H, W) min-max normalisation; a constant map is left as it is (the code's normalize_img)."""
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1), x)


def parameter_counts(model: JSAModel) -> dict[str, int]:
    """{"inference": without the decoders, "training": all}."""
    total = sum(p.numel() for p in model.parameters())
    decoders = sum(p.numel() for m in (model.img_decoder, model.aud_decoder) for p in m.parameters())
    return {"inference": total - decoders, "training": total}


# --- the official code's state-dict names ---------------------------------------------------------------------------

# ours -> model_slot.py `mymodel` (its resnet.py names the audio first conv `conv1_1` and the audio head `proj.0`)
_OFFICIAL_RENAMES = (
    ("audnet.conv1_a.", "audnet.conv1_1."),
    ("img_proj.", "imgnet.proj."),
    ("aud_proj.", "audnet.proj.0."),
)


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the official `mymodel` names."""
    out = {}
    for key, value in state.items():
        for ours, theirs in _OFFICIAL_RENAMES:
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
                break
        out[key] = value
    return out


def from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official `mymodel` state dict (optionally `module.`-prefixed) in our names."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for ours, theirs in _OFFICIAL_RENAMES:
            if key.startswith(theirs):
                key = ours + key.removeprefix(theirs)
                break
        out[key] = value
    return out


# --- data ----------------------------------------------------------------------------------------------------------


def eval_frame(frame: np.ndarray, cfg: JSAConfig) -> torch.Tensor:
    """Resize to image_size x image_size (bicubic), ImageNet normalisation (the official test transform)."""
    s = cfg.image_size
    return transforms.normalise(transforms.resize(transforms.to_tensor(frame), (s, s)))


def train_frame(frame: np.ndarray, cfg: JSAConfig, rng: np.random.Generator) -> torch.Tensor:
    """`augment: none`: the test transform. `official` (the code's `--hard_img`): short side to 1.1 x image_size,
    random crop, Gaussian blur (kernel 5) p 0.8, flip, colour jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grey p 0.2."""
    if cfg.augment == "none":
        return eval_frame(frame, cfg)
    s = cfg.image_size
    img = transforms.to_tensor(frame)
    h, w = img.shape[-2:]
    short = int(s * 1.1)
    img = transforms.resize(img, (short, round(w * short / h)) if h <= w else (round(h * short / w), short))
    img = transforms.random_crop(img, s, rng)
    if rng.random() < 0.8:
        img = transforms.gaussian_blur(img, rng, kernel=5)
    img = transforms.hflip(img, rng)
    if rng.random() < 0.8:
        img = transforms.colour_jitter(img, rng, 0.8, 0.8, 0.8, 0.2)
    if rng.random() < 0.2:
        img = transforms.grayscale(img)
    return transforms.normalise(img)


def band_masks(spec: torch.Tensor, rng: np.random.Generator, max_width: int = 10) -> torch.Tensor:
    """The code's `--hard_aud`: one frequency band and one time band of width < max_width set to 0 (log domain). The
    code draws each band's start from the other axis's length (a bug); here each start is drawn on its own axis."""
    spec = spec.clone()
    f, t = spec.shape[-2:]
    start = int(rng.integers(0, f))
    spec[..., start : start + int(rng.integers(0, max_width)), :] = 0
    start = int(rng.integers(0, t))
    spec[..., :, start : start + int(rng.integers(0, max_width))] = 0
    return spec


class JSADataset(Dataset):
    """Training items {"frame" (3, S, S), "spec" (1, 257, T), "mask_key" (int64: the token masks' seed)}."""

    def __init__(self, index: ClipIndex, cfg: JSAConfig, seed: int):
        self.index, self.cfg, self.seed = index, cfg, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        row, cfg = self.index.rows[i], self.cfg
        rng = item_rng(self.seed, self.epoch, row.clip_id, "jsa")
        wav, rate = read_wav(row.audio, row.where)
        try:
            spec = log_spectrogram(wav, rate, cfg, cfg.train_log_eps)
        except ValueError as exc:
            raise TrainError(f"{row.where}: {exc}") from None
        if cfg.augment == "official":
            spec = band_masks(spec * SPEC_SCALE, rng) / SPEC_SCALE
        frame = train_frame(read_frame(row.frame, row.where), cfg, rng)
        key = derive_seed(self.seed, "jsa-mask", str(self.epoch), row.clip_id)
        return {"frame": frame, "spec": spec, "mask_key": torch.tensor(key, dtype=torch.int64)}


# --- the method (`train.method: jsa`) ------------------------------------------------------------------------------


class JSAMethod(TrainMethod):
    """`train.method: jsa` (settings in `train.jsa`); AdamW, lr 5e-5, weight decay 1e-2 unless the config says."""

    name = "jsa"
    optimiser_defaults = {"optimizer": "adamw", "lr": 5e-5, "weight_decay": 1e-2}

    def __init__(self, cfg: TrainConfig, seed: int):
        super().__init__(cfg, seed)
        self.jcfg = cfg.jsa

    def build_model(self) -> nn.Module:
        return with_imagenet_trunk(JSAModel(self.jcfg), self.jcfg.pretrained_vision)

    def train_dataset(self, workdir: Path) -> JSADataset:
        return JSADataset(ClipIndex.from_workdir(workdir, self.cfg.splits, self.cfg.id_list), self.jcfg, self.seed)

    def export(self, model: nn.Module, path: Path) -> None:
        """`{"model": state dict in model_slot.py's names}`, as the official train_slot.py saves (no optimiser)."""
        from is4.manifests.atomic import atomic_path

        if self.jcfg.slot_weights == "shared":
            raise TrainError("train.jsa.slot_weights: shared has no official-code form (it has per-modality weights)")
        with atomic_path(path) as tmp:
            torch.save({"model": to_official(model.state_dict())}, tmp)

    def import_checkpoint(self, model: nn.Module, path: Path) -> None:
        """An official `{"model": ...}` checkpoint (or its bare state dict), every tensor with the model's shape."""
        ckpt = _load(path)
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise TrainError(f"{path}: no model state dict")
        state = from_official(state)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unknown = [k for k in state if k not in own]
        if missing or unknown:
            raise TrainError(
                f"{path}: not a JSA checkpoint of this shape: missing {missing[:3]}, unexpected {unknown[:3]}"
            )
        bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise TrainError(
                f"{path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the model {tuple(own[bad[0]].shape)} "
                "(train.jsa.width / dim / image_size / audio_seconds)"
            )
        model.load_state_dict(state, strict=True)

    def eval_item(self, frame: np.ndarray, wav: np.ndarray, sample_rate: int) -> dict[str, torch.Tensor]:
        return {"frame": eval_frame(frame, self.jcfg), "spec": log_spectrogram(wav, sample_rate, self.jcfg)}

    def heatmaps(self, model: nn.Module, batch: dict) -> torch.Tensor:
        assert isinstance(model, JSAModel)
        return model.heatmaps(batch["frame"], batch["spec"])

    def embeddings(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """The retrieval features of a batch of `eval_item`s: {"image", "audio"} L2-normalised target slots."""
        assert isinstance(model, JSAModel)
        return model.embeddings(batch["frame"], batch["spec"])
