"""BEATs encoder: the upstream checkpoint layout loads strictly, shapes, shared relative bias, bucket formula."""

from __future__ import annotations

import hashlib

import pytest
import torch

from is4.trainers.beats import TINY_BEATS_CFG, BEATs, BEATsConfig, BEATsError, build_tiny_beats, load_beats
from tests.support import TinyModels

# The production tiny config (every optional part of the released AS2M fine-tuned checkpoint switched on).
FULL = {**TINY_BEATS_CFG, "layer_wise_gradient_decay_ratio": 0.6}  # upstream keys this encoder does not use are ignored
PLAIN = {**FULL, "relative_position_embedding": False, "gru_rel_pos": False, "finetuned_model": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


def upstream_state_dict(cfg: dict) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of microsoft/unilm `beats/BEATs.py` + `backbone.py`, written
    out by hand from that code (not derived from our module)."""
    e, d, f, h = (
        cfg["embed_dim"],
        cfg["encoder_embed_dim"],
        cfg["encoder_ffn_embed_dim"],
        cfg["encoder_attention_heads"],
    )
    k, g, p = cfg["conv_pos"], cfg["conv_pos_groups"], cfg["input_patch_size"]
    shapes = {
        "patch_embedding.weight": (e, 1, p, p),
        "layer_norm.weight": (e,),
        "layer_norm.bias": (e,),
        "post_extract_proj.weight": (d, e),
        "post_extract_proj.bias": (d,),
        "encoder.pos_conv.0.bias": (d,),
        "encoder.pos_conv.0.weight_g": (1, 1, k),
        "encoder.pos_conv.0.weight_v": (d, d // g, k),
        "encoder.layer_norm.weight": (d,),
        "encoder.layer_norm.bias": (d,),
    }
    for i in range(cfg["encoder_layers"]):
        pre = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{pre}self_attn.{proj}.weight"] = (d, d)
            shapes[f"{pre}self_attn.{proj}.bias"] = (d,)
        if cfg["relative_position_embedding"]:  # layer 0's module, shared: listed under every layer
            shapes[f"{pre}self_attn.relative_attention_bias.weight"] = (cfg["num_buckets"], h)
        if cfg["gru_rel_pos"]:
            shapes[f"{pre}self_attn.grep_linear.weight"] = (8, d // h)
            shapes[f"{pre}self_attn.grep_linear.bias"] = (8,)
            shapes[f"{pre}self_attn.grep_a"] = (1, h, 1, 1)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{pre}{norm}.weight"] = (d,)
            shapes[f"{pre}{norm}.bias"] = (d,)
        shapes[f"{pre}fc1.weight"], shapes[f"{pre}fc1.bias"] = (f, d), (f,)
        shapes[f"{pre}fc2.weight"], shapes[f"{pre}fc2.bias"] = (d, f), (d,)
    if cfg["finetuned_model"]:
        shapes["predictor.weight"], shapes["predictor.bias"] = (cfg["predictor_class"], d), (cfg["predictor_class"],)
    gen = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=gen) * 0.1 for name, shape in shapes.items()}
    if cfg["relative_position_embedding"]:  # one shared tensor, as the real state dict holds
        shared = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
        for i in range(cfg["encoder_layers"]):
            state[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"] = shared
    return state


@pytest.mark.parametrize(("cfg", "count"), [(FULL, 252), (PLAIN, 202)])
def test_upstream_state_dict_loads_strictly(tmp_path, cfg, count):
    state = upstream_state_dict(cfg)
    assert len(state) == count  # the key counts of the real module's state dicts (with / without the options)
    torch.save({"cfg": cfg, "model": state}, tmp_path / "BEATs.pt")
    model = load_beats(tmp_path / "BEATs.pt", drop_predictor=False)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_missing_key_is_one_clear_error(tmp_path):
    state = upstream_state_dict(FULL)
    del state["encoder.layers.3.fc1.weight"]
    torch.save({"cfg": FULL, "model": state}, tmp_path / "bad.pt")
    with pytest.raises(BEATsError, match=r"bad\.pt.*missing.*encoder\.layers\.3\.fc1\.weight"):
        load_beats(tmp_path / "bad.pt")
    torch.save({"model": state}, tmp_path / "nocfg.pt")
    with pytest.raises(BEATsError, match="nocfg.pt: not a BEATs checkpoint"):
        load_beats(tmp_path / "nocfg.pt")


def test_shapes_shared_bias_and_taps():
    model = BEATs(BEATsConfig.from_dict(FULL)).eval()
    fbank = torch.randn(2, 998, 128) * 4 - 6  # 10 s of raw log-mel
    with torch.no_grad():
        last, taps = model(fbank)
    assert last.shape == (2, 496, 16)  # 62 × 8 patches of 16×16, as upstream for 998 frames
    assert taps.shape == (2, 496, 48)  # layers 3, 7, 11 concatenated
    assert torch.isfinite(taps).all()
    shared = model.encoder.layers[0].self_attn.relative_attention_bias
    assert model.encoder.layers[7].self_attn.relative_attention_bias is shared
    with torch.no_grad():
        one_tap = model(fbank, taps=(11,))[1]
    assert torch.equal(one_tap, taps[..., 32:])  # the concatenation keeps the layer order


def test_relative_position_buckets_follow_the_upstream_formula():
    attention = BEATs(BEATsConfig(encoder_layers=1, relative_position_embedding=True)).encoder.layers[0].self_attn
    # num_buckets 320, max_distance 1280: 160 buckets per direction, distances < 80 exact, then log-spaced.
    relative = torch.tensor([0, 1, -1, 79, -79, -80, -1279, -5000, 80, 5000])
    expected = [0, 161, 1, 239, 79, 80, 159, 159, 240, 319]
    assert attention._buckets(relative).tolist() == expected


def test_tiny_beats_is_byte_identical_and_loads(tiny_models: TinyModels, tmp_path):
    digests = [
        hashlib.sha256((out / "beats.pt").read_bytes()).hexdigest()
        for out in (tiny_models.path("beats"), build_tiny_beats(tmp_path / "b", 0))
    ]
    assert digests[0] == digests[1]
    model = load_beats(tiny_models.path("beats"))
    assert model.predictor is None  # ACL drops the AudioSet head
    assert len(model.encoder.layers) == 12
