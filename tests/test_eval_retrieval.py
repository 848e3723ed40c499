"""Retrieval and alignment from an embeddings file, against per-query loops written from the papers' definitions.

No public code exists for the papers' retrieval protocol (the note's §4.1): the loop below is written from JSA
§4.2 ("Recall@K ... using the category labels from the top-K retrieved audio or images"): per query, cosine
similarity to every pool item, ranked best first (ties by pool order), a hit when one of the top K has the query's
class. Chance: the hypergeometric probability that K draws without replacement from the pool miss the query's class.
Alignment: CyCLIP's mean positive-pair cosine (utils/hypersphere_labels.py); magnitude: DrML's gap norms
(analyze_gap.ipynb `compute_gap_statistics`), mean and (population) std.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from is4.cli import app
from is4.pipeline.evaluation import retrieval
from is4.pipeline.evaluation.formats import load_ground_truth


def make_vggss(tmp_path, n: int = 120, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = [f"class {i % 9}" for i in range(n)]
    ids = [f"{'abcdefghijk'[: 11 - len(str(i))]}{i}_{i:06d}" for i in range(n)]
    (tmp_path / "vggss.json").write_text(
        json.dumps([{"file": f, "class": c, "bbox": [[0.1, 0.1, 0.5, 0.5]]} for f, c in zip(ids, classes)])
    )
    centres = rng.standard_normal((9, dim))
    audio = centres[np.arange(n) % 9] + rng.standard_normal((n, dim)) * 1.5
    image = centres[np.arange(n) % 9] + rng.standard_normal((n, dim)) * 1.5
    image[7] = image[3]  # a tie in similarity for every audio query
    order = rng.permutation(n)  # the file's rows in another order than the ground truth
    np.savez(
        tmp_path / "emb.npz",
        ids=np.array(ids)[order],
        **{"audio/backbone": audio[order], "image/backbone": image[order]},
        **{"audio/projected": audio[order] * 2 + 1, "image/projected": image[order] - 1},
    )
    return ids, classes, {"backbone": (audio, image), "projected": (audio * 2 + 1, image - 1)}


def loop_recall(queries, pool, labels, k):
    hits = 0
    for q in range(len(queries)):
        sims = [float(np.dot(queries[q], p) / (np.linalg.norm(queries[q]) * np.linalg.norm(p))) for p in pool]
        ranked = sorted(range(len(pool)), key=lambda j: (-sims[j], j))
        hits += any(labels[j] == labels[q] for j in ranked[:k])
    return 100.0 * hits / len(queries)


def loop_chance(labels, k):
    n, total = len(labels), 0.0
    for label in labels:
        same = labels.count(label)
        miss = 1.0
        for i in range(k):
            miss *= (n - same - i) / (n - i)
        total += 1 - miss
    return 100.0 * total / n


def test_retrieval_equals_the_per_query_loop(tmp_path):
    ids, classes, kinds = make_vggss(tmp_path)
    truth = load_ground_truth(tmp_path)
    result = retrieval.retrieval(truth, tmp_path / "emb.npz")
    assert (result["instances"], result["classes"]) == (120, 9)
    for kind, (audio, image) in kinds.items():
        for k in (1, 5, 10):
            assert result[kind][f"a2i_r{k}"] == pytest.approx(loop_recall(audio, image, classes, k), abs=1e-9)
            assert result[kind][f"i2a_r{k}"] == pytest.approx(loop_recall(image, audio, classes, k), abs=1e-9)
    for k in (1, 5, 10):
        assert result["chance"][f"r{k}"] == pytest.approx(loop_chance(classes, k), abs=1e-9)
    assert result["backbone"] != result["projected"]


def test_retrieval_pool_follows_the_id_list(tmp_path):
    ids, classes, kinds = make_vggss(tmp_path)
    (tmp_path / "ours_vggss.txt").write_text(
        "".join(f"{i[:11]}_{int(i[12:]) * 1000}_{(int(i[12:]) + 10) * 1000}\n" for i in ids[:50])
    )
    truth = load_ground_truth(tmp_path, ids="auto")
    result = retrieval.retrieval(truth, tmp_path / "emb.npz")
    audio, image = kinds["backbone"]
    assert result["instances"] == 50
    assert result["backbone"]["a2i_r5"] == pytest.approx(loop_recall(audio[:50], image[:50], classes[:50], 5), abs=1e-9)


def test_alignment_and_magnitude(tmp_path):
    ids, classes, kinds = make_vggss(tmp_path)
    result = retrieval.alignment(load_ground_truth(tmp_path), tmp_path / "emb.npz")
    for kind, (audio, image) in kinds.items():
        cos, gaps = [], []
        for a, v in zip(audio, image):
            a, v = a / np.linalg.norm(a), v / np.linalg.norm(v)
            cos.append(float(a @ v))
            gaps.append(float(np.sqrt(np.sum((v - a) ** 2))))
        mean = sum(gaps) / len(gaps)
        std = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
        assert result[kind]["alignment"] == pytest.approx(sum(cos) / len(cos), abs=1e-12)
        assert result[kind]["magnitude_mean"] == pytest.approx(mean, abs=1e-12)
        assert result[kind]["magnitude_std"] == pytest.approx(std, abs=1e-12)
        # unit vectors: |v − a|² = 2 − 2 cos, so the two columns are tied on the same pairs
        assert np.mean(np.square(gaps)) == pytest.approx(2 - 2 * result[kind]["alignment"], abs=1e-9)


def test_eval_command_retrieval_and_bad_embeddings(tmp_path):
    make_vggss(tmp_path)
    out = tmp_path / "r.json"
    args = ["eval", "--release", str(tmp_path), "--task", "retrieval", "--embeddings", str(tmp_path / "emb.npz")]
    result = CliRunner().invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "retrieval over 120 instances" in result.output and "chance" in result.output
    assert json.loads(out.read_text())["backbone"]["a2i_r1"] >= 0
    result = CliRunner().invoke(app, [*args[:-2], "--task", "alignment", "--embeddings", str(tmp_path / "emb.npz")])
    assert result.exit_code == 0 and "magnitude" in result.output, result.output

    np.savez(tmp_path / "bad.npz", ids=np.array(["x"]), audio=np.zeros((1, 4)), image=np.zeros((1, 4)))
    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and "no embeddings for 120 of 120 instances" in result.output
    result = CliRunner().invoke(app, args[:-2])
    assert result.exit_code == 2 and "--task retrieval needs --embeddings FILE" in result.output


def test_embeddings_of_an_alignment_model_and_of_released_weights(tmp_path):
    """`TrainMethod.embeddings` for the alignment method: the backbone features s_A pools (average-pooled image map,
    max-pooled audio) and the projected ones; weights without heads (the authors' release) give backbone only."""
    import torch
    import yaml

    from is4.config import TrainConfig
    from is4.trainers import synthetic
    from is4.trainers.method import get_method
    from is4.trainers.predict import release_inputs, write_embeddings

    release = synthetic.write_release(tmp_path / "rel", 4)
    section = synthetic.tiny_train_section(None, alignment__width=8)
    method = get_method(TrainConfig.model_validate(section, strict=False), 0)
    model = method.build_model().eval()
    out = tmp_path / "emb.npz"
    assert write_embeddings(method, model, release, out) == ["backbone", "projected"]
    with np.load(out) as data:
        ids = list(data["ids"])
        iid, frame_path, wav_path = release_inputs(release)[2]
        assert ids[2] == iid and data["audio/projected"].shape == (8, 32)
        from is4.trainers.data import read_frame, read_wav

        item = method.collate([method.eval_item(read_frame(frame_path, "f"), *read_wav(wav_path, "w"))])
        with torch.no_grad():
            v = model.encode_image(item["frame"]).mean(dim=(2, 3))[0].numpy()
            a = model.encode_audio(item["spec"])[0].numpy()
        np.testing.assert_allclose(data["image/backbone"][2], v, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(data["audio/backbone"][2], a, rtol=1e-5, atol=1e-6)

    # the authors' format (no heads) through the CLI: backbone features only, and it says so
    method.export(model, tmp_path / "ours.pth.tar")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": section}))
    res = CliRunner().invoke(
        app,
        ["embed", "--weights", str(tmp_path / "ours.pth.tar"), "--config", str(config), "--release", str(release)]
        + ["--out", str(tmp_path / "authors.npz")],
    )
    assert res.exit_code == 0, res.output
    assert "backbone features only" in res.output
    with np.load(tmp_path / "authors.npz") as data:
        assert sorted(data.files) == ["audio/backbone", "ids", "image/backbone"]
    res = CliRunner().invoke(
        app, ["eval", "--release", str(release), "--task", "retrieval", "--embeddings", str(tmp_path / "authors.npz")]
    )
    assert res.exit_code == 0 and "backbone" in res.output, res.output
