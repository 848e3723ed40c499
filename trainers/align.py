"""The alignment method of the IS4 paper (TPAMI'25; ICCV'23 "Sound Source Localization is All about Cross-Modal
Alignment"): the first public trainer of it (the authors' repository has inference code only).

From the authors' inference code (matched so their released checkpoints load and score): two ResNet-18s with
layer4 stride 1 (`imgnet`, `audnet`, 14x14 maps at 224), audio first conv `conv1_a` 1->64, max-pooled 512-d audio
embedding, heatmap = cosine of each location's feature with the audio embedding on the backbone features; audio
input = the 3-s window 3.5-6.5 s of the 10-s clip, `spectrogram(nperseg=512, noverlap=353)`, log, / 12; image:
bicubic resize, ImageNet normalisation.

From the paper only (no code exists): s_L(v, a) = pooled cos(v^xy, a) over locations (Eq. 3: mean; `sl_pool: max`
is EZ-VSL's MIL variant), s_A = cos(p_v(avgpool v), p_a(a)) (Eq. 4) with projection heads whose shape is not
published (ours: Linear(C, C)-ReLU-Linear(C, proj_dim)), positives V = {v, v_aug, v_conc} x A = {a, a_aug,
a_conc}: all 9 pairs, each an InfoNCE over the batch's audios for s_L and for s_A (Eq. 5), tau = 0.07; v_aug =
SimCLR augmentations, a_aug = a random time shift of the window, v_conc / a_conc = a random one of the clip's
top-k neighbours per modality (the `neighbours` manifest). Negatives are gathered from every rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from is4.config import AlignmentConfig, TrainConfig
from is4.trainers import features, transforms
from is4.trainers.backbones import ResNet
from is4.trainers.data import AVClips, ClipIndex, item_rng, load_neighbours, read_frame, read_wav
from is4.trainers.dist import gather, rank_offset
from is4.trainers.method import TrainError, TrainMethod

# Keys of the authors' AVENet state dict that our model does not have (the other modality's first conv, the
# optical-flow conv, the ImageNet classifier): ignored on import.
_AUTHOR_EXTRAS = (
    "imgnet.conv1_a.",
    "imgnet.conv1_flow.",
    "imgnet.fc.",
    "audnet.conv1.",
    "audnet.conv1_flow.",
    "audnet.fc.",
)


def _head(c: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, d))


class AlignModel(nn.Module):
    """imgnet / audnet trunks + projection heads; `forward(batch)` is the training loss (Eq. 5)."""

    def __init__(self, cfg: AlignmentConfig):
        super().__init__()
        self.cfg = cfg
        kw = {"width": cfg.width, "blocks": cfg.blocks, "strides": cfg.strides, "norm": cfg.norm}
        self.imgnet = ResNet(3, **kw)
        self.audnet = ResNet(1, **kw)
        c = self.imgnet.out_channels
        self.proj_v = _head(c, cfg.proj_dim)
        self.proj_a = _head(c, cfg.proj_dim)
        self.has_heads = True  # False once a checkpoint without projection heads (the authors' release) is loaded

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, C, h, w) feature maps."""
        return self.imgnet(frames)

    def encode_audio(self, specs: torch.Tensor) -> torch.Tensor:
        """(N, 1, F, T) -> (N, C) max-pooled embeddings (AVENet's AdaptiveMaxPool2d)."""
        return torch.amax(self.audnet(specs), dim=(2, 3))

    def _sl(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) x (K, C) -> (B, K) localisation similarity: pooled cosine over locations."""
        cos = torch.einsum("bchw,kc->bkhw", F.normalize(v, dim=1), F.normalize(a, dim=1))
        return cos.flatten(2).mean(2) if self.cfg.sl_pool == "mean" else cos.flatten(2).amax(2)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames, specs = batch["frames"], batch["specs"]  # (B, Vv, 3, S, S), (B, Va, 1, F, T)
        b, n_v, n_a = frames.shape[0], frames.shape[1], specs.shape[1]
        v = self.encode_image(frames.flatten(0, 1))
        v = v.view(b, n_v, *v.shape[1:])
        a = self.encode_audio(specs.flatten(0, 1)).view(b, n_a, -1)
        pv = F.normalize(self.proj_v(v.mean(dim=(3, 4))), dim=-1)  # (B, Vv, D)
        pa = F.normalize(self.proj_a(a), dim=-1)  # (B, Va, D)
        a_all, pa_all = gather(a), gather(pa)  # every rank's audios are the negatives
        labels = torch.arange(b, device=frames.device) + rank_offset(b)
        tau, sym = self.cfg.tau, self.cfg.symmetric
        if sym:
            v_all, pv_all = gather(v), gather(pv)
        sl = sa = frames.new_zeros(())
        for i in range(n_v):
            for j in range(n_a):
                sl = sl + F.cross_entropy(self._sl(v[:, i], a_all[:, j]) / tau, labels)
                sa = sa + F.cross_entropy(pv[:, i] @ pa_all[:, j].T / tau, labels)
                if sym:
                    sl = sl + F.cross_entropy(self._sl(v_all[:, i], a[:, j]).T / tau, labels)
                    sa = sa + F.cross_entropy(pa[:, j] @ pv_all[:, i].T / tau, labels)
        loss = self.cfg.sl_weight * sl + self.cfg.sa_weight * sa
        return {"loss": loss, "sl": sl.detach(), "sa": sa.detach()}

    @torch.no_grad()
    def embed(self, frames: torch.Tensor, specs: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"backbone": (max-pooled a, average-pooled v), "projected": (p_a(a), p_v(avg v))}: the features s_A
        compares (Eq. 4), before and after the heads; "projected" only when the heads were trained or loaded."""
        v = self.encode_image(frames).mean(dim=(2, 3))
        a = self.encode_audio(specs)
        out = {"backbone": (a, v)}
        if self.has_heads:
            out["projected"] = (self.proj_a(a), self.proj_v(v))
        return out

    @torch.no_grad()
    def heatmap(self, frames: torch.Tensor, specs: torch.Tensor) -> torch.Tensor:
        """(B, h, w): cos(v^xy, a) on the backbone features (the authors' inference map)."""
        v = F.normalize(self.encode_image(frames), dim=1)
        a = F.normalize(self.encode_audio(specs), dim=1)
        return torch.einsum("bchw,bc->bhw", v, a)


