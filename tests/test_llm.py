"""The chat LLM wrapper on a tiny random Mistral (offline), answer normalisation, and the object-name proposer."""

from __future__ import annotations

from pathlib import Path

import pytest

from is4.config import ModelRef
from is4.pipeline.common.llm import (
    OBJECT_NAME_PROMPT,
    ChatLM,
    normalise_phrase,
    object_name_proposer,
    prepare_tokenizer_for_generation,
)
from is4.pipeline.common.tiny_models import build_tiny_mistral, tiny_mistral_tokenizer
from tests.support import TinyModels

# Four prompts of clearly different token lengths, so batches of them are padded.
MESSAGES = [
    "Hi",
    'Say "yes".',
    "What makes the sound of a wind chime?",
    "A much longer prompt, with punctuation; quotes ('single' and \"double\") and several words - to force padding.",
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> ChatLM:
    return ChatLM.load(
        ModelRef(model_id="tiny-random:mistral"), tiny_models.install(tmp_path_factory.mktemp("work"), "mistral")
    )


# --- the tiny model -------------------------------------------------------------------------------------------------


def test_tiny_mistral_files_are_byte_identical_across_builds(tiny_models: TinyModels, tmp_path: Path) -> None:
    first, second = tiny_models.path("mistral"), build_tiny_mistral(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_tiny_tokenizer_round_trips_text_and_follows_the_mistral_chat_format() -> None:
    tokenizer = tiny_mistral_tokenizer()
    text = 'He said: "it\'s 3.5 °C — fine!"  `code`, *stars*\tand\nlines'
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer(text).input_ids[0] == tokenizer.bos_token_id  # like Mistral's, it adds <s> by default
    conversation = [
        {"role": "user", "content": "a?"},
        {"role": "assistant", "content": "b."},
        {"role": "user", "content": "c?"},
    ]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == "<s>[INST] a? [/INST]b.</s>[INST] c? [/INST]"


# --- ChatLM ---------------------------------------------------------------------------------------------------------


def test_load_resolves_the_model_and_prepares_the_tokenizer(lm: ChatLM) -> None:
    assert lm.resolved.model_id == "tiny-random:mistral"
    assert lm.resolved.revision.startswith("sha256:")
    assert lm.tokenizer.padding_side == "left"
    assert lm.tokenizer.pad_token == "</s>"
    assert not lm.model.training


def test_pad_token_falls_back_to_eos() -> None:
    tokenizer = tiny_mistral_tokenizer()
    tokenizer.pad_token = None
    prepared = prepare_tokenizer_for_generation(tokenizer)
    assert prepared.pad_token == prepared.eos_token == "</s>"
    assert prepared.padding_side == "left"


def test_render_is_the_mistral_instruct_prompt(lm: ChatLM) -> None:
    message = 'Name the object that makes the sound "wind chime".'
    assert lm.render(message) == '<s>[INST] Name the object that makes the sound "wind chime". [/INST]'


def test_encode_left_pads_with_a_single_bos(lm: ChatLM) -> None:
    batch = lm.encode(MESSAGES)
    bos, pad = lm.tokenizer.bos_token_id, lm.tokenizer.pad_token_id
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == len(MESSAGES)  # all different lengths: every row but the longest is padded
    for row, mask, length, message in zip(
        batch["input_ids"].tolist(), batch["attention_mask"].tolist(), lengths, MESSAGES
    ):
        width = len(row)
        assert mask == [0] * (width - length) + [1] * length  # padding on the left only
        assert row[: width - length] == [pad] * (width - length)
        tokens = row[width - length :]
        assert tokens[0] == bos and tokens.count(bos) == 1  # the template's <s>, not a second one from the tokenizer
        assert lm.tokenizer.decode(tokens) == lm.render(message)


def test_greedy_answers_do_not_depend_on_the_batch(lm: ChatLM) -> None:
    one_by_one = lm.generate(MESSAGES, batch_size=1)
    together = lm.generate(MESSAGES, batch_size=4)
    assert together == one_by_one
    assert lm.generate(MESSAGES, batch_size=3) == one_by_one  # a full batch and a remainder
    assert len(set(one_by_one)) > 1  # the prompts lead to different answers, so the comparison has teeth
    assert all(answer for answer in one_by_one)


def test_generate_returns_one_answer_per_message_in_order(lm: ChatLM) -> None:
    answers = lm.generate(MESSAGES, batch_size=4)
    assert len(answers) == len(MESSAGES) and all(isinstance(a, str) for a in answers)
    assert lm.generate(MESSAGES[::-1], batch_size=4) == answers[::-1]
    assert lm.generate([MESSAGES[2], MESSAGES[2]], batch_size=2) == [answers[2], answers[2]]
    assert lm.generate([]) == []
    with pytest.raises(ValueError, match="batch_size"):
        lm.generate(MESSAGES, batch_size=0)


def test_generate_returns_only_new_text_bounded_by_max_new_tokens(lm: ChatLM) -> None:
    (answer,) = lm.generate([MESSAGES[0]], max_new_tokens=3)
    assert "[INST]" not in answer and "<s>" not in answer
    # One token is one byte, and a byte decodes to at most one character (U+FFFD where it is not valid UTF-8, which
    # is why the text cannot simply be re-tokenized and counted).
    assert len(answer) <= 3


# --- answer normalisation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Dog.", "dog"),
        ('The answer is: "wind chime".', "wind chime"),
        ("Sure! The primary object is a cello.", "cello"),
        ("**Crowd of people**", "crowd of people"),
        ("Answer: Acoustic guitar", "acoustic guitar"),
        ("`Lawn mower`", "lawn mower"),
        ("“Church bell”", "church bell"),
        ("'wind chime'", "wind chime"),
        ("It's a dog, probably.", "dog"),
        ("An owl (hooting)", "owl"),
        ("a chainsaw - cutting wood", "chainsaw"),
        ("  - The Fire Truck  ", "fire truck"),
        ('The physical object or being that makes the sound "wind chime" is a wind chime.', "wind chime"),
        ("Cello\nThe cello is a bowed string instrument.", "cello"),
        ("Sure!\n\nTrain horn", "train horn"),
        ("The answer is:\nwind chime", "wind chime"),
        ("dog's collar", "dog's collar"),
        ("I cannot determine that from the captions given", None),
        ("A large crowd of cheering people", None),
        ("It is not possible to say.", None),
        ("Unknown.", None),
        ("N/A", None),
        ("", None),
        ("   \n  ", None),
        ("1234", None),
        ("**", None),
    ],
)
def test_normalise_phrase(answer: str, expected: str | None) -> None:
    assert normalise_phrase(answer) == expected


