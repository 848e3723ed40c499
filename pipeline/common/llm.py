"""A chat LLM for short answers (Mistral-7B-Instruct-v0.2 in the paper profile), and the parsing of its answers.

`ChatLM` loads the configured checkpoint through `resolve_model`, renders each user message with the checkpoint's
own chat template and generates greedily in left-padded batches, so an answer does not depend on the batch it was
generated in. `normalise_phrase` turns a free-form answer into a short lower-case noun phrase or rejects it, and
`object_name_proposer` asks the model for the sounding object of sound-class labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from is4.config import ModelRef
from is4.pipeline.common.models import ResolvedModel, load_pretrained

OBJECT_NAME_PROMPT = (
    'Name the physical object or being that makes the sound "{label}", as it would appear in a photo. '
    "Answer with a noun phrase of at most 3 words and nothing else."
)


def prepare_tokenizer_for_generation(tokenizer):
    """Left padding for batched generation, and the eos token as pad token where the checkpoint has none.

    Why left: `generate` appends each new token after the last column of `input_ids` and predicts it from the logits of
    that column (`outputs.logits[:, -1]` in `transformers/generation/utils.py`). With right padding the last column
    of a shorter prompt is a pad, so its answer would be predicted from, and continue after, padding (`generate` warns
    "right-padding was detected"). With left padding every prompt ends in the last column; the attention mask hides the
    pads, and `generate` derives `position_ids` from the mask (`attention_mask.cumsum(-1) - 1`, see
    `_prepare_position_ids_for_generation`), so each prompt's positions start at 0 however much it is padded. (Mistral's
    rotary embeddings see only relative positions, so there the mask is what matters: a shift is invisible.)
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ChatLM:
    """A causal LM with its tokenizer and chat template, for greedy single-turn answers."""

    def __init__(self, model, tokenizer, resolved: ResolvedModel | None = None):
        self.model = model
        self.tokenizer = prepare_tokenizer_for_generation(tokenizer)
        self.resolved = resolved

    @classmethod
    def load(cls, ref: ModelRef, workdir: str | Path, role: str = "object_phrase") -> ChatLM:
        """Resolve `ref` (Hub id at a revision, local directory or `tiny-random:<kind>`) and load it for inference."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = load_pretrained(ref, workdir, role, AutoModelForCausalLM, AutoTokenizer)
        return cls(loaded.model, loaded.processor, loaded.resolved)

    @property
    def device(self):
        return self.model.device

    def render(self, user_message: str) -> str:
        """The exact text the model sees for a one-turn conversation, ending where the assistant's answer starts.

        The template writes the special tokens (Mistral: `<s>[INST] ... [/INST]`) itself, so this text is tokenized
        with `add_special_tokens=False`; adding them again would give a second `<s>`.
        """
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}], add_generation_prompt=True, tokenize=False
        )

    def encode(self, user_messages: list[str]):
        """The rendered messages as one left-padded batch (`input_ids`, `attention_mask`) on the model's device."""
        texts = [self.render(message) for message in user_messages]
        return self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.device)

    def generate(self, user_messages: list[str], *, max_new_tokens: int = 16, batch_size: int = 8) -> list[str]:
        """Greedy answers to independent one-turn messages, in order: only the new text, special tokens dropped and
        surrounding whitespace stripped.

        In float32 an answer does not depend on `batch_size` or on the other messages in its batch. In bfloat16 the
        rounding differs between batch shapes and can flip a near-tied greedy choice, so answers may change with the
        batching; keep `batch_size` fixed where bfloat16 answers must be reproduced.
        """
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        answers: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(user_messages), batch_size):
                inputs = self.encode(user_messages[start : start + batch_size])
                output = self.model.generate(
                    **inputs,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                answers.extend(
                    text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                )
        return answers


# --- parsing answers ---------------------------------------------------------------------------------------------

_FLAGS = re.IGNORECASE
# Markup and double quotes become spaces wherever they are ("wind_chime" is "wind chime"); single quotes are dropped
# only where they wrap words (keeps "dog's").
_MARKUP = re.compile(r"[*`\"“”„«»_]")
_WRAPPING_SINGLE_QUOTES = re.compile(r"(?<!\w)'|'(?!\w)")
_BULLET = re.compile(r"^\s*(?:[-•>]+|\d+[.)])\s+")
_INTERJECTION = re.compile(
    r"^(?:sure(?: thing)?|certainly|okay|ok|of course|yes|well|alright|absolutely|here you go|got it)\b[\s!.,:;-]*",
    _FLAGS,
)
_SUBJECT = (
    r"(?:(?:the|my|a|its)\s+)?"
    r"(?:(?:final|short|best|likely|most\s+likely|probable|primary|main|physical|sounding|correct)\s+)*"
    r"(?:answer|response|noun\s+phrase|object(?:\s+or\s+being)?|being|thing|sound\s+source|source|culprit|subject)"
)
# "The answer is:", "Answer:", "The primary object is", "The object that makes the sound wind chime would be", ...
_LEAD_IN = re.compile(
    rf"^{_SUBJECT}(?:\s+(?:that|which|who)\s+(?:makes?|produces?|creates?)\b[^:]*?)?"
    r"\s*(?:(?:is|would\s+be|could\s+be|might\s+be|will\s+be)\b\s*:?|:)\s*",
    _FLAGS,
)
_PRONOUN_LEAD_IN = re.compile(r"^(?:it|this|that)(?:'s|\s+is|\s+would\s+be|\s+could\s+be)\s+", _FLAGS)
# The first clause: up to a comma, semicolon, bracket, dash between spaces, or sentence end.
_CLAUSE_END = re.compile(r"[,;(\[]|\s[-–—]\s|[.!?](?:\s|$)")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", _FLAGS)
_NON_ANSWERS = frozenset(
    {
        "none",
        "nothing",
        "unknown",
        "unclear",
        "n/a",
        "na",
        "not sure",
        "no idea",
        "i don't know",
        "not applicable",
        "cannot say",
        "can't say",
        "sorry",
        "no answer",
        "not specified",
        "unspecified",
        "not mentioned",
    }
)


def normalise_phrase(answer: str, max_words: int = 3) -> str | None:
    """A free-form LLM answer as a lower-case phrase of at most `max_words` words, or None when it is not one.

    Keeps the first line that holds more than a lead-in (so "Answer:\\nDog" gives "dog"); drops markup (`*`, `_`,
    backticks, quotes), bullets, leading interjections ("Sure!"), lead-ins ("The answer is:", "Answer:", "The primary
    object is", "It is"), everything after the first clause, trailing punctuation and a leading article. None when
    nothing is left, when it has no letters, when it is a non-answer ("unknown", "none") or when it is longer than
    `max_words` words (a sentence, a refusal or an explanation).
    """
    for line in (answer or "").splitlines():
        text = _strip_lead_in(line)
        if text:  # the first line with more than a lead-in ("Sure!", "The answer is:") is the answer line
            break
    else:
        return None
    text = _CLAUSE_END.split(text, maxsplit=1)[0]
    text = _ARTICLE.sub("", text.strip())
    text = " ".join(text.strip(" \t.,;:!?'-–—").lower().split())
    if not text or not re.search(r"[^\W\d_]", text) or text in _NON_ANSWERS:
        return None
    if len(text.split()) > max_words:
        return None
    return text


def _strip_lead_in(line: str) -> str:
    """One line without bullets, markup, interjections and lead-ins; empty when that is all it was."""
    text = _BULLET.sub("", line)
    text = _MARKUP.sub(" ", text.replace("’", "'").replace("‘", "'"))
    text = _WRAPPING_SINGLE_QUOTES.sub("", text).strip()
    previous = None
    while text != previous:  # lead-ins can follow one another: "Sure! The answer is: it is a dog"
        previous = text
        text = _INTERJECTION.sub("", text)
        text = _LEAD_IN.sub("", text)
        text = _PRONOUN_LEAD_IN.sub("", text)
        if ":" in text:  # a noun phrase has no colon: what precedes one is a lead-in
            text = text.split(":", 1)[1]
        text = text.strip(" \t.,;:!?-–—")
    return text


def object_name_proposer(
    lm: ChatLM, *, max_new_tokens: int = 24, batch_size: int = 8
) -> Callable[[list[str]], dict[str, str]]:
    """A function that maps sound-class labels to the object or being that makes each sound, asked in one batched call.

    Labels whose answer does not normalise to a short phrase are left out of the result.
    """

    def propose(labels: list[str]) -> dict[str, str]:
        unique = list(dict.fromkeys(labels))
        if not unique:
            return {}
        prompts = [OBJECT_NAME_PROMPT.format(label=label) for label in unique]
        answers = lm.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        proposals: dict[str, str] = {}
        for label, answer in zip(unique, answers, strict=True):
            phrase = normalise_phrase(answer)
            if phrase is not None:
                proposals[label] = phrase
        return proposals

    return propose
