"""ACL model parts on the tiny CLIPSeg / BEATs: the audio-token splice, each loss term on hand-built batches, which
parameters train, the authors' checkpoint format and the inference heatmap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from is4.config import ACLConfig, ModelRef, parse_config
from is4.trainers import acl
from is4.trainers.method import TrainError
from tests.support import TinyModels

SIZE = 64  # the tiny CLIPSeg's native resolution


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


def tiny_cfg(**overrides) -> ACLConfig:
    base = {
        "clipseg": ModelRef(model_id="tiny-random:clipseg"),
        "audio_encoder": "tiny-random:beats",
        "image_size": SIZE,
        "resize": 72,
        "audio_seconds": 1.0,
        "mask_init_w": 1.0,
        "mask_init_b": 0.5,
    }
    return ACLConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_models: TinyModels):
    return tiny_models.install(tmp_path_factory.mktemp("acl-work"), "clipseg", "beats")


@pytest.fixture(scope="module")
def model(workdir):
    torch.manual_seed(0)  # the new heads' initial weights, whatever ran before (as the engine seeds before building)
    return acl.build_acl_model(tiny_cfg(caption_loss=True), workdir)


def batch(n: int = 4, seed: int = 0, phrases=None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    frames = 1 + (16000 - 400) // 160
    out = {
        "image": torch.randn(n, 3, SIZE, SIZE, generator=gen),
        "fbank": torch.randn(n, frames, 128, generator=gen) - 4,
    }
    if phrases is not None:
        out["phrase"] = phrases
    return out


def test_splice_equals_the_stock_text_model_for_a_word_token(model):
    """The audio token set to the embedding of the word "x" gives get_text_features("A photo of x")."""
    tokenizer, clip = model.tokenizer, model.grounder.clip
    ids = tokenizer("A photo of x", return_tensors="pt")["input_ids"]
    word = tokenizer.convert_tokens_to_ids("x</w>")
    assert ids[0, -2].item() == word  # the word is one token, right before the end token
    with torch.no_grad():
        stock = clip.get_text_features(input_ids=ids).pooler_output
        spliced = model.splice_text_embedding(clip.text_model.embeddings.token_embedding.weight[word][None])
        other = model.splice_text_embedding(clip.text_model.embeddings.token_embedding.weight[word + 2][None])
    assert torch.allclose(spliced, stock, atol=1e-6)
    assert not torch.allclose(other, stock, atol=1e-3)


def test_info_nce_and_acl_i_on_a_hand_built_batch():
    eye = torch.eye(3)
    # orthogonal unit pairs at temperature 1: logit 1 on the diagonal, 0 elsewhere
    expected = -math.log(math.e / (math.e + 2))
    assert acl.infonce(eye, eye, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert acl.infonce(eye, eye, 0.5).item() == pytest.approx(-math.log(math.e**2 / (math.e**2 + 2)), rel=1e-5)
    swapped = eye[[1, 0, 2]]
    # rows 0, 1 have their positive at logit 0 and a negative at 1 (both directions alike)
    expected_swapped = (2 * -math.log(1 / (math.e + 2)) + expected) / 3
    assert acl.acl_i_loss(swapped, eye, 1.0).item() == pytest.approx(expected_swapped, rel=1e-6)


def test_acl_f_code_and_paper_targets_differ_as_documented():
    audio = torch.eye(2)
    # v_f[b, n] = image b pooled with audio n's mask; make every v_f[b, n] equal to audio b
    v_f = torch.stack([audio[0].expand(2, -1), audio[1].expand(2, -1)])
    # code: cos(v_f[b, n], A_b) = 1 for every (b, n) -> uniform rows and columns -> ln 2 both ways
    assert acl.acl_f_loss(v_f, audio, 1.0, "code").item() == pytest.approx(math.log(2), rel=1e-6)
    columns = -math.log(math.e / (math.e + 1))
    # paper: cos(v_f[b, n], A_n) = [b == n] -> the diagonal in both directions
    assert acl.acl_f_loss(v_f, audio, 1.0, "paper").item() == pytest.approx(columns, rel=1e-6)


def test_area_regulariser():
    assert acl.area_reg_loss(torch.tensor(0.5), torch.tensor(0.25), 0.4, 0.0).item() == pytest.approx(0.35)


def test_caption_loss_uses_only_items_with_a_phrase():
    gen = torch.Generator().manual_seed(1)
    phrases = torch.randn(5, 8, generator=gen)
    audio = torch.randn(5, 8, generator=gen, requires_grad=True)
    usable = torch.tensor([True, False, True, True, False])
    loss = acl.caption_loss(phrases, audio, usable, 0.07)
    c, a = phrases[usable], audio[usable]
    expected = 0.5 * (acl.infonce(c, a, 0.07) + acl.infonce(a, c, 0.07))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert torch.all(audio.grad[~usable] == 0) and torch.all(audio.grad[usable].abs().sum(1) > 0)
    # changing an unusable item's phrase embedding changes nothing
    phrases2 = phrases.clone()
    phrases2[1] = 100.0
    assert acl.caption_loss(phrases2, audio, usable, 0.07).item() == loss.item()
    alone = torch.tensor([False, False, True, False, False])
    assert acl.caption_loss(phrases, audio, alone, 0.07).item() == 0.0


def test_gradients_reach_exactly_the_trainable_parts(model):
    model.train()
    terms = model(batch(phrases=["red", None, "blue", "red"]))
    assert set(terms) >= {"loss", "acl_i", "acl_f", "area_reg", "caption", "caption_masked"}
    assert terms["caption_masked"].item() == 1
    total = terms["acl_i"] + terms["acl_f"] + terms["area_reg"] + terms["caption"]
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    model.zero_grad(set_to_none=True)
    terms["loss"].backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {f"{part}.{name}" for part in acl.TRAINABLE for name, _ in getattr(model, part).named_parameters()}
    assert with_grad == trainable
    assert {
        "masker_i.w",
        "masker_i.b",
        "audio_proj.fc1.weight",
        "audio_proj.fga.reduce_potentials.0.weight",
    } <= with_grad
    frozen = [p for name, p in model.named_parameters() if name.startswith(("grounder.", "audio_backbone."))]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert not model.grounder.training and not model.audio_backbone.training  # frozen parts stay in eval mode
    model.zero_grad(set_to_none=True)


def test_caption_term_sees_only_the_phrased_items(model):
    """Replacing the audio of an item without a phrase changes every term but the caption term."""
    model.eval()  # no dropout; the Gumbel noise is re-seeded below
    phrases = ["red", None, "blue", "green"]
    a, b = batch(phrases=phrases), batch(phrases=phrases)
    b["fbank"][1] = b["fbank"][1] + 3.0
    with torch.no_grad():
        torch.manual_seed(0)
        out_a = model(a)
        torch.manual_seed(0)
        out_b = model(b)
    assert out_a["caption"].item() == pytest.approx(out_b["caption"].item(), rel=1e-6)
    assert out_a["acl_i"].item() != pytest.approx(out_b["acl_i"].item(), rel=1e-6)
    c = batch(phrases=phrases)
    c["fbank"][2] = c["fbank"][2] + 3.0  # a phrased item: the caption term moves
    with torch.no_grad():
        torch.manual_seed(0)
        out_c = model(c)
    assert out_c["caption"].item() != pytest.approx(out_a["caption"].item(), rel=1e-6)
    model.train()


def test_phrase_embeddings_are_clipseg_text_features_of_the_prompt(model):
    tokens = model.tokenizer(["A photo of red"], return_tensors="pt")
    with torch.no_grad():
        expected = model.grounder.clip.get_text_features(**tokens).pooler_output[0]
    assert torch.allclose(model.phrase_embeddings(["red", "blue", "red"])[2], expected, atol=1e-6)


def test_authors_checkpoint_format_loads(model, tmp_path):
    """`{'audio_proj', 'masker_i'}` with ACL-SSL's module names (written out by hand) loads strictly."""
    d, t = model.audio_proj.fc2.out_features, model.audio_proj.fc1.in_features
    shapes = {
        "fc1.weight": (t, t),
        "fc1.bias": (t,),
        "fc2.weight": (d, t),
        "fc2.bias": (d,),
        "fga.un_models.0.embed.weight": (d, d, 1),
        "fga.un_models.0.embed.bias": (d,),
        "fga.un_models.0.feature_reduce.weight": (1, d, 1),
        "fga.un_models.0.feature_reduce.bias": (1,),
        "fga.pp_models.0.embed_X.weight": (d, d, 1),
        "fga.pp_models.0.embed_X.bias": (d,),
        "fga.pp_models.0.embed_Y.weight": (d, d, 1),
        "fga.pp_models.0.embed_Y.bias": (d,),
        "fga.reduce_potentials.0.weight": (1, 2, 1),
    }
    gen = torch.Generator().manual_seed(3)
    state = {
        "audio_proj": {k: torch.randn(s, generator=gen) for k, s in shapes.items()},
        "masker_i": {"w": torch.tensor(7.0), "b": torch.tensor(-2.0)},
    }
    torch.save(state, tmp_path / "Param_best.pth")
    before = {k: v.clone() for k, v in model.trainable_state()["audio_proj"].items()}
    try:
        acl.load_acl_params(model, tmp_path / "Param_best.pth")
        assert model.masker_i.w.item() == 7.0 and model.masker_i.b.item() == -2.0
        assert torch.equal(
            model.audio_proj.fga.reduce_potentials[0].weight, state["audio_proj"]["fga.reduce_potentials.0.weight"]
        )
        assert set(model.trainable_state()) == {"audio_proj", "masker_i"}
        with pytest.raises(TrainError, match="exactly"):
            model.load_trainable_state({"audio_proj": state["audio_proj"]})
    finally:
        model.audio_proj.load_state_dict(before)
        model.masker_i.load_state_dict({"w": torch.tensor(1.0), "b": torch.tensor(0.5)})


