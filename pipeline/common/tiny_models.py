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
MAX_TEXT_TOKENS = 128  # character-level tokens: room for a whole IS4 prompt
# The size of every tiny transformer stack of width TEXT_WIDTH (text towers, 32×32 / 64×64 vision towers, LMs).
TINY_STACK = {"hidden_size": TEXT_WIDTH, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def _byte_level_characters() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


_CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _character_clip_tokenizer(specials_first: bool, **kwargs):
    """A CLIP tokenizer whose vocabulary is single characters and their end-of-word forms, no merges; the start and
    end tokens take the first ids or the last ones."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {token: i for i, token in enumerate(_CLIP_SPECIAL_TOKENS)} if specials_first else {}
    for char in _byte_level_characters():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for token in _CLIP_SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TEXT_TOKENS, **kwargs)


def tiny_clip_tokenizer():
    """A CLIP tokenizer whose vocabulary is single characters (and their end-of-word forms)."""
    return _character_clip_tokenizer(specials_first=True)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        **TINY_STACK,
        max_position_embeddings=MAX_TEXT_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def build_tiny_stable_diffusion(out_dir: Path, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x-architecture pipeline (UNet, VAE, CLIP text encoder) a few hundred KB in size."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """A CLIP model (text + 32×32 vision tower) with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    vision = CLIPVisionConfig(**TINY_STACK, image_size=32, patch_size=8)
    config = CLIPConfig(
        text_config=_text_config(len(tokenizer)).to_dict(), vision_config=vision.to_dict(), projection_dim=16
    )
    CLIPModel(config).save_pretrained(out_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


# Mistral-Instruct's documented prompt format: `<s>[INST] {user} [/INST]{assistant}</s>[INST] {user} [/INST]...`.
# Roles must alternate user/assistant, starting with the user; the format has no system role. The generation prompt
# is the closing `[/INST]` already written after each user turn, so `add_generation_prompt` adds nothing.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}"
    "{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported') }}"
    "{% endif %}"
    "{% endfor %}"
)


def _byte_level_tokenizer(leading: tuple[str, ...] = (), trailing: tuple[str, ...] = (), **kwargs):
    """A byte-level BPE tokenizer with no merges (one token per byte, so any text tokenises offline).

    The `leading` special tokens take the first ids, the `trailing` ones the ids after the 256 byte characters;
    `kwargs` (special-token roles, chat template, ...) go to `PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {token: i for i, token in enumerate(leading)}
    for char in _byte_level_characters():
        vocab.setdefault(char, len(vocab))
    for token in trailing:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=kwargs.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def tiny_mistral_tokenizer():
    """A byte-level tokenizer with Mistral's special tokens and its Instruct chat template.

    Like Mistral's own tokenizer it adds `<s>` when called with `add_special_tokens=True`, and its chat template
    writes `<s>` itself, so chat-templated text must be tokenized with `add_special_tokens=False`.
    """
    return _byte_level_tokenizer(
        ("<unk>", "<s>", "</s>"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=512,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )


def build_tiny_mistral(out_dir: Path, seed: int = 0) -> Path:
    """A Mistral causal LM (2 layers, width 32) with a byte-level tokenizer and a Mistral-Instruct chat template."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_mistral_tokenizer()
    config = MistralConfig(
        vocab_size=len(tokenizer),
        **TINY_STACK,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    MistralForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "stable-diffusion": build_tiny_stable_diffusion,
    "clip": build_tiny_clip,
    "mistral": build_tiny_mistral,
}


# --- segmenter and detector (annotate stage) ----------------------------------------------------------------------

TINY_SAM_WIDTH = 16


def build_tiny_sam(out_dir: Path, seed: int = 0) -> Path:
    """A SAM model (ViT encoder, prompt encoder, mask decoder) of width 16 with its processor.

    It keeps SAM's real input frame (longest side resized to 1024, padded to 1024×1024), so prompt coordinates
    go through the same rescaling as with a real checkpoint; a patch size of 32 keeps the encoder cheap (a 32×32
    embedding grid, 128×128 low-resolution masks). The processor is the PIL one (no torchvision needed).
    """
    from transformers import (
        SamConfig,
        SamImageProcessorPil,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(seed)
    width = TINY_SAM_WIDTH
    vision = SamVisionConfig(
        hidden_size=width,
        output_channels=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=1024,
        patch_size=32,
        window_size=4,
        global_attn_indexes=[1],
        mlp_dim=2 * width,
        num_pos_feats=width // 2,
    )
    prompt = SamPromptEncoderConfig(hidden_size=width, image_size=1024, patch_size=32, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=width, mlp_dim=2 * width, num_attention_heads=2, iou_head_hidden_dim=width
    )
    config = SamConfig(
        vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict()
    )
    SamModel(config).save_pretrained(out_dir)
    SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(out_dir)
    return out_dir


def tiny_owlv2_tokenizer():
    """A character-level CLIP tokenizer laid out like OWLv2's: id 0 is `!`, the padding token.

    OWLv2 treats a query whose first token id is 0 as padding (`query_mask = input_ids[..., 0] > 0`), so the
    start token must not be id 0 (`tiny_clip_tokenizer` puts it there).
    """
    return _character_clip_tokenizer(specials_first=False, pad_token="!")


def build_tiny_owlv2(out_dir: Path, seed: int = 0) -> Path:
    """An OWLv2 open-vocabulary detector (CLIP text + 32×32 vision tower, 16 box predictions) with its processor."""
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
        Owlv2TextConfig,
        Owlv2VisionConfig,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_owlv2_tokenizer()
    text = Owlv2TextConfig(
        vocab_size=len(tokenizer),
        **TINY_STACK,
        max_position_embeddings=MAX_TEXT_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = Owlv2VisionConfig(**TINY_STACK, image_size=32, patch_size=8)
    # The class head projects image features to the text width, so projection_dim must equal it.
    config = Owlv2Config(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=TEXT_WIDTH)
    model = Owlv2ForObjectDetection(config)
    # The box and class heads are initialised with unit-scale weights, which saturates every box to the whole
    # padded square and every score to 1. Scaled down, boxes stay near their patch's prior box and scores spread
    # around 0.5, so the tiny detector's outputs differ from query to query and box to box.
    with torch.no_grad():
        for head in (model.box_head, model.class_head):
            for param in head.parameters():
                param.mul_(0.05)
    model.save_pretrained(out_dir)
    image_processor = Owlv2ImageProcessorPil(size={"height": 32, "width": 32})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS["sam"] = build_tiny_sam
TINY_BUILDERS["owlv2"] = build_tiny_owlv2


# --- image captioner (caption stage) ------------------------------------------------------------------------------

TINY_BLIP2_QUERY_TOKENS = 4
TINY_BLIP2_CAPTION_CHARACTERS = "abcdefghijklmnopqrstuvwxyz "


def tiny_opt_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and OPT's special tokens.

    As with OPT's own tokenizer, `</s>` is both the bos token (added in front of every text) and the eos token.
    """
    return _byte_level_tokenizer(
        ("<s>", "<pad>", "</s>", "<unk>"),
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=512,
    )


def build_tiny_blip2(out_dir: Path, seed: int = 0) -> Path:
    """A BLIP-2 captioner (32×32 ViT, Q-Former with 4 query tokens, OPT language model, all width 32) with its
    processor.

    `Blip2Processor` adds the `<image>` token to the tokenizer and writes it `num_query_tokens` times in front of
    every text; the model swaps those positions for the Q-Former outputs, so the config's `image_token_index` is the
    id the processor gave it. The image processor is the PIL one (no torchvision needed).
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessorPil,
        OPTConfig,
    )

    torch.manual_seed(seed)
    width = TEXT_WIDTH
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tiny_opt_tokenizer(),
        num_query_tokens=TINY_BLIP2_QUERY_TOKENS,
    )
    tokenizer = processor.tokenizer
    vision = Blip2VisionConfig(**TINY_STACK, image_size=32, patch_size=8)
    qformer = Blip2QFormerConfig(
        vocab_size=32,
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * width,
        max_position_embeddings=32,
        encoder_hidden_size=width,
        cross_attention_frequency=1,
    )
    # With OPT's usual init_std of 0.02 the tiny LM repeats one token forever whatever the image; at 0.5 the
    # hidden states follow the image and the text so far. Untied, the output head can be restricted (below)
    # without changing the input embeddings of prompt characters. 1024 positions hold a prompt, the query tokens
    # and the most new tokens the caption config allows (512).
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        ffn_dim=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        word_embed_proj_dim=width,
        init_std=0.5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=TINY_BLIP2_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    model = Blip2ForConditionalGeneration(config)
    # Zero output rows (logit 0) for every token but lower-case letters and space, so greedy captions are readable
    # letters rather than control characters and broken UTF-8 bytes.
    caption_ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(TINY_BLIP2_CAPTION_CHARACTERS))
    silenced = torch.ones(len(tokenizer), dtype=torch.bool)
    silenced[caption_ids] = False
    with torch.no_grad():
        model.language_model.lm_head.weight[silenced] = 0
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS["blip2"] = build_tiny_blip2


