"""ACL-SSL (Park et al., WACV'24 "Can CLIP Help Sound Source Localization?", seed 003) with the LLM-guided caption
loss of seed 003 §3.6, which the authors' public code (swimmiing/ACL-SSL) lacks.

Parts and their names follow the public code, so its `Param_*.pth` checkpoints (`{'audio_proj', 'masker_i'}`) load:
- `audio_backbone`: frozen BEATs (`trainers.beats`), outputs of layers 3/7/11 concatenated (2304 channels);
- `audio_proj`: trainable `FGAEmbedder` (fc1 → GELU → fc2, then AudioToken/FGA attentive pooling over time, `fga`);
- `grounder`: frozen HF `CLIPSegForImageSegmentation`; the audio token is spliced into the prompt "A photo of {}" on
  transformers 5.x's public modules (`splice_text_embedding`; the authors' subclass uses helpers 5.x removed);
- `masker_i`: trainable scalars w, b (Gumbel-sigmoid image mask); `feature_mask`: the fixed feature masker.

Losses: `acl_i`, `acl_f` (target `code` = image b pooled with audio n's mask against image b's own audio, as in the
code; `paper` = against audio n, as Eq. 2–3 write it), `area_reg`, and `caption` (L_ACL_C = symmetric InfoNCE over
cos(C_i, A_j), C_i = CLIPSeg's own text embedding of the clip's object phrase wrapped in the same prompt, computed once
per distinct phrase; items without a usable phrase are dropped from that term's rows and columns).

Differences from the code, each keeping its math: the forward goes through the DDP wrapper and gathers the audio
embeddings (and what the symmetric terms need) from every rank, so W ranks × B/W train like one process × B (the
code trains one unsynchronised replica per GPU); the CLIP vision tower runs once per image for the B audio-conditioned
decoder passes (the code re-runs it per audio); the Gumbel noise of an (image, audio) pair's mask is a hash of the two
clips' keys and the pixel (`pair_uniform`), so it does not depend on batch order, ranks or resume; the frozen parts
stay in eval mode unless `frozen_train_mode` (the code leaves their dropout on).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from is4.config import ACLConfig, TrainConfig
from is4.manifests.ids import derive_seed
from is4.trainers import transforms
from is4.trainers.data import ClipIndex, item_rng, load_phrases, read_frame, read_npy, read_wav
from is4.trainers.dist import gather, rank_offset
from is4.trainers.method import TrainError, TrainMethod

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MEL_PAD_VALUE = float(np.log(np.finfo(np.float32).eps))  # the log-fbank of zero padding (ACL pads the wav with 0)
TRAINABLE = ("audio_proj", "masker_i")
log = logging.getLogger(__name__)


def audio_frames(cfg: ACLConfig) -> int:
    """Fbank frames of `audio_seconds` (Kaldi 25 ms / 10 ms, snip edges): 998 for 10 s."""
    return 1 + (int(round(cfg.audio_seconds * 16000)) - 400) // 160


# --- audio projection (AudioToken's FGAEmbedder with FGA's attentive pooling; module names as in ACL-SSL) -----------


class Unary(nn.Module):
    """Unary potential over time: Conv1d → ReLU → dropout 0.5 → Conv1d to one score."""

    def __init__(self, dim: int, dropout: float = 0.5):
        super().__init__()
        self.embed = nn.Conv1d(dim, dim, 1)
        self.feature_reduce = nn.Conv1d(dim, 1, 1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(F.relu(self.embed(x.transpose(1, 2))), self.dropout, training=self.training)
        return self.feature_reduce(hidden).squeeze(1)


class Pairwise(nn.Module):
    """Self-pairwise potential: mean cosine of each time step with every other (after two 1×1 convolutions)."""

    def __init__(self, dim: int):
        super().__init__()
        self.embed_X = nn.Conv1d(dim, dim, 1)
        self.embed_Y = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_t = x.transpose(1, 2)
        a, b = F.normalize(self.embed_X(x_t), dim=1), F.normalize(self.embed_Y(x_t), dim=1)
        return (a.transpose(1, 2) @ b).mean(dim=2)


class Atten(nn.Module):
    """FGA attention for one utility without pairwise factors: softmax over time of Conv1d(2→1)(unary, self)."""

    def __init__(self, dim: int, dropout: float = 0.5):
        super().__init__()
        self.un_models = nn.ModuleList([Unary(dim, dropout)])
        self.pp_models = nn.ModuleDict({"0": Pairwise(dim)})
        self.reduce_potentials = nn.ModuleList([nn.Conv1d(2, 1, 1, bias=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        potentials = torch.stack([self.un_models[0](x), self.pp_models["0"](x)], dim=1)
        weights = torch.softmax(self.reduce_potentials[0](potentials).squeeze(1), dim=1)
        return (x.transpose(1, 2) @ weights.unsqueeze(2)).squeeze(2)


class FGAEmbedder(nn.Module):
    """The trainable audio projection: B×T×in → B×out (the audio token)."""

    def __init__(self, input_size: int, output_size: int, dropout: float = 0.5):
        super().__init__()
        self.fc1 = nn.Linear(input_size, input_size)
        self.fc2 = nn.Linear(input_size, output_size)
        self.gelu = nn.GELU()
        self.fga = Atten(output_size, dropout)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.fga(self.fc2(self.gelu(self.fc1(audio))))


# --- maskers (TCL's Sim2Mask as ACL uses it) ---------------------------------------------------------------------


def gumbel_sigmoid_hard(logits: torch.Tensor, tau: float, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """A hard (0/1) Gumbel-sigmoid sample with the straight-through gradient of its soft version; `uniform` is the
    Uniform(0, 1) noise (default: drawn from torch's generator)."""
    u = torch.rand_like(logits) if uniform is None else uniform.to(logits.dtype)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors holding values below 2**32 (no overflow)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def pair_uniform(image_keys: torch.Tensor, audio_keys: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Uniform(0, 1) noise (I × N × h × w) that depends only on each (image, audio) pair's keys and the pixel.

    The mask noise of a pair is then the same whatever the batch order, rank layout or number of workers (the
    public code draws it from the global generator).
    """
    pair = _mix32(_mix32(image_keys.long()[:, None] & _MASK32) ^ (audio_keys.long()[None, :] & _MASK32))
    pixels = _mix32(torch.arange(size[0] * size[1], device=pair.device) + 0x9E3779B9 & _MASK32).view(1, 1, *size)
    bits = _mix32(pair[:, :, None, None] ^ pixels)
    return ((bits.double() + 0.5) / 2.0**32).float()


class ImageMasker(nn.Module):
    """Trainable w, b: training masks are Gumbel-sigmoid(w·M + b) (hard); the heatmap is sigmoid(M + b/w)."""

    def __init__(self, init_w: float, init_b: float, gumbel_tau: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))
        self.gumbel_tau = gumbel_tau

    def forward(self, logits: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        return gumbel_sigmoid_hard(logits * self.w + self.b, self.gumbel_tau, uniform)

    def heatmap(self, logits: torch.Tensor) -> torch.Tensor:
        """The inference map."""
        return torch.sigmoid(logits + self.b / self.w)


def feature_mask(logits: torch.Tensor, threshold: float, tau: float) -> torch.Tensor:
    """ACL's feature masker: sigmoid((min-max-normalised M − threshold) / tau), per map."""
    low = logits.amin((2, 3), keepdim=True) - 1e-7
    high = logits.amax((2, 3), keepdim=True) + 1e-7
    return torch.sigmoid(((logits - low) / (high - low) - threshold) / tau)


# --- losses ------------------------------------------------------------------------------------------------------


def infonce(
    pred: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of the anchors `pred` against all `target` rows (cosine logits / temperature); the positive of anchor
    i is target `labels[i]` (default i); `exclude[i, j]` true drops target j from anchor i's negatives."""
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    labels = torch.arange(len(pred), device=pred.device) if labels is None else labels
    return F.cross_entropy(logits, labels)


def acl_i_loss(
    v_i: torch.Tensor,
    audio: torch.Tensor,
    temperature: float,
    *,
    everyone: tuple[torch.Tensor, torch.Tensor] | None = None,
    own: torch.Tensor | None = None,
) -> torch.Tensor:
    """ACL_I: ½ (InfoNCE(A → v^I) + InfoNCE(v^I → A)) of the masked-image embeddings (each image masked by its own
    audio's mask). Under DDP `everyone` = the global batch's (v^I, A) and `own` = this rank's rows in it."""
    v_all, audio_all = everyone if everyone is not None else (v_i, audio)
    return 0.5 * (infonce(audio, v_all, temperature, own) + infonce(v_i, audio_all, temperature, own))


def acl_f_logits(v_f: torch.Tensor, own_audio: torch.Tensor, audio: torch.Tensor, target: str) -> torch.Tensor:
    """Cosine logits[b, n] of v_f[b, n] (image b pooled with audio n's feature mask): against image b's own audio
    (`code`, the public code) or against audio n (`paper`, seed 003 Eq. 2–3)."""
    v = F.normalize(v_f, dim=-1)
    if target == "code":
        return torch.einsum("bnc,bc->bn", v, F.normalize(own_audio, dim=-1))
    return torch.einsum("bnc,nc->bn", v, F.normalize(audio, dim=-1))


def acl_f_loss(
    v_f: torch.Tensor,
    audio: torch.Tensor,
    temperature: float,
    target: str = "code",
    *,
    audio_all: torch.Tensor | None = None,
    own: torch.Tensor | None = None,
    gather_rows=None,
) -> torch.Tensor:
    """ACL_F: symmetric cross-entropy over `acl_f_logits`, positives on the diagonal. Under DDP `v_f` holds this
    rank's images against every audio (`audio_all`), `own` their rows in the global batch, and `gather_rows` collects
    every rank's logits rows for the audio → image direction."""
    audio_all = audio if audio_all is None else audio_all
    own = torch.arange(len(audio), device=audio.device) if own is None else own
    logits = acl_f_logits(v_f, audio, audio_all, target) / temperature
    columns = (gather_rows(logits) if gather_rows is not None else logits)[:, own].T
    return 0.5 * (F.cross_entropy(logits, own) + F.cross_entropy(columns, own))


def area_reg_loss(p_area: torch.Tensor, n_area: torch.Tensor, positive: float, negative: float) -> torch.Tensor:
    """|p⁺ − positive| + |p⁻ − negative|."""
    return (p_area - positive).abs() + (n_area - negative).abs()


def caption_loss(
    phrases: torch.Tensor,
    audio: torch.Tensor,
    usable: torch.Tensor,
    temperature: float,
    *,
    everyone: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    own: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_ACL_C: symmetric InfoNCE over S^C_ij = cos(C_i, A_j) restricted to the items with a usable phrase.

    Rows and columns of the other items are dropped, so they get no gradient from this term; with fewer than two
    usable items the term is 0 (a single positive has nothing to be contrasted with). Under DDP `everyone` = the
    global batch's (C, A, usable) and `own` = this rank's rows in it; the sum over this rank's anchors is scaled so
    that DDP's average over ranks is the mean over all usable anchors.
    """
    phrases_all, audio_all, usable_all = everyone if everyone is not None else (phrases, audio, usable)
    rows = torch.arange(len(audio), device=audio.device) if own is None else own
    count = int(usable_all.sum())
    if count < 2 or not bool(usable.any()):
        return audio.sum() * 0.0
    labels = (torch.cumsum(usable_all.long(), 0) - 1)[rows[usable]]  # positions among the usable items
    text_to_audio = infonce(phrases[usable], audio_all[usable_all], temperature, labels) * len(labels)
    audio_to_text = infonce(audio[usable], phrases_all[usable_all], temperature, labels) * len(labels)
    return 0.5 * (text_to_audio + audio_to_text) * (len(audio_all) / len(audio)) / count


def _gather_values(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` (no gradient) concatenated in rank order; `x` alone without a process group."""
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# --- the model -----------------------------------------------------------------------------------------------------


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class ACLModel(nn.Module):
    """ACL: frozen BEATs and CLIPSeg, trainable `audio_proj` and `masker_i`.

    `forward(batch)` returns the loss terms (so that DDP's wrapper sees the forward); `heatmaps(images, fbank)`
    gives the inference maps.
    """

    def __init__(self, cfg: ACLConfig, grounder: nn.Module, tokenizer, audio_backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.grounder = _freeze(grounder)
        self.audio_backbone = _freeze(audio_backbone)
        text_width = grounder.config.text_config.hidden_size
        tap_width = audio_backbone.cfg.encoder_embed_dim * len(cfg.audio_taps)
        self.audio_proj = FGAEmbedder(tap_width, text_width, cfg.fga_dropout)
        self.masker_i = ImageMasker(cfg.mask_init_w, cfg.mask_init_b, cfg.gumbel_tau)
        self.tokenizer = tokenizer
        self._before, self._after = self._prompt_ids(cfg.prompt)
        self._phrase_cache: dict[str, torch.Tensor] = {}

    # frozen parts stay in eval mode unless `frozen_train_mode` (the code leaves them in train mode)
    def train(self, mode: bool = True) -> ACLModel:
        super().train(mode)
        if not self.cfg.frozen_train_mode:
            self.grounder.eval()
            self.audio_backbone.eval()
        return self

    def _prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before the audio token (with the start token) and after it (with the end token)."""
        if prompt.count("{}") != 1:
            raise TrainError(f"train.acl.prompt must contain '{{}}' exactly once, got {prompt!r}")
        prefix, suffix = prompt.split("{}")
        before = self.tokenizer(prefix.strip())["input_ids"][:-1]
        after = self.tokenizer(suffix.strip())["input_ids"][1:]
        return before, after

    @property
    def device(self) -> torch.device:
        return self.masker_i.w.device

    # --- audio ---
    def audio_token(self, fbank: torch.Tensor) -> torch.Tensor:
        """The projected audio token, B × text width, from raw log-mel fbanks B × T × 128."""
        with torch.no_grad():
            features = self.audio_backbone(fbank, tuple(self.cfg.audio_taps))[1]
        return self.audio_proj(features)

    def splice_text_embedding(self, token: torch.Tensor) -> torch.Tensor:
        """The audio-driven embedding A (B × projection dim): the token spliced into the prompt, through the CLIP
        text encoder with its causal mask, final LayerNorm, the last (end) position and the text projection."""
        text = self.grounder.clip.text_model
        ids = torch.tensor(self._before + self._after, device=token.device)
        words = text.embeddings.token_embedding(ids).unsqueeze(0).expand(len(token), -1, -1)
        split = len(self._before)
        embeds = torch.cat([words[:, :split], token.unsqueeze(1).to(words.dtype), words[:, split:]], dim=1)
        length = embeds.shape[1]
        positions = torch.arange(length, device=token.device)
        hidden = embeds + text.embeddings.position_embedding(positions).unsqueeze(0)
        causal = torch.full((length, length), float("-inf"), device=token.device, dtype=hidden.dtype).triu(1)
        out = text.encoder(inputs_embeds=hidden, attention_mask=causal.expand(len(token), 1, -1, -1))
        last = text.final_layer_norm(out.last_hidden_state)[:, -1]
        return self.grounder.clip.text_projection(last)

    def encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """A for raw fbanks."""
        return self.splice_text_embedding(self.audio_token(fbank))

    def phrase_embeddings(self, phrases: list[str]) -> torch.Tensor:
        """C_i = CLIPSeg text embedding of `prompt.format(phrase)`, computed once per distinct phrase (frozen), each
        on its own (no padding), so its bytes do not depend on which phrases a batch brought together."""
        for phrase in phrases:
            if phrase not in self._phrase_cache:
                tokens = self.tokenizer([self.cfg.prompt.format(phrase)], return_tensors="pt").to(self.device)
                with torch.no_grad():
                    out = self.grounder.clip.get_text_features(**tokens)
                embed = out.pooler_output if hasattr(out, "pooler_output") else out
                self._phrase_cache[phrase] = embed[0].detach()
        return torch.stack([self._phrase_cache[p] for p in phrases])

    # --- vision ---
    def vision(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The frozen CLIP vision tower once: (decoder activations, MaskCLIP dense features B × proj × h × w)."""
        clip = self.grounder.clip
        with torch.no_grad():
            out = clip.vision_model(pixel_values=images, output_hidden_states=True)
            hidden = out.hidden_states
            activations = [hidden[i + 1] for i in self.grounder.extract_layers]
            last = clip.vision_model.encoder.layers[-1]
            x = hidden[-2]
            x = x + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))
            x = x + last.mlp(last.layer_norm2(x))
            dense = clip.visual_projection(clip.vision_model.post_layernorm(x))[:, 1:]
            side = int(round(dense.shape[1] ** 0.5))
            dense = dense.transpose(1, 2).reshape(len(images), -1, side, side)
        return activations, dense

    def ground(self, activations: list[torch.Tensor], audio: torch.Tensor, size: int) -> torch.Tensor:
        """M^G[b, n]: decoder logits of image b conditioned on audio n, B_img × B_audio × size × size."""
        batch = activations[0].shape[0]
        maps = []
        for n in range(len(audio)):
            logits = self.grounder.decoder(activations, audio[n].unsqueeze(0).expand(batch, -1)).logits
            logits = logits.reshape(batch, 1, *logits.shape[-2:])
            if logits.shape[-1] != size:
                logits = F.interpolate(logits, size=(size, size), mode="bicubic")
            maps.append(logits)
        return torch.cat(maps, dim=1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Loss terms of this rank's batch {"image": B×3×S×S (CLIP-normalised), "fbank": B×T×128, optional
        "phrase": list of str or None, optional "noise_key": B int64 (the mask noise of a pair depends only on its
        two keys)}; returns each weighted term and their sum under "loss", plus "caption_masked" (items left out of
        the caption term) and "p_area" for the log.

        Under DDP the audio embeddings (and what the symmetric terms need) are gathered from every rank: each rank's
        loss is over its own anchors against the whole global batch, scaled so that the gradients DDP averages are
        those of one process holding the global batch (the public code trains one replica per GPU on its shard).
        """
        cfg = self.cfg
        images, fbank = batch["image"], batch["fbank"]
        local, size = len(images), images.shape[-1]
        audio_local = self.encode_audio(fbank)
        audio = gather(audio_local)
        total = len(audio)
        own = rank_offset(local) + torch.arange(local, device=images.device)
        rows = torch.arange(local, device=images.device)
        activations, dense = self.vision(images)
        grounding = self.ground(activations, audio, size)  # M^G: local images × all audios
        noise = None
        if "noise_key" in batch:
            keys = batch["noise_key"].to(images.device)
            noise = pair_uniform(keys, _gather_values(keys), (size, size))
        hard = self.masker_i(grounding, noise)
        areas = hard.mean((2, 3))
        sums = gather(torch.stack([areas[rows, own].sum(), areas.sum()])[None]).sum(0)
        p_area = sums[0] / total
        n_area = sums[1] / total**2 - p_area / total
        f_mask = F.interpolate(
            feature_mask(grounding, cfg.feature_mask_threshold, cfg.feature_mask_tau), size=dense.shape[-2:]
        )
        v_f = torch.einsum("bchw,bnhw->bnc", dense, f_mask) / (f_mask.sum() + 1e-6)
        v_i = self.grounder.clip.get_image_features(pixel_values=images * hard[rows, own].unsqueeze(1))
        v_i = v_i.pooler_output if hasattr(v_i, "pooler_output") else v_i
        tau = cfg.temperature
        acl_i = acl_i_loss(v_i, audio_local, tau, everyone=(gather(v_i), audio), own=own)
        acl_f = acl_f_loss(v_f, audio_local, tau, cfg.acl_f_target, audio_all=audio, own=own, gather_rows=gather)
        terms = {
            "acl_i": cfg.weight_acl_i * acl_i,
            "acl_f": cfg.weight_acl_f * acl_f,
            "area_reg": cfg.weight_area_reg * area_reg_loss(p_area, n_area, cfg.area_positive, cfg.area_negative),
        }
        masked = torch.zeros((), device=images.device)
        if cfg.caption_loss:
            caption, masked = self._caption_term(batch.get("phrase"), audio_local, audio, own)
            terms["caption"] = cfg.weight_caption * caption
        terms["loss"] = torch.stack(list(terms.values())).sum()
        terms["caption_masked"] = masked
        terms["p_area"] = p_area.detach()
        return terms

    def _caption_term(
        self, phrases: list | None, audio_local: torch.Tensor, audio: torch.Tensor, own: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_ACL_C of this rank's usable anchors against every usable item of the global batch, the global batch's
        count of items without a usable phrase)."""
        device, local = audio.device, len(audio_local)
        phrases = list(phrases) if phrases is not None else [None] * local
        usable_local = torch.tensor([p is not None for p in phrases], device=device)
        embeds = torch.zeros(local, self.grounder.config.projection_dim, device=device)
        if bool(usable_local.any()):
            embeds[usable_local] = self.phrase_embeddings([p for p in phrases if p is not None]).to(device).float()
        usable = _gather_values(usable_local)
        masked = (~usable).sum().float()  # the whole global batch's count, the same on every rank
        everyone = (_gather_values(embeds).to(audio.dtype), audio, usable)
        loss = caption_loss(
            embeds.to(audio.dtype), audio_local, usable_local, self.cfg.temperature, everyone=everyone, own=own
        )
        return loss, masked

    @torch.no_grad()
    def heatmaps(self, images: torch.Tensor, fbank: torch.Tensor) -> torch.Tensor:
        """Inference maps: sigmoid(bicubic(M^G → heatmap_size) + b/w) for each image with its own audio, B × S × S."""
        audio = self.encode_audio(fbank)
        activations, _ = self.vision(images)
        batch = len(images)
        logits = self.grounder.decoder(activations, audio).logits.reshape(batch, 1, *images.shape[-2:])
        size = self.cfg.heatmap_size
        logits = F.interpolate(logits, size=(size, size), mode="bicubic")
        return self.masker_i.heatmap(logits)[:, 0]

    @torch.no_grad()
    def embed(self, images: torch.Tensor, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio-driven embedding A, masked-image embedding v_i of each image under its own audio's mask): the
        two vectors L_ACL_I compares, B × D each. The mask is the masker's hard mask without Gumbel noise,
        `w·M^G + b > 0`, so an item's embeddings do not depend on the batch or a random draw."""
        audio = self.encode_audio(fbank)
        activations, _ = self.vision(images)
        size = images.shape[-1]
        logits = self.grounder.decoder(activations, audio).logits.reshape(len(images), 1, *images.shape[-2:])
        if logits.shape[-1] != size:
            logits = F.interpolate(logits, size=(size, size), mode="bicubic")
        hard = (logits * self.masker_i.w + self.masker_i.b > 0).to(images.dtype)
        v_i = self.grounder.clip.get_image_features(pixel_values=images * hard)
        return audio, (v_i.pooler_output if hasattr(v_i, "pooler_output") else v_i)

    # --- the public code's checkpoint format ---
    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """`{'audio_proj': ..., 'masker_i': ...}`: ACL-SSL's `Param_{epoch}.pth` format."""
        return {name: getattr(self, name).state_dict() for name in TRAINABLE}

    def load_trainable_state(self, state: dict) -> None:
        """Load `{'audio_proj', 'masker_i'}` strictly (an ACL-SSL `Param_*.pth` or ours)."""
        if not isinstance(state, dict) or set(state) != set(TRAINABLE):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise TrainError(f"an ACL checkpoint holds exactly {list(TRAINABLE)}, got {keys}")
        for name in TRAINABLE:
            getattr(self, name).load_state_dict(state[name])


def load_acl_params(model: ACLModel, path: str | Path) -> None:
    """Load an ACL-SSL `Param_*.pth` file (weights_only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise TrainError(f"{path}: cannot read ACL checkpoint: {exc}") from None
    model.load_trainable_state(state)


# --- building from config ------------------------------------------------------------------------------------------


def load_audio_backbone(spec: str, workdir: str | Path) -> nn.Module:
    """BEATs from `beats:<path>`, a path, or `tiny-random:beats` (built into WORK/models)."""
    from is4.config import ModelRef
    from is4.pipeline.common.models import resolve_model
    from is4.trainers.beats import build_tiny_beats, load_beats

    if spec.startswith("tiny-random:"):
        ref = ModelRef(model_id=spec)
        return load_beats(resolve_model(ref, workdir, "audio_encoder", {"beats": build_tiny_beats}).path)
    path = Path(spec.removeprefix("beats:")).expanduser()
    if not path.exists():
        raise TrainError(f"train.acl.audio_encoder: BEATs checkpoint {path} does not exist (give beats:<path to .pt>)")
    return load_beats(path)


def build_acl_model(cfg: ACLConfig, workdir: str | Path) -> ACLModel:
    """Resolve CLIPSeg (Hub id at a pinned revision, local directory or `tiny-random:clipseg`) and BEATs; build ACL."""
    from transformers import AutoTokenizer, CLIPSegForImageSegmentation

    from is4.pipeline.common.models import ModelError, resolve_model

    resolved = resolve_model(cfg.clipseg, workdir, "train.acl.clipseg")
    try:
        grounder = CLIPSegForImageSegmentation.from_pretrained(resolved.path)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    except Exception as exc:  # transformers raises many types for a checkpoint it cannot load
        raise ModelError(f"cannot load CLIPSeg {cfg.clipseg.model_id} from {resolved.path}: {exc}") from exc
    return ACLModel(cfg, grounder, tokenizer, load_audio_backbone(cfg.audio_encoder, workdir))


# --- views -------------------------------------------------------------------------------------------------------


def fit_fbank(mel: np.ndarray, frames: int) -> np.ndarray:
    """The whole clip's fbank cut or padded (with the log-fbank of silence) to `frames` rows, as ACL pads the wav."""
    mel = np.array(mel[:frames], dtype=np.float32)
    if len(mel) < frames:
        mel = np.concatenate([mel, np.full((frames - len(mel), mel.shape[1]), MEL_PAD_VALUE, np.float32)])
    return mel


def train_image(frame: np.ndarray, cfg: ACLConfig, rng: np.random.Generator) -> torch.Tensor:
    """Resize to resize × resize (bicubic) → random crop image_size → random horizontal flip → CLIP normalisation."""
    image = transforms.resize(transforms.to_tensor(frame), (cfg.resize, cfg.resize))
    image = transforms.hflip(transforms.random_crop(image, cfg.image_size, rng), rng)
    return transforms.normalise(image, CLIP_MEAN, CLIP_STD)


def eval_image(frame: np.ndarray, cfg: ACLConfig) -> torch.Tensor:
    """Resize to image_size × image_size (bicubic) → CLIP normalisation."""
    image = transforms.resize(transforms.to_tensor(frame), (cfg.image_size, cfg.image_size))
    return transforms.normalise(image, CLIP_MEAN, CLIP_STD)


# --- the method (`train.method: acl`) ------------------------------------------------------------------------------


def clip_fbank(wav: np.ndarray, sample_rate: int, cfg: ACLConfig) -> torch.Tensor:
    """The BEATs input of a wav: Kaldi log-mel fbank (the pipeline's `log_mel`), fitted to `audio_seconds`."""
    from is4.pipeline.ingest.audio_features import log_mel

    if sample_rate != 16000:
        raise ValueError(f"audio at {sample_rate} Hz; BEATs needs 16000 Hz")
    return torch.from_numpy(fit_fbank(log_mel(wav, sample_rate), audio_frames(cfg)))


class ACLDataset(Dataset):
    """Training items: {"image" (3×S×S), "fbank" (T×128), "phrase" (str or None), "clip_id"}.

    The fbank is the stored `mel` .npy where the clips manifest has one, else computed from the wav with the same code.
    """

    def __init__(self, index: ClipIndex, cfg: ACLConfig, seed: int, phrases: dict[str, str | None] | None):
        self.index, self.cfg, self.seed, self.phrases = index, cfg, seed, phrases
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        row = self.index.rows[i]
        rng = item_rng(self.seed, self.epoch, row.clip_id, "acl")
        if row.mel is not None:
            mel = read_npy(row.mel, row.where)
            if mel.ndim != 2 or mel.shape[1] != 128:
                raise TrainError(f"{row.where}: {row.mel}: expected a T×128 log-mel fbank, got shape {mel.shape}")
            fbank = torch.from_numpy(fit_fbank(mel, audio_frames(self.cfg)))
        else:
            wav, rate = read_wav(row.audio, row.where)
            try:
                fbank = clip_fbank(wav, rate, self.cfg)
            except ValueError as exc:
                raise TrainError(f"{row.where}: {exc}") from None
        phrase = self.phrases.get(row.clip_id) if self.phrases is not None else None
        image = train_image(read_frame(row.frame, row.where), self.cfg, rng)
        key = derive_seed(self.seed, "acl-mask", str(self.epoch), row.clip_id)
        return {
            "clip_id": row.clip_id,
            "image": image,
            "fbank": fbank,
            "phrase": phrase,
            "noise_key": torch.tensor(key, dtype=torch.int64),
        }


def collate_acl(items: list[dict]) -> dict:
    """Stack tensors; phrases and ids stay lists (phrases may be None)."""
    out: dict = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if torch.is_tensor(values[0]) else values
    return out


class ACLMethod(TrainMethod):
    """`train.method: acl` (settings in `train.acl`; `train.acl.caption_loss: true` adds L_ACL_C).

    The grounder and the audio encoder are resolved through the project's model resolution, which builds tiny models
    into WORK/models: `train_dataset` records the work directory for `build_model`.
    """

    name = "acl"

    def __init__(self, cfg: TrainConfig, seed: int):
        super().__init__(cfg, seed)
        self.acfg = cfg.acl
        self.workdir: Path | None = None
        prompt = self.acfg.prompt
        if prompt.count("{}") != 1:
            raise TrainError(f"train.acl.prompt must contain '{{}}' exactly once, got {prompt!r}")

    def build_model(self) -> nn.Module:
        if self.workdir is not None:
            return build_acl_model(self.acfg, self.workdir)
        # No work directory (`is4 predict` of a run): a Hub id or a path needs none, and tiny models are seeded, so
        # building them in a scratch directory gives the same weights as the run's.
        with tempfile.TemporaryDirectory(prefix="is4-acl-models-") as scratch:
            return build_acl_model(self.acfg, scratch)

    def train_dataset(self, workdir: Path) -> Dataset:
        self.workdir = Path(workdir)
        index = ClipIndex.from_workdir(workdir, self.cfg.splits, self.cfg.id_list)
        phrases = None
        if self.acfg.caption_loss:
            phrases = load_phrases(workdir, index)
            masked = sum(p is None for p in phrases.values())
            log.warning(
                "caption loss: %d of %d training clips have no usable object phrase (null or flagged) and are "
                "left out of L_ACL_C",
                masked,
                len(phrases),
            )
        return ACLDataset(index, self.acfg, self.seed, phrases)

    def collate(self, items: list[dict]) -> dict:
        return collate_acl(items)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for name in TRAINABLE for p in getattr(model, name).parameters()]

    def saved_state(self, model: nn.Module) -> dict:
        return model.trainable_state()

    def load_saved_state(self, model: nn.Module, state: dict) -> None:
        model.load_trainable_state(state)

    def export(self, model: nn.Module, path: Path) -> None:
        from is4.manifests.atomic import atomic_path

        with atomic_path(path) as tmp:
            torch.save(model.trainable_state(), tmp)

    def import_checkpoint(self, model: nn.Module, path: Path) -> None:
        load_acl_params(model, path)

    def eval_item(self, frame: np.ndarray, wav: np.ndarray, sample_rate: int) -> dict[str, torch.Tensor]:
        return {"image": eval_image(frame, self.acfg), "fbank": clip_fbank(wav, sample_rate, self.acfg)}

    def heatmaps(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model.heatmaps(batch["image"], batch["fbank"])

    def embeddings(self, model: nn.Module, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"acl": model.embed(batch["image"], batch["fbank"])}
