"""Image captions from BLIP-2 (Salesforce/blip2-opt-2.7b in the paper profile, `tiny-random:blip2` in the demo).

`Blip2Captioner` loads the configured checkpoint through `resolve_model` and captions a list of images in one greedy
`generate` call. How the caller splits its images into batches does not change a caption in float32; sizing the
batches (and halving them on out-of-memory) is the caller's job.
"""

from __future__ import annotations

from pathlib import Path

from is4.config import ModelRef
from is4.pipeline.common.models import LoadedModel, ModelError, ResolvedModel, load_pretrained


class CaptionInputError(ValueError):
    """An image to caption cannot be read."""


def _read_rgb(path: Path):
    """The image at `path` as an RGB PIL image, fully decoded; `CaptionInputError` when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CaptionInputError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}") from None


class Blip2Captioner(LoadedModel):
    """A BLIP-2 checkpoint with its processor, for greedy captions continuing an optional text prompt.

    In float32 a caption does not depend on the other images in its `caption` call. In bfloat16 the rounding differs
    between batch shapes and can flip a near-tied greedy choice; keep the batch size fixed where those must repeat.
    """

    backend = "blip2"

    def __init__(
        self,
        model,
        processor,
        resolved: ResolvedModel,
        *,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        dtype_name: str = "float32",
        device_name: str = "cpu",
    ):
        self.model = model
        self.processor = processor
        self.resolved = resolved
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.dtype_name = dtype_name
        self.device_name = device_name
        # Every image gets the same prompt, so a batch has no padding; were there any, it must be on the left
        # (see `is4.pipeline.common.llm.prepare_tokenizer_for_generation`).
        processor.tokenizer.padding_side = "left"
        image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token.content)
        if processor.num_query_tokens != model.config.num_query_tokens or image_token_id != model.config.image_token_id:
            # Without matching image tokens in the text, `generate` silently captions without the image.
            raise ModelError(
                f"{resolved.model_id}: the processor writes {processor.num_query_tokens} image tokens of id "
                f"{image_token_id}, the model expects {model.config.num_query_tokens} of id "
                f"{model.config.image_token_id}; use a revision whose processor and config agree"
            )

    @classmethod
    def load(
        cls, ref: ModelRef, workdir: str | Path, *, prompt: str | None = None, max_new_tokens: int = 30
    ) -> Blip2Captioner:
        """Resolve `ref` (the `image_captioner` model: Hub id at a revision, local directory or `tiny-random:blip2`)
        and load it for inference."""
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        loaded = load_pretrained(ref, workdir, "image_captioner", Blip2ForConditionalGeneration, Blip2Processor)
        return cls(
            loaded.model,
            loaded.processor,
            loaded.resolved,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            dtype_name=ref.dtype,
            device_name=ref.device,
        )

    def settings(self) -> dict:
        """Everything besides the weights that a caption depends on."""
        return {
            "prompt": self.prompt,
            "max_new_tokens": self.max_new_tokens,
            "dtype": self.dtype_name,
            "device": self.device_name,
            "decoding": "greedy",
        }

    def caption(self, image_paths: list[Path]) -> list[str]:
        """One caption per image, in order: the greedy continuation of the prompt (without the prompt), special tokens
        dropped and surrounding whitespace stripped. All images are read before the model runs.

        Without a prompt the text is empty, which the processor turns into what `generate` would use by itself:
        the image tokens and the bos token.
        """
        import torch

        images = [_read_rgb(Path(path)) for path in image_paths]
        if not images:
            return []
        inputs = self.processor(
            images=images, text=[self.prompt or ""] * len(images), padding=True, return_tensors="pt"
        )
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
        # A decoder-only language model (OPT) returns the prompt (image tokens, bos, text) followed by the new tokens;
        # an encoder-decoder one (Flan-T5) returns only the decoder's tokens.
        if self.model.config.use_decoder_only_language_model:
            output = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(output, skip_special_tokens=True)]