def test_heatmap_is_sigmoid_of_resized_logits_plus_b_over_w(model):
    model.eval()
    x = batch(n=2, seed=5)
    with torch.no_grad():
        maps = model.heatmaps(x["image"], x["fbank"])
        audio = model.encode_audio(x["fbank"])
        logits = model.grounder(pixel_values=x["image"], conditional_embeddings=audio).logits[:, None]
        expected = torch.sigmoid(F.interpolate(logits, size=(224, 224), mode="bicubic") + 0.5 / 1.0)[:, 0]
    assert maps.shape == (2, 224, 224)
    assert torch.allclose(maps, expected, atol=1e-5)
    model.train()


def test_fbank_is_fitted_with_silence():
    mel = torch.zeros(10, 128).numpy()
    fitted = acl.fit_fbank(mel, 16)
    assert fitted.shape == (16, 128) and (fitted[10:] == acl.MEL_PAD_VALUE).all() and (fitted[:10] == 0).all()
    assert acl.fit_fbank(mel, 4).shape == (4, 128)


def test_train_acl_config_section():
    cfg = parse_config({"train": {"method": "acl", "acl": {"caption_loss": True, "acl_f_target": "paper"}}})
    assert cfg.train.acl.caption_loss and cfg.train.acl.acl_f_target == "paper"
    assert cfg.train.acl.mask_init_w == 10.0 and cfg.train.acl.prompt == "A photo of {}"
    with pytest.raises(Exception, match="train.acl.acl_f_targt"):
        parse_config({"train": {"acl": {"acl_f_targt": "paper"}}})


