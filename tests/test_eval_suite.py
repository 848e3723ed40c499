"""`is4 eval --suite`: a paper's tables from a folder of benchmark files, against the single-task commands.

The folder is shaped like the authors' `metadata/` (small files written here: vggss.json with a clipped-away box,
ours_vggss.txt in the ms form, vggss_heard_test.csv, vggss_test_plus_silent.csv, s4_seg.json with its masks); the
predictions folder holds one `.npz` per benchmark, the negative pairs' and the negative conditions' maps in the
same files; the embeddings folder `vggss.npz`. Every number the suite prints or writes must be the one the
single-task command gives, and the published figures must stand beside it with their source table.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from is4.cli import app
from is4.pipeline.evaluation import suites
from is4.pipeline.evaluation.formats import FORMAT, vggss_aliases
from is4.pipeline.evaluation.tasks import TASK, TASKS
from tests.test_eval_extended import make_extended
from tests.test_eval_robust import make_robust


def make_folders(tmp_path):
    bench, preds, emb = tmp_path / "metadata", tmp_path / "preds", tmp_path / "emb"
    for folder in (bench, preds, emb):
        folder.mkdir()
    ids, _, _, _ = make_extended(bench, n_pos=60, n_neg=40)
    (bench / "maps.npz").rename(preds / "vggss.npz")
    (bench / "ours_vggss.txt").write_text("\n".join(vggss_aliases(i)[0] for i in ids[:45]) + "\n")
    (bench / "vggss_heard_test.csv").write_text("\n".join(ids[::2]) + "\n")
    make_robust(bench, n=20)
    (bench / "robust.npz").rename(preds / "avsbench-s4.npz")
    rng = np.random.default_rng(4)
    arrays: dict[str, Any] = {
        "audio/backbone": rng.standard_normal((60, 8)),
        "image/backbone": rng.standard_normal((60, 8)),
    }
    np.savez(emb / "vggss.npz", ids=np.array(ids), **arrays)
    return bench, preds, emb


def single(args, tmp_path) -> dict:
    out = tmp_path / "single.json"
    result = CliRunner().invoke(app, ["eval", *args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_suites_are_declared_on_the_registry():
    figures = suites.read_figures()
    for suite in suites.SUITES:
        numbers = {t.number for t in suite.tables}
        assert any(f.paper == suite.paper and f.method == suite.method for f in figures), suite.name
        for table in suite.tables:
            for column in table.columns:
                assert column.run.task in FORMAT[column.run.benchmark].tasks, (suite.name, column.key)
                assert set(column.metrics) <= {k for k, _ in TASK[column.run.task].metrics}, column.key
        for fig in figures:  # every figure of the paper lands in a column of one of its tables
            if fig.paper == suite.paper:
                assert fig.table in numbers, fig
                table = next(t for t in suite.tables if t.number == fig.table)
                assert any(c.key == fig.benchmark and fig.metric in c.metrics for c in table.columns), fig


def test_every_task_declares_a_scorer_a_suite_can_import():
    for task in TASKS:
        module, _, name = task.scorer.partition(":")
        assert callable(getattr(importlib.import_module(module), name, None)), task.name


def test_tpami_suite_prints_ours_beside_the_published_figures(tmp_path):
    bench, preds, emb = make_folders(tmp_path)
    out, md = tmp_path / "tpami.json", tmp_path / "tpami.md"
    args = ["--release", str(bench), "--predictions", str(preds), "--embeddings", str(emb)]
    result = CliRunner().invoke(app, ["eval", "--suite", "tpami", *args, "--output", str(out), "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    runs = report["runs"]

    # the same numbers as the single-task commands, at full precision
    loc = single(["--release", str(bench / "vggss.json"), "--predictions", str(preds / "vggss.npz")], tmp_path)
    assert {k: runs["vggss localisation"]["result"][k] for k in ("ciou", "auc", "ciou_adaptive")} == {
        k: loc[k] for k in ("ciou", "auc", "ciou_adaptive")
    }
    lvs = single(
        ["--release", str(bench), "--benchmark", "vggss", "--predictions", str(preds / "vggss.npz")]
        + ["--ids", str(bench / "ours_vggss.txt"), "--maps", "lvs"],
        tmp_path,
    )
    assert runs["vggss localisation ids=ours_vggss.txt maps=lvs"]["result"]["ciou"] == lvs["ciou"]
    assert lvs["instances"] == 45
    ext = single(
        [
            "--release",
            str(bench),
            "--benchmark",
            "vggss",
            "--task",
            "extended",
            "--predictions",
            str(preds / "vggss.npz"),
        ],
        tmp_path,
    )
    assert {k: runs["vggss extended"]["result"][k] for k in ("ap", "max_f1", "loc_acc")} == {
        k: ext[k] for k in ("ap", "max_f1", "loc_acc")
    }
    ret = single(
        [
            "--release",
            str(bench),
            "--benchmark",
            "vggss",
            "--task",
            "retrieval",
            "--embeddings",
            str(emb / "vggss.npz"),
        ],
        tmp_path,
    )
    assert runs["vggss retrieval"]["result"]["backbone"] == ret["backbone"]
    seg = single(
        ["--release", str(bench), "--benchmark", "avsbench-s4", "--gt", "mask"]
        + ["--predictions", str(preds / "avsbench-s4.npz"), "--no-baselines"],
        tmp_path,
    )
    assert runs["avsbench-s4 segmentation gt=mask"]["result"]["miou"] == seg["miou"]
    # what the inputs do not allow is skipped, and says why
    assert runs["flickr localisation ids=flickr_test.csv"]["status"] == "skipped"
    assert runs["flickr localisation ids=flickr_test.csv"]["reason"] == f"no flickr box ground truth in {bench}"

    # the printed tables: ours, then the published figures with their source table
    text = result.output
    assert "TPAMI'25" in text and "Table 4: Extended Flickr / VGG-SS" in text
    assert f"{ext['ap']:.2f}" in text and f"{ret['backbone']['a2i_r1']:.2f}" in text
    assert "64.43" in text and "TPAMI'25 Table 4 (note §5.4)" in text
    assert "16.47" in text and "TPAMI'25 Table 5" in text and "chance" in text
    assert "ssl-tie" not in text  # other methods' figures only with --method all
    table4 = next(t for t in report["tables"] if t["table"] == "4")
    ours = next(r for r in table4["rows"] if r["name"] == "ours")
    assert ours["values"]["extended-vggss ap"] == ext["ap"]
    published = next(r for r in table4["rows"] if r["name"] == "alignment (NN sup. enc., no pre-vis)")
    assert published["values"]["extended-flickr ap"] == 64.43 and published["source"].startswith("TPAMI'25 Table 4")
    assert any("Flickr: skipped" in note for note in table4["notes"])

    # the Markdown has every table, ours and the published rows
    markdown = md.read_text()
    assert markdown.count("\n## ") == len(suites.SUITE["tpami"].tables)
    assert "| Ext. Flickr AP | Ext. Flickr max-F1 | Ext. Flickr LocAcc | Ext. VGG-SS AP |" in markdown
    assert f"| ours | {_cells(table4, 'ours')} |" in markdown
    assert "| alignment (NN sup. enc., no pre-vis) | 64.43 |" in markdown


def _cells(table: dict, name: str) -> str:
    row = next(r for r in table["rows"] if r["name"] == name)
    return " | ".join(row["cells"].get(f"{c['benchmark']} {c['metric']}", "-") for c in table["columns"])


def test_acl_suite_robust_and_jsa_suite_subsets(tmp_path):
    bench, preds, emb = make_folders(tmp_path)
    report = suites.run_suite("acl", bench, predictions=preds)
    robust = single(
        ["--release", str(bench), "--benchmark", "avsbench-s4", "--task", "robust"]
        + ["--predictions", str(preds / "avsbench-s4.npz")],
        tmp_path,
    )
    got = report["runs"]["avsbench-s4 robust gt=mask"]["result"]
    assert {k: got[k] for k in ("g_miou", "g_f", "g_fpr")} == {k: robust[k] for k in ("g_miou", "g_f", "g_fpr")}
    table5 = next(t for t in report["tables"] if t["table"] == "5")
    assert next(r for r in table5["rows"] if r["name"] == "ours")["cells"]["avsbench-s4 g_fpr"] == (
        f"{robust['g_fpr'] / 100:.3f}"  # the paper prints G-FPR as a fraction
    )
    acl = next(r for r in table5["rows"] if r["name"] == "acl (AV+LLM)")
    assert acl["cells"]["avsbench-s4 g_fpr"] == "0.024" and acl["source"] == "ACL-SSL Table 5 (note §7)"

    jsa = suites.run_suite("jsa", bench, predictions=preds, method="all")
    assert jsa["runs"]["vggss retrieval"] == {
        "status": "skipped",
        "reason": "no --embeddings folder",
        "notes": [],
        "result": {},
    }
    heard = jsa["runs"]["vggss localisation ids=vggss_heard_test.csv fixed"]
    assert heard["status"] == "ok" and heard["result"]["instances"] == 30 and heard["result"]["protocol"] == "fixed"
    assert jsa["runs"]["vggss localisation ids=vggss_unheard_test.csv fixed"]["status"] == "skipped"
    fixed = single(
        ["--release", str(bench / "vggss.json"), "--predictions", str(preds / "vggss.npz"), "--protocol", "fixed"]
        + ["--ids", str(bench / "vggss_heard_test.csv")],
        tmp_path,
    )
    assert heard["result"]["ciou"] == fixed["ciou"] and heard["result"]["auc"] == fixed["auc"]
    table1 = next(t for t in jsa["tables"] if t["table"] == "1")
    names = {r["name"] for r in table1["rows"]}
    assert {"jsa (VGGSound 144k)", "fnac (VGGSound 144k)", "ours"} <= names  # --method all: the comparators too


def test_a_failing_run_is_named_and_the_rest_still_print(tmp_path):
    bench, preds, emb = make_folders(tmp_path)
    np.savez(emb / "vggss.npz", ids=np.array(["x"]), audio=np.zeros((1, 4)), image=np.zeros((1, 4)))
    args = ["eval", "--suite", "jsa", "--release", str(bench), "--predictions", str(preds), "--embeddings", str(emb)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "1 runs of the suite failed: vggss retrieval:" in result.output and "no embeddings for 60" in result.output
    assert "Table 1: VGG-SS and Flickr-SoundNet, fixed threshold" in result.output  # the other tables printed
    result = CliRunner().invoke(app, [*args[:2], "nope", *args[3:]])
    assert result.exit_code == 2 and "the suite must be one of tpami, iccv23, jsa, acl" in result.output
    with pytest.raises(suites.EvaluationError, match="needs --predictions DIR"):
        suites.run_suite("tpami", bench)
    with pytest.raises(suites.EvaluationError, match="a suite reads a folder of <benchmark>.npz files"):
        suites.run_suite("tpami", bench, predictions=preds / "vggss.npz")
    with pytest.raises(suites.EvaluationError, match="figures are of acl, alignment, fnac, marginnce, slavc"):
        suites.run_suite("acl", bench, predictions=preds, method="jsa")