def test_normalise_phrase_word_limit() -> None:
    assert normalise_phrase("crowd of people", max_words=2) is None
    assert normalise_phrase("a crowd of cheering people", max_words=4) == "crowd of cheering people"


# --- object-name proposals ------------------------------------------------------------------------------------------


class CannedChatLM(ChatLM):
    """Records the messages it is asked and answers from a script (the real-model path is tested above)."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.calls: list[list[str]] = []

    def generate(self, user_messages: list[str], *, max_new_tokens: int = 16, batch_size: int = 8) -> list[str]:
        self.calls.append(list(user_messages))
        return [self.answers[message] for message in user_messages]


def _prompt(label: str) -> str:
    return (
        f'Name the physical object or being that makes the sound "{label}", as it would appear in a photo. '
        "Answer with a noun phrase of at most 3 words and nothing else."
    )


def test_object_name_prompt_wording() -> None:
    assert OBJECT_NAME_PROMPT.format(label="wind chime") == _prompt("wind chime")


def test_object_name_proposer_asks_once_per_list_and_maps_labels() -> None:
    lm = CannedChatLM(
        {
            _prompt("wind chime"): "Wind chime.",
            _prompt("people cheering"): "**Crowd of people**",
            _prompt("playing cello"): "Sure! The primary object is a cello.",
            _prompt("ocean burbling"): "I cannot determine that from the label given",
            _prompt("dog barking"): "1234",
        }
    )
    propose = object_name_proposer(lm)
    labels = ["wind chime", "people cheering", "playing cello", "ocean burbling", "dog barking", "wind chime"]
    assert propose(labels) == {
        "wind chime": "wind chime",
        "people cheering": "crowd of people",
        "playing cello": "cello",
    }
    assert lm.calls == [[_prompt(label) for label in labels[:5]]]  # one batched call, each label asked once
    assert propose(["playing cello"]) == {"playing cello": "cello"}
    assert len(lm.calls) == 2
    assert propose([]) == {} and len(lm.calls) == 2


def test_object_name_proposer_runs_on_the_real_model(lm: ChatLM) -> None:
    proposals = object_name_proposer(lm)(["wind chime", "people cheering"])
    assert set(proposals) <= {"wind chime", "people cheering"}  # random weights: the answers are usually garbage
    assert all(normalise_phrase(phrase) == phrase for phrase in proposals.values())
