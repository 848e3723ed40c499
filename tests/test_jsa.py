"""JSA's parts against re-implementations written from the paper's equations (S004 Eq. 3-13), its parameter count,
its spectrogram, its presets and the official code's checkpoint names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from is4.config import JSAConfig, TrainConfig, parse_config
from is4.trainers import jsa
from is4.trainers.method import TrainError, get_method


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.dot(x, y) / (x.norm() * y.norm()))


def test_contrastive_loss_is_eq7_with_the_false_negatives_left_out() -> None:
    g = torch.Generator().manual_seed(0)
    p_v, p_a = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    exclude = torch.zeros(5, 5, dtype=torch.bool)
    exclude[0, 2] = exclude[2, 0] = exclude[3, 4] = exclude[4, 3] = True
    tau = 0.03

    def s(x, y):
        return math.exp(_cos(x, y) / tau)

    total = 0.0
    for i in range(5):
        keep = [j for j in range(5) if not exclude[i, j]]
        total += math.log(s(p_v[i], p_a[i]) / sum(s(p_v[i], p_a[j]) for j in keep))
        total += math.log(s(p_v[i], p_a[i]) / sum(s(p_v[j], p_a[i]) for j in keep))
    expected = -total / 5
    assert float(jsa.contrastive_loss(p_v, p_a, tau, exclude)) == pytest.approx(expected, rel=1e-4)
    # without the mask the loss is larger (the excluded pairs were negatives)
    assert float(jsa.contrastive_loss(p_v, p_a, tau)) > expected


def _knn(sim: torch.Tensor, i: int, k: int, include_self: bool) -> set[int]:
    order = sorted((j for j in range(len(sim)) if include_self or j != i), key=lambda j: -float(sim[i, j]))
    return set(order[:k])


def test_false_negative_mask_is_reciprocal_knn_in_both_modalities() -> None:
    # two clusters in each modality; items 0-2 together in both, 3 with them in image only
    p_v = torch.tensor([[1.0, 0.0], [0.98, 0.2], [0.95, 0.3], [0.9, -0.4], [0.0, 1.0], [0.1, 0.99]])
    p_a = torch.tensor([[1.0, 0.1], [0.97, 0.25], [0.96, -0.2], [-0.3, 1.0], [0.05, 1.0], [0.2, 0.98]])
    for include_self in (False, True):
        k = 3
        got = jsa.false_negatives(p_v, p_a, k, include_self)
        sims = [F.normalize(p, dim=1) @ F.normalize(p, dim=1).T for p in (p_v, p_a)]
        for i in range(6):
            for j in range(6):
                recip = [j in _knn(s, i, k, include_self) and i in _knn(s, j, k, include_self) for s in sims]
                assert bool(got[i, j]) == (i != j and all(recip)), (include_self, i, j)
        assert torch.equal(got, got.T) and not got.diagonal().any()
    mask = jsa.false_negatives(p_v, p_a, 2)
    assert mask[0, 1] and mask[1, 0] and not mask[0, 3] and not mask[0, 4]
    # with the item counted in its own list (the code), k = 2 leaves one real neighbour: fewer pairs masked
    assert jsa.false_negatives(p_v, p_a, 2, include_self=True).sum() <= mask.sum()


def test_slot_attention_weights_sum_as_eq3_and_eq4_say() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 2, 8, generator=g), torch.randn(3, 11, 8, generator=g)
    attn = jsa.key_normalised_attention(q, k, 8**-0.5, eps=0.0)
    assert torch.allclose(attn.sum(dim=-1), torch.ones(3, 2))  # Eq. 4: each slot's weights over the keys sum to 1
    soft = torch.einsum("bid,bjd->bij", q, k).mul(8**-0.5).softmax(dim=1)
    assert torch.allclose(soft.sum(dim=1), torch.ones(3, 11))  # Eq. 3: over the slots, per key
    assert torch.allclose(attn, soft / soft.sum(-1, keepdim=True))


def test_match_div_recon_losses_follow_the_equations() -> None:
    g = torch.Generator().manual_seed(2)
    ca_av, ia_vv = torch.rand(4, 9, generator=g), torch.rand(4, 9, generator=g)
    ca_va, ia_aa = torch.rand(4, 5, generator=g), torch.rand(4, 5, generator=g)
    norms = ((ca_av - ia_vv) ** 2).sum(1) + ((ca_va - ia_aa) ** 2).sum(1)
    assert float(jsa.match_loss(ca_av, ia_vv, ca_va, ia_aa)) == pytest.approx(float(norms.mean()), rel=1e-5)
    mse = F.mse_loss(ca_av, ia_vv) + F.mse_loss(ca_va, ia_aa)
    assert float(jsa.match_loss(ca_av, ia_vv, ca_va, ia_aa, "mean")) == pytest.approx(float(mse), rel=1e-5)
    ca, ia = ca_av.clone().requires_grad_(), ia_vv.clone().requires_grad_()
    jsa.match_loss(ca, ia, ca_va, ia_aa).backward()
    assert ca.grad is not None and ca.grad.abs().sum() > 0 and ia.grad is None  # sg(ia)

    slots_v, slots_a = torch.randn(4, 2, 6, generator=g), torch.randn(4, 2, 6, generator=g)
    expected = sum(max(0.0, _cos(s[b, 0], s[b, 1])) for s in (slots_v, slots_a) for b in range(4)) / 4
    assert float(jsa.diversity_loss(slots_v, slots_a)) == pytest.approx(expected, rel=1e-5)

    v_hat = torch.randn(4, 9, 6, generator=g).requires_grad_()
    v = torch.randn(4, 9, 6, generator=g).requires_grad_()
    a_hat, a = torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g).requires_grad_()
    want = (((v_hat - v) ** 2).sum((1, 2)) + ((a_hat - a) ** 2).sum((1, 2))).mean()
    assert float(jsa.recon_loss(v_hat, v, a_hat, a).detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    jsa.recon_loss(v_hat, v, a_hat, a).backward()
    assert v.grad is not None and v.grad.abs().sum() > 0  # the paper: gradient reaches the encoder features
    v.grad = None
    jsa.recon_loss(v_hat, v, a_hat, a, "mean", stop_gradient=True).backward()
    assert v.grad is None  # the code: detached target


def test_parameter_count_is_the_papers() -> None:
    for cfg in (JSAConfig(), JSAConfig(preset="jsa_official")):
        counts = jsa.parameter_counts(jsa.JSAModel(cfg))
        assert counts == {"inference": 29_708_288, "training": 31_818_498}  # S004 App. A / Table 7
    model = jsa.JSAModel(JSAConfig())
    assert sum(p.numel() for p in model.slot_attn.parameters()) == 6_836_224
    assert sum(p.numel() for p in model.img_decoder.parameters()) == 1_054_721
    assert sum(p.numel() for p in model.aud_decoder.parameters()) == 1_055_489
    shared = jsa.parameter_counts(jsa.JSAModel(JSAConfig(slot_weights="shared")))
    assert shared["inference"] == 29_708_288 - 3_417_088  # one set of q/k/v, GRU, MLP and LNs fewer


def test_spectrogram_is_the_stft_of_the_centre_five_seconds() -> None:
    rng = np.random.default_rng(0)
    wav = (0.3 * rng.standard_normal(16000 * 8)).astype(np.float32)
    spec = jsa.log_spectrogram(wav, 16000, JSAConfig())
    assert spec.shape == (1, 257, 501)
    x = np.clip(wav[24000:104000], -1, 1).astype(np.float64)  # centre 5 s of 8 s, clipped to [-1, 1]
    padded = np.pad(x, 256, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)  # periodic Hann
    frames = np.stack([padded[i * 160 : i * 160 + 512] * window for i in range(501)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    assert np.allclose(np.exp(spec[0].numpy() * 12), power.T + 1e-7, rtol=1e-3, atol=1e-2)  # float32 STFT
    short = jsa.centre_window(np.arange(3, dtype=np.float32), 5 / 16000)
    assert short.tolist() == [0, 1, 2, 0, 1]  # tiled from the start when shorter
    with pytest.raises(ValueError, match="22050 Hz"):
        jsa.log_spectrogram(wav, 22050, JSAConfig())


def test_presets_and_the_method_optimiser() -> None:
    cfg = parse_config({"train": {"method": "jsa", "jsa": {"preset": "jsa_official", "iqr_alpha": 0.5}}}).train
    official = cfg.jsa
    assert (official.infer_sharpening, official.squared_error, official.fn_include_self) == (0.1, "mean", True)
    assert official.iqr_alpha == 0.5  # an explicit key wins over the preset
    paper = JSAConfig()
    assert (paper.iqr_alpha, paper.infer_sharpening, paper.squared_error, paper.augment) == (0.6, 1.0, "sum", "none")
    with pytest.raises(Exception, match="preset"):
        parse_config({"train": {"jsa": {"preset": "official"}}})
    resolved = get_method(cfg, 0).cfg
    assert (resolved.optimizer, resolved.lr, resolved.weight_decay) == ("adamw", 5e-5, 1e-2)
    other = get_method(TrainConfig(method="alignment", lr=1e-3), 0).cfg
    assert (other.optimizer, other.lr, other.weight_decay) == ("adam", 1e-3, 0.0)
    assert get_method(TrainConfig(), 0, "jsa").cfg.optimizer == "adamw"  # `--method jsa` gets jsa's optimiser


def _tiny(**over) -> JSAConfig:
    base = {"image_size": 32, "width": 8, "blocks": [1, 1, 0, 0], "strides": [1, 2, 1, 1], "dim": 16}
    return JSAConfig(**{**base, "audio_seconds": 0.5, "iterations": 2, **over})


def test_heatmap_is_the_iqr_of_the_normalised_maps() -> None:
    cfg = _tiny(heatmap_size=40)
    torch.manual_seed(0)
    model = jsa.JSAModel(cfg).eval()
    frames, specs = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 257, 51)
    maps = model.heatmaps(frames, specs)
    assert maps.shape == (2, 40, 40) and float(maps.min()) == 0.0 and float(maps.max()) == pytest.approx(1.0)
    v, a, (h, w) = model.encode(frames, specs)
    out = model.slot_attn(v, a)
    sa = model.slot_attn

    def up(q, k):
        m = jsa.key_normalised_attention(q, k, sa.scale)[:, 0].view(2, 1, h, w)
        m = F.interpolate(m, size=(40, 40), mode="bicubic", align_corners=False)
        low, high = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
        return (m - low) / (high - low)

    iqr = 0.6 * up(out["q_a"], out["k_v"]) + 0.4 * up(out["q_v"], out["k_v"])
    low, high = iqr.amin((2, 3), keepdim=True), iqr.amax((2, 3), keepdim=True)
    assert torch.allclose(maps, ((iqr - low) / (high - low))[:, 0], atol=1e-5)
    emb = model.embeddings(frames, specs)
    assert emb["image"].shape == (2, 16) and torch.allclose(emb["image"], F.normalize(out["slots_v"][:, 0], dim=-1))


def test_official_state_dict_names_round_trip(tmp_path) -> None:
    method = get_method(TrainConfig(method="jsa", jsa=_tiny()), 0)
    torch.manual_seed(0)
    model = method.build_model()
    path = tmp_path / "latest.pth"
    method.export(model, path)
    saved = torch.load(path, weights_only=True)["model"]
    for name in (
        "imgnet.conv1.weight",
        "imgnet.proj.weight",
        "audnet.conv1_1.weight",
        "audnet.proj.0.bias",
        "slot_attn.slots",
        "slot_attn.mask_token_aud",
        "slot_attn.aud_gru.weight_hh",
        "slot_attn.img_mlp.2.weight",
        "slot_attn.img_norm_pre_ff.bias",
        "img_decoder.pos_emb.row_embed.weight",
        "aud_decoder.mlp.6.weight",
    ):
        assert name in saved, name
    assert not any(k.startswith(("img_proj", "aud_proj")) or "conv1_a" in k for k in saved)
    torch.save({"model": {f"module.{k}": v for k, v in saved.items()}, "epoch": 3}, tmp_path / "vggss_best.pth")
    torch.manual_seed(1)
    fresh = method.build_model()
    method.import_checkpoint(fresh, tmp_path / "vggss_best.pth")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    del saved["slot_attn.slots"]
    torch.save({"model": saved}, tmp_path / "bad.pth")
    with pytest.raises(TrainError, match="missing"):
        method.import_checkpoint(fresh, tmp_path / "bad.pth")
    wide = get_method(TrainConfig(method="jsa", jsa=_tiny(dim=24)), 0)
    with pytest.raises(TrainError, match="has shape"):
        wide.import_checkpoint(wide.build_model(), path)