class AlignDataset(Dataset):
    """The views of one clip: frames (Vv, 3, S, S) and spectrograms (Va, 1, F, T) in `cfg.views` order."""

    def __init__(
        self, clips: AVClips, cfg: AlignmentConfig, seed: int, neighbours: dict[str, dict[str, list[str]]] | None
    ):
        self.clips, self.cfg, self.seed, self.neighbours = clips, cfg, seed, neighbours
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def _anchor(self, frame: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """LVS's train transform scaled to the image size: resize (246/224 of it), random crop, flip."""
        s = self.cfg.image_size
        big = round(s * 246 / 224)
        img = transforms.resize(transforms.to_tensor(frame), (big, big))
        return transforms.hflip(transforms.random_crop(img, s, rng), rng)

    def _simclr(self, frame: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        aug = self.cfg.augment
        img = transforms.random_resized_crop(
            transforms.to_tensor(frame), self.cfg.image_size, rng, scale=(aug.crop_scale[0], aug.crop_scale[1])
        )
        img = transforms.hflip(img, rng, aug.flip_p)
        if rng.random() < aug.jitter_p:
            img = transforms.colour_jitter(img, rng, *aug.jitter)
        if rng.random() < aug.grayscale_p:
            img = transforms.grayscale(img)
        if rng.random() < aug.blur_p:
            img = transforms.gaussian_blur(img, rng)
        return img

    def _spec(self, wav: np.ndarray, rate: int, start: float, where: str) -> torch.Tensor:
        try:
            return torch.from_numpy(features.window_spectrogram(wav, rate, start, self.cfg.audio))[None]
        except ValueError as exc:
            raise TrainError(f"{where}: {exc}") from None

    def __getitem__(self, i: int) -> dict:
        raw = self.clips[i]
        cid, rows = raw["clip_id"], self.clips.index.rows
        rng = item_rng(self.seed, self.epoch, cid, "align")
        frames, specs = [], []
        where = rows[i].where
        for view in self.cfg.views:
            if view == "orig":
                frames.append(self._anchor(raw["frame"], rng))
                specs.append(self._spec(raw["wav"], raw["sample_rate"], self.cfg.audio.window[0], where))
            elif view == "aug":
                frames.append(self._simclr(raw["frame"], rng))
                specs.append(
                    self._spec(raw["wav"], raw["sample_rate"], features.random_start(rng, self.cfg.audio), where)
                )
            else:  # conc: a random top-k neighbour per modality
                assert self.neighbours is not None
                img_row = rows[self.clips.index.position[str(rng.choice(self.neighbours[cid]["image"]))]]
                aud_row = rows[self.clips.index.position[str(rng.choice(self.neighbours[cid]["audio"]))]]
                frames.append(self._anchor(read_frame(img_row.frame, img_row.where), rng))
                wav, rate = read_wav(aud_row.audio, aud_row.where)
                specs.append(self._spec(wav, rate, self.cfg.audio.window[0], aud_row.where))
        mean, std = torch.tensor(transforms.IMAGENET_MEAN), torch.tensor(transforms.IMAGENET_STD)
        stacked = (torch.stack(frames) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        return {"index": i, "frames": stacked, "specs": torch.stack(specs)}


class AlignmentMethod(TrainMethod):
    """`train.method: alignment` (settings in `train.alignment`)."""

    name = "alignment"

    def __init__(self, cfg: TrainConfig, seed: int):
        super().__init__(cfg, seed)
        self.acfg = cfg.alignment

    def build_model(self) -> nn.Module:
        return with_imagenet_trunk(AlignModel(self.acfg), self.acfg.pretrained_vision)

    def train_dataset(self, workdir: Path) -> AlignDataset:
        if "conc" in self.acfg.views and not self.cfg.neighbours:
            raise TrainError(
                "train.alignment.views has 'conc' but train.neighbours is off (turn it on after the "
                "neighbours stage, or drop 'conc')"
            )
        index = ClipIndex.from_workdir(workdir, self.cfg.splits, self.cfg.id_list)
        neighbours = load_neighbours(workdir, index) if "conc" in self.acfg.views else None
        return AlignDataset(AVClips(index, ("frame", "wav")), self.acfg, self.seed, neighbours)

    def export(self, model: nn.Module, path: Path) -> None:
        from is4.manifests.atomic import atomic_path

        state = {f"module.{k}": v for k, v in model.state_dict().items() if k.startswith(("imgnet.", "audnet."))}
        with atomic_path(path) as tmp:
            torch.save({"model_state_dict": state}, tmp)

    def import_checkpoint(self, model: nn.Module, path: Path) -> None:
        load_author_checkpoint(model, path)

    def eval_item(self, frame: np.ndarray, wav: np.ndarray, sample_rate: int) -> dict[str, torch.Tensor]:
        s = self.acfg.image_size
        img = transforms.normalise(transforms.resize(transforms.to_tensor(frame), (s, s)))
        spec = features.window_spectrogram(wav, sample_rate, self.acfg.audio.window[0], self.acfg.audio)
        return {"frame": img, "spec": torch.from_numpy(spec)[None]}

    def heatmaps(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model.heatmap(batch["frame"], batch["spec"])

    def embeddings(self, model: nn.Module, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return model.embed(batch["frame"], batch["spec"])


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # unpickling refusals, truncated zips: one line naming the file
        raise TrainError(f"{path}: not a loadable checkpoint (weights_only=True): {str(exc).splitlines()[0]}") from None


def load_author_checkpoint(model: AlignModel, path: Path) -> None:
    """Load SSLalignment's `{"model_state_dict": {"module.imgnet.*", "module.audnet.*"}}` (or ours) into `model`:
    every backbone tensor must be there with its shape; projection heads are loaded when present."""
    ckpt = _load(path)
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise TrainError(f"{path}: no model_state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own}
    unknown = [k for k in state if k not in own and not k.startswith(_AUTHOR_EXTRAS)]
    missing = [k for k in own if k.startswith(("imgnet.", "audnet.")) and k not in kept]
    if unknown or missing:
        raise TrainError(
            f"{path}: not an alignment checkpoint of this shape: missing {missing[:3]}, unexpected {unknown[:3]}"
        )
    bad = [k for k, v in kept.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise TrainError(
            f"{path}: {bad[0]} has shape {tuple(kept[bad[0]].shape)}, the model "
            f"{tuple(own[bad[0]].shape)} (train.alignment.width / blocks)"
        )
    model.load_state_dict(kept, strict=False)
    model.has_heads = any(k.startswith(("proj_v.", "proj_a.")) for k in kept)


def load_imagenet_resnet(trunk: nn.Module, path: Path) -> None:
    """An ImageNet ResNet-18 state dict (torchvision names, `fc.*` ignored) into the vision trunk."""
    state = _load(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    result = trunk.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TrainError(
            f"{path}: not a ResNet-18 state dict: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


def with_imagenet_trunk(model: nn.Module, path: Path | None) -> nn.Module:
    """`model` (alignment's or JSA's) with its `imgnet` trunk initialised from the ImageNet ResNet-18 state dict at
    `path` (`train.<method>.pretrained_vision`); unchanged when `path` is None."""
    if path is not None:
        load_imagenet_resnet(model.get_submodule("imgnet"), path)
    return model