# --- audio captioner (caption stage) ------------------------------------------------------------------------------

# Qwen2-Audio's special tokens, in the order (and so the relative ids) of the real tokenizer, where `<|endoftext|>`
# is 151643 and `<|AUDIO|>` (the config's `audio_token_index`) 151646.
QWEN2_AUDIO_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)


def tiny_qwen2_audio_tokenizer():
    """A byte-level tokenizer with Qwen2-Audio's special tokens (after the byte characters, as in the real one).

    Like Qwen's it adds no BOS, and `<|endoftext|>` is both its eos and pad token.
    """
    return _byte_level_tokenizer(
        trailing=QWEN2_AUDIO_SPECIAL_TOKENS,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN2_AUDIO_SPECIAL_TOKENS[1:]),
        model_max_length=4096,
    )


def build_tiny_qwen2_audio(out_dir: Path, seed: int = 0) -> Path:
    """A Qwen2-Audio model (Whisper-style encoder of width 16, Qwen2 decoder of width 32) with its processor.

    It keeps the real audio front end: a 128-bin Whisper feature extractor that pads every clip to 30 s (3000 frames,
    so `max_source_positions` stays 1500) and an attention mask marking the clip's own frames, which the processor
    turns into one `<|AUDIO|>` token per 40 ms of audio (250 for a 10-s clip). The processor keeps its default
    (Qwen2-Audio-Instruct) chat template.
    """
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_qwen2_audio_tokenizer()
    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        d_model=16,
        max_source_positions=1500,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        **TINY_STACK,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Qwen2AudioConfig(
        audio_config=audio.to_dict(),
        text_config=text.to_dict(),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    Qwen2AudioForConditionalGeneration(config).save_pretrained(out_dir)
    feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, return_attention_mask=True)
    Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS["qwen2-audio"] = build_tiny_qwen2_audio


