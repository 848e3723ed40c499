"""The object-phrase prompt (ACL-SSL, verbatim) through the chat template, its answers, and the vLLM backend's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from is4.config import ModelRef, ObjectPhraseConfig
from is4.pipeline.captions.object_phrase import (
    OBJECT_PROMPT,
    PROMPT_VERSION,
    TransformersPhraser,
    VllmPhraser,
    load_phraser,
    render_object_prompt,
)
from is4.pipeline.common.llm import normalise_phrase
from is4.pipeline.common.models import ModelError

PAPER_INSTRUCTION = (
    "Identify the primary object in the 'image caption' most likely producing the sound like given 'audio caption', "
    "excluding background sounds which is hard to infer from given 'image caption'. Keep the answer concise and "
    "focused on general concepts, such as type. Limit the response to no more than 3 words."
)
PAIRS = [
    ("a man playing a cello on a stage", "a cello is being played with a bow"),
    ("a dog sitting on the grass", "a dog barks several times while birds chirp"),
    ("two people in a kitchen", "water runs and dishes clatter"),
    ("a red car on a road, with a long line of trees and a blue sky behind it", "an engine revs"),
    ("a cat", "meowing"),
]


@pytest.fixture(scope="module")
def phraser(tmp_path_factory: pytest.TempPathFactory) -> TransformersPhraser:
    return TransformersPhraser.load(
        ModelRef(model_id="tiny-random:mistral"), tmp_path_factory.mktemp("work"), max_new_tokens=12
    )


def test_the_user_message_is_the_paper_prompt_then_both_captions() -> None:
    assert OBJECT_PROMPT.startswith(PAPER_INSTRUCTION + "\n")
    assert render_object_prompt(" a man playing a cello ", "a cello is being played\n") == (
        PAPER_INSTRUCTION + "\nImage caption: a man playing a cello, Audio caption: a cello is being played"
    )
    assert PROMPT_VERSION


def test_exact_text_that_reaches_the_llm(phraser: TransformersPhraser) -> None:
    image, audio = PAIRS[0]
    assert phraser.render(image, audio) == (
        "<s>[INST] "
        + PAPER_INSTRUCTION
        + "\nImage caption: a man playing a cello on a stage, Audio caption: a cello is being played with a bow"
        + " [/INST]"
    )
    # ... and those are the tokens generate() gets: one <s>, the template's own.
    ids = phraser.lm.encode([render_object_prompt(image, audio)])["input_ids"][0].tolist()
    tokenizer = phraser.lm.tokenizer
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids) == phraser.render(image, audio)


def test_answers_do_not_depend_on_the_batch_size(phraser: TransformersPhraser) -> None:
    together = phraser.caption(PAIRS)
    one_by_one = [phraser.caption([pair])[0] for pair in PAIRS]
    assert together == one_by_one
    assert phraser.caption(PAIRS[:2]) + phraser.caption(PAIRS[2:]) == together
    assert len(together) == len(PAIRS) and all(isinstance(a, str) for a in together)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Cello.", "cello"),
        ('"Cello"', "cello"),
        ("'Acoustic guitar'.", "acoustic guitar"),
        ("The answer is: Dog.", "dog"),
        ("The answer is: a barking dog", "barking dog"),
        ("Answer: Car engine.", "car engine"),
        ("**Running water**", "running water"),
        ("Primary object: cat.", "cat"),
        ("The primary object is a cello.", "cello"),
        ('Sure! The answer is: "Baby".', "baby"),
        ("Dog (barking)", "dog"),
        ("Electric guitar, amplified.", "electric guitar"),
        ("  \n", None),
        ("I cannot determine the primary object from the given captions.", None),
        ("Unknown.", None),
    ],
)
def test_answers_normalise_to_at_most_three_words(answer: str, expected: str | None) -> None:
    assert normalise_phrase(answer) == expected


def test_vllm_backend_without_vllm_or_cuda_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="vLLM|CUDA"):
        VllmPhraser.load(ModelRef(model_id="tiny-random:mistral"), tmp_path)
    with pytest.raises(ModelError, match="models.object_phrase is not configured"):
        load_phraser(None, tmp_path, ObjectPhraseConfig())


def test_load_phraser_picks_the_configured_backend(tmp_path: Path) -> None:
    phraser = load_phraser(ModelRef(model_id="tiny-random:mistral"), tmp_path, ObjectPhraseConfig(max_new_tokens=5))
    assert isinstance(phraser, TransformersPhraser)
    assert phraser.backend == "transformers" and phraser.max_new_tokens == 5
    assert phraser.resolved.revision.startswith("sha256:")
