"""The sounding object of a clip as a short phrase, asked of a chat LLM with ACL-SSL's prompt (DESIGN §4).

ACL-SSL gives Mistral-7B-Instruct-v0.2 a clip's image caption (BLIP-2) and audio caption (GAMA) and asks for the
primary sounding object in at most 3 words. `render_object_prompt` writes that user message verbatim; the model's
own chat template turns it into the text the model sees. Two backends answer a batch of messages greedily:
`TransformersPhraser` (through `ChatLM`: left-padded batches) and `VllmPhraser` (vLLM on CUDA, given the very same
token ids). `normalise_phrase` (in `llm.py`) reduces an answer to ≤3 words; the raw answer is kept alongside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from is4.config import ModelRef, ObjectPhraseConfig
from is4.pipeline.common.llm import ChatLM
from is4.pipeline.common.models import LoadedModel, ModelError, ResolvedModel, resolve_model, torch_device_and_dtype

ROLE = "object_phrase"
# Bump when the wording changes: the version is part of every cached answer's key and of the manifest.
PROMPT_VERSION = "acl-ssl-1"
OBJECT_PROMPT = (
    "Identify the primary object in the 'image caption' most likely producing the sound like given 'audio caption', "
    "excluding background sounds which is hard to infer from given 'image caption'. Keep the answer concise and "
    "focused on general concepts, such as type. Limit the response to no more than 3 words.\n"
    "Image caption: {image_caption}, Audio caption: {audio_caption}"
)


def render_object_prompt(image_caption: str, audio_caption: str) -> str:
    """The user message for one clip: the paper's instruction, then its two captions."""
    return OBJECT_PROMPT.format(image_caption=image_caption.strip(), audio_caption=audio_caption.strip())


class TransformersPhraser(LoadedModel):
    """Greedy answers from a transformers chat model, one left-padded `generate` call per batch."""

    backend = "transformers"

    def __init__(self, lm: ChatLM, ref: ModelRef, *, max_new_tokens: int = 24) -> None:
        self.lm = lm
        self.ref = ref
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(cls, ref: ModelRef, workdir: str | Path, *, max_new_tokens: int = 24) -> TransformersPhraser:
        return cls(ChatLM.load(ref, workdir, role=ROLE), ref, max_new_tokens=max_new_tokens)

    @property
    def resolved(self) -> ResolvedModel:
        return self.lm.resolved

    def render(self, image_caption: str, audio_caption: str) -> str:
        """The exact text the model reads for one clip (chat template applied)."""
        return self.lm.render(render_object_prompt(image_caption, audio_caption))

    def caption(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Raw answers for (image caption, audio caption) pairs, generated as one batch."""
        messages = [render_object_prompt(image, audio) for image, audio in pairs]
        return self.lm.generate(messages, max_new_tokens=self.max_new_tokens, batch_size=max(1, len(messages)))


class VllmPhraser(LoadedModel):
    """Greedy answers from vLLM (CUDA), fed the token ids the transformers path would use, so prompts are identical.

    vLLM schedules requests itself (continuous batching); a call still holds one batch, so the caller's out-of-memory
    halving applies unchanged.
    """

    backend = "vllm"

    def __init__(self, engine, tokenizer, resolved: ResolvedModel, *, max_new_tokens: int = 24) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.resolved = resolved
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(cls, ref: ModelRef, workdir: str | Path, *, max_new_tokens: int = 24) -> VllmPhraser:
        try:
            from vllm import LLM
        except ImportError:
            raise ModelError(
                "captions.object_phrase.backend is 'vllm', but vLLM is not installed (pip install vllm, on a CUDA "
                "machine); or use backend 'transformers'"
            ) from None
        if not ref.device.startswith("cuda"):
            raise ModelError(f"the vLLM backend runs on CUDA; models.object_phrase.device is {ref.device!r}")
        torch_device_and_dtype(ref)  # fails clearly when CUDA is absent
        from transformers import AutoTokenizer

        resolved = resolve_model(ref, workdir, ROLE)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        engine = LLM(model=str(resolved.path), tokenizer=str(resolved.path), dtype=ref.dtype, seed=0)
        return cls(engine, tokenizer, resolved, max_new_tokens=max_new_tokens)

    def render(self, image_caption: str, audio_caption: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": render_object_prompt(image_caption, audio_caption)}],
            add_generation_prompt=True,
            tokenize=False,
        )

    def caption(self, pairs: list[tuple[str, str]]) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [
            TokensPrompt(prompt_token_ids=self.tokenizer(self.render(i, a), add_special_tokens=False)["input_ids"])
            for i, a in pairs
        ]
        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        return [output.outputs[0].text.strip() for output in outputs]


def load_phraser(ref: ModelRef | None, workdir: str | Path, cfg: ObjectPhraseConfig) -> Any:
    """The configured object-phrase backend, loaded."""
    if ref is None:
        raise ModelError("models.object_phrase is not configured")
    backend = VllmPhraser if cfg.backend == "vllm" else TransformersPhraser
    return backend.load(ref, workdir, max_new_tokens=cfg.max_new_tokens)