# --- ACL trainer: CLIPSeg grounder (its BEATs audio encoder is built with BEATs, trainers/beats.py) -------------

TINY_CLIPSEG_IMAGE_SIZE = 64


def build_tiny_clipseg(out_dir: Path, seed: int = 0) -> Path:
    """A CLIPSeg model (CLIP text + 64×64 patch-8 vision tower, two-layer decoder) with the character-level CLIP
    tokenizer; the trainer does its own image transforms, so no image processor is saved."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegVisionConfig

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    vision = CLIPSegVisionConfig(**TINY_STACK, image_size=TINY_CLIPSEG_IMAGE_SIZE, patch_size=8)
    config = CLIPSegConfig(
        text_config=_text_config(len(tokenizer)).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=16,
        extract_layers=[0, 1],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    CLIPSegForImageSegmentation(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS["clipseg"] = build_tiny_clipseg


# --- audio encoder (neighbours stage) -----------------------------------------------------------------------------


def build_tiny_ast(out_dir: Path, seed: int = 0) -> Path:
    """An Audio Spectrogram Transformer (2 layers of width 32, 1.28-s input) with its feature extractor: the
    stand-in for the audio encoder of the neighbours stage (AST / Wav2CLIP)."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_length=128,
        num_mel_bins=128,
        frequency_stride=16,
        time_stride=16,
    )
    ASTModel(config).save_pretrained(out_dir)
    ASTFeatureExtractor(max_length=128, num_mel_bins=128).save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS["ast"] = build_tiny_ast