def test_mask_noise_depends_only_on_the_pair_keys():
    keys = torch.tensor([11, 2**32 - 1, 7, 123456789])
    noise = acl.pair_uniform(keys, keys, (8, 8))
    assert noise.shape == (4, 4, 8, 8) and 0 < noise.min() and noise.max() < 1
    assert abs(noise.mean().item() - 0.5) < 0.05
    order = torch.tensor([2, 0, 3, 1])
    assert torch.equal(acl.pair_uniform(keys[order], keys[order], (8, 8)), noise[order][:, order])
    assert not torch.equal(noise[0, 1], noise[1, 0])  # (image a, audio b) is not (image b, audio a)


def test_keyed_batch_loss_does_not_depend_on_the_order(model):
    model.eval()  # no dropout; the Gumbel noise comes from the keys
    x = batch(phrases=["red", None, "blue", "green"])
    x["noise_key"] = torch.tensor([5, 17, 3, 99])
    order = [2, 0, 3, 1]
    y = {
        "image": x["image"][order],
        "fbank": x["fbank"][order],
        "noise_key": x["noise_key"][order],
        "phrase": [x["phrase"][i] for i in order],
    }
    with torch.no_grad():
        a, b = model(x), model(y)
    for term in ("acl_i", "acl_f", "area_reg", "caption", "loss"):
        assert a[term].item() == pytest.approx(b[term].item(), rel=1e-5), term
    model.train()


def test_embeddings_are_the_audio_and_each_images_own_masked_embedding(model):
    """`ACLMethod.embeddings`: the audio-driven embedding A and v_i, the CLIP image embedding of the image masked by
    its own audio's hard mask (the pair L_ACL_I compares); a batch gives each item what it gives alone."""
    model.eval()
    x = batch(n=3, seed=7)
    with torch.no_grad():
        audio, image = model.embed(x["image"], x["fbank"])
        assert torch.allclose(audio, model.encode_audio(x["fbank"]), atol=1e-6)
        for i in range(3):
            a_i, v_i = model.embed(x["image"][i : i + 1], x["fbank"][i : i + 1])
            assert torch.allclose(image[i], v_i[0], atol=1e-5) and torch.allclose(audio[i], a_i[0], atol=1e-6)
        plain = model.grounder.clip.get_image_features(pixel_values=x["image"])
        plain = plain.pooler_output if hasattr(plain, "pooler_output") else plain
    assert image.shape == plain.shape and not torch.allclose(image, plain)
    model.train()
