"""Tiny random-weight models built from configs and saved in Hugging Face format.

They stand in for real checkpoints in the demo profile and the tests: `from_pretrained` loads them through the same
code as a Hub id, so everything but the weights is exercised. Weights are seeded, so the files are the same bytes
on every machine with the same library versions. The tokenizer is a character-level CLIP BPE (every byte-level
character is a token, no merges), so any prompt tokenises without a downloaded vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

TEXT_WIDTH = 32
MAX_TEXT_TOKENS = 32


def _byte_level_characters() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


def tiny_clip_tokenizer():
    """A CLIP tokenizer whose vocabulary is single characters (and their end-of-word forms)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _byte_level_characters():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TEXT_TOKENS)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TEXT_TOKENS, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )


def build_tiny_stable_diffusion(out_dir: Path, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x-architecture pipeline (UNet, VAE, CLIP text encoder) a few hundred KB in size."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, norm_num_groups=8,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """A CLIP model (text + 32×32 vision tower) with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    vision = CLIPVisionConfig(hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8)
    config = CLIPConfig(text_config=_text_config(len(tokenizer)).to_dict(), vision_config=vision.to_dict(),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(out_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "stable-diffusion": build_tiny_stable_diffusion,
    "clip": build_tiny_clip,
}
