"""The FiftyOne App really serves a review dataset: `launch` in a subprocess, HTTP checks, headless Chromium.

The App is a single-page React app: `/datasets/<name>` returns its index.html, the page then asks the server (GraphQL,
/media, /operators) for the dataset. So the checks are on what Chromium renders after running it: the dataset
selector holds the dataset's name, the entry count says how many samples the saved view has, one thumbnail
(`data-cy="looker"`) per sample, and the screenshot shows the colours of exactly the view's images. The screenshot
is kept as `test-artifacts/app.png`.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from is4.config import ReviewConfig
from tests.conftest import free_port
from tests.support import ROOT
from tests.support.predictions import make_predictions
from tests.support.review_work import make_workdir

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
VIEW = "to-verify"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--virtual-time-budget=20000",
    "--no-proxy-server",  # the App is on loopback; a proxy from the environment must not get in the way
]
LAUNCHER = """
import json, sys
from pathlib import Path
from is4.annotation import review
from is4.config import ReviewConfig
args = json.loads(sys.argv[1])
review.launch(Path(args["workdir"]), ReviewConfig.model_validate(args["cfg"], strict=False), args["view"], wait=True)
"""


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with _DIRECT.open(request, timeout=10) as response:
        return response.status, response.read()


class App:
    def __init__(self, url: str, root: str, name: str, workdir: Path, in_view: list[str], out_of_view: list[str]):
        self.url, self.root, self.name, self.workdir = url, root, name, workdir
        self.in_view, self.out_of_view = in_view, out_of_view
        self.predictions: dict = {}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, fiftyone_db: Path):
    from is4.annotation import review

    workdir = tmp_path_factory.mktemp("app") / "appbuild"
    ids = make_workdir(workdir)
    port = free_port()
    cfg = ReviewConfig(database_dir=fiftyone_db, port=port)
    assert cfg.address == "127.0.0.1"
    name = review.build_dataset(workdir, cfg)
    # A reviewer accepts ids[1]; with the automatic reject of ids[0], four images are left to verify.
    fo = review.connect(cfg, workdir)
    ds = fo.load_dataset(name)
    ds.select(ds.match({"image_id": ids[1]}).values("id")).tag_samples("accept")
    review.sync(workdir, cfg, "alice")
    in_view = ds.load_saved_view(VIEW).values("image_id")
    assert sorted(in_view) == ids[2:]
    # A model's maps on a release, in their own dataset that the same App serves.
    release, files = make_predictions(workdir.parent / "predictions")
    review.load_predictions(release, files["oracle"], cfg, run="oracle", workdir=workdir)
    predictions = review.load_predictions(release, files["centre"], cfg, run="centre", workdir=workdir)

    log = (workdir / "launch.log").open("w")
    args = {"workdir": str(workdir), "cfg": cfg.model_dump(mode="json"), "view": VIEW}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(args)], stdout=log, stderr=subprocess.STDOUT)
    url = review.app_url(workdir, cfg, VIEW)
    assert url == f"http://127.0.0.1:{port}/datasets/{quote(name)}?view={VIEW}"
    deadline = time.time() + 60
    while True:
        try:
            if _get(url)[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("the App did not come up:\n" + (workdir / "launch.log").read_text())
        time.sleep(0.5)
    served = App(url, f"http://127.0.0.1:{port}", name, workdir, in_view, [ids[0], ids[1]])
    served.predictions = {"name": predictions["dataset"], "cfg": cfg, "release": release}
    yield served

    proc.send_signal(signal.SIGTERM)  # launch() turns it into a clean close of the session
    try:
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert rc == 0, (workdir / "launch.log").read_text()


def test_app_serves_the_dataset_its_media_and_the_plugin(app: App) -> None:
    status, page = _get(app.url)
    assert status == 200 and b"<title>FiftyOne</title>" in page
    status, body = _get(f"{app.root}/fiftyone")
    assert json.loads(body)["version"]
    png = app.workdir / "media" / "images" / f"{app.in_view[0]}.png"
    status, body = _get(f"{app.root}/media?filepath={quote(str(png.resolve()))}")
    assert status == 200 and body == png.read_bytes()
    status, body = _get(f"{app.root}/operators", json.dumps({"dataset_name": app.name}).encode())
    listed = json.loads(body)
    assert "@is4/review/refine_masks" in {op["uri"] for op in listed["operators"]}
    assert not [e for e in listed["errors"] if "is4" in json.dumps(e)]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


COUNT = re.compile(r'data-cy="entry-count-all"[^>]*>([\d,]+)</span>\s*samples')


def _rendered_dom(tmp_path: Path, url: str) -> str:
    """The DOM Chromium rendered for `url`; asked up to three times, since on a loaded machine the App may not have
    drawn its grid within Chromium's time budget."""
    html = ""
    for _ in range(3):
        dom = _chromium(tmp_path, "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        if COUNT.search(html):
            break
    return html


def test_chromium_renders_the_saved_view(app: App, tmp_path: Path) -> None:
    html = _rendered_dom(tmp_path, app.url)
    selector = re.search(r'<input[^>]*data-cy="selector-dataset"[^>]*>', html)
    assert selector, html[:2000]
    assert f'value="{app.name}"' in selector.group(0)
    count = COUNT.search(html)
    assert count and int(count.group(1).replace(",", "")) == len(app.in_view)  # the saved view, not all 6
    assert html.count('data-cy="looker"') == len(app.in_view)  # one thumbnail per sample
    assert VIEW in re.sub(r"<[^>]+>", " ", html)  # the saved view's name is shown
    assert "queue_rank" in html  # its sort stage is in the view bar

    shot = tmp_path / "app.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", app.url)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "app.png")
    with Image.open(shot) as im:
        assert im.size == (1400, 900)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)

    def painted(image_id: str) -> int:
        with Image.open(app.workdir / "media" / "images" / f"{image_id}.png") as im:
            colour = im.convert("RGB").getpixel((0, 0))  # the test images are one colour each
        return int((pixels == colour).all(axis=1).sum())

    # Each image of the view is drawn as a thumbnail (some may sit partly under the App's pop-up); the accepted
    # and the rejected one are not in the view.
    assert all(painted(i) > 500 for i in app.in_view), {i: painted(i) for i in app.in_view}
    assert all(painted(i) == 0 for i in app.out_of_view)


def test_launch_listens_on_loopback_only(app: App) -> None:
    port = int(app.root.rsplit(":", 1)[1])

    def listening(table: str) -> set[str]:  # local addresses in LISTEN state (0A) from the kernel's socket table
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        return {line.split()[1] for line in lines if line.split()[3] == "0A"}

    assert f"0100007F:{port:04X}" in listening("tcp")  # 127.0.0.1
    assert f"00000000:{port:04X}" not in listening("tcp")  # not 0.0.0.0
    assert not [a for a in listening("tcp6") if a.endswith(f":{port:04X}")]  # nor any IPv6 address


def test_chromium_shows_a_models_failures(app: App, tmp_path: Path) -> None:
    """The predictions dataset's `failures` view in the same App: one tile per failing instance, each frame drawn
    under its heatmap, boxes and category; the screenshot is the README's (docs/img/predictions-view.png)."""
    from is4.annotation import review

    fo = review.connect(app.predictions["cfg"], app.workdir)
    dataset = fo.load_dataset(app.predictions["name"])
    failing = dataset.load_saved_view("failures")
    centre_fails = sum(v < 0.5 for v in dataset.values("centre_iou"))
    assert len(failing) == centre_fails > 0  # the oracle fails none
    url = review.dataset_url(dataset.name, app.predictions["cfg"], "failures")
    html = _rendered_dom(tmp_path, url)
    count = COUNT.search(html)
    assert count and int(count.group(1).replace(",", "")) == len(failing), re.sub(r"<[^>]+>", " ", html)[-3000:]
    assert html.count('data-cy="looker"') == len(failing)
    text = re.sub(r"<[^>]+>", " ", html)
    for field in ("ground_truth", "other_object", "centre", "oracle", "centre_iou", "category"):
        assert field in text, field  # the sidebar lists the objects, both runs and their scores

    shot = tmp_path / "predictions.png"
    coloured = 0.0
    for _ in range(3):  # as for the DOM: a loaded machine may need another go to draw the grid
        run = _chromium(tmp_path, f"--screenshot={shot}", url)
        assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
        with Image.open(shot) as im:
            pixels = np.asarray(im.convert("RGB")).astype(int)
        # The heatmaps are drawn: far more saturated pixels than the grey frames and the App's chrome have.
        coloured = float(((pixels.max(axis=2) - pixels.min(axis=2)) > 120).mean())
        if coloured > 0.02:
            break
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "predictions-view.png")
    assert coloured > 0.02


def _execute(app: App, dataset: str, operator: str, **request) -> dict:
    body = {"dataset_name": dataset, "operator_uri": f"@is4/review/{operator}", "view": [], "params": {}, **request}
    status, out = _get(f"{app.root}/operators/execute", json.dumps(body).encode())
    assert status == 200
    return json.loads(out)


def test_the_plugins_decisions_and_audio_through_the_app_server(app: App) -> None:
    """The App server runs the plugin (no browser clicks): accept/reject on a sample, the audio panel's clip URL,
    the media route serving that clip; the empty-view message names the views that hold samples."""
    from is4.annotation import review

    status, body = _get(f"{app.root}/operators", json.dumps({"dataset_name": app.name}).encode())
    listed = {op["uri"] for op in json.loads(body)["operators"]}
    for name in ("accept", "reject", "audio", "empty_view_notice", "refine_masks"):
        assert f"@is4/review/{name}" in listed, name

    fo = review.connect(app.predictions["cfg"], app.workdir)
    ds = fo.load_dataset(app.name)
    one = ds.match({"image_id": app.in_view[0]})
    sample_id = one.first().id
    try:
        out = _execute(app, app.name, "accept", selected=[sample_id])
        assert out["result"] == {"decided": 1}, out
        assert one.first().tags == ["accept"]
        out = _execute(app, app.name, "reject", current_sample=sample_id, params={"reason": "artefact"})
        assert out["result"] == {"decided": 1}, out
        assert one.first().tags == ["reject:artefact"]
        with pytest.raises(urllib.error.HTTPError):  # not a reason: the operator fails, the tags stay
            _execute(app, app.name, "reject", selected=[sample_id], params={"reason": "blurry"})
        assert one.first().tags == ["reject:artefact"]
    finally:
        review.decide(one, "pending")
    assert one.first().tags == []

    pred = fo.load_dataset(app.predictions["name"])
    clip_sample = pred.first()
    out = _execute(
        app,
        pred.name,
        "audio",
        current_sample=clip_sample.id,
        params={"__method__": "on_load", "panel_id": "p", "state": {}, "event_args": {}},
    )
    url = f"/media?filepath={quote(clip_sample['audio'], safe='')}"
    (output,) = [r["params"]["output"] for r in out["executor"]["requests"] if r["operator_uri"] == "show_panel_output"]
    player = output["type"]["properties"]["player_0"]
    assert player["view"]["name"] == "MediaPlayerView" and player["default"]["url"] == url
    status, wav = _get(app.root + url)
    assert status == 200 and wav == Path(clip_sample["audio"]).read_bytes()

    message = review.empty_view_message(ds, "conflicts")
    assert message.startswith("The view 'conflicts' is empty: no image carries both accept and reject")
    assert f"to-verify ({len(app.in_view)})" in message
    # Opening a dataset on an empty saved view, the App runs the notice, which shows that message.
    out = _execute(app, app.name, "empty_view_notice", view_name="conflicts")
    notes = [r["params"] for r in out["executor"]["requests"] if r["operator_uri"] == "notify"]
    assert notes == [{"message": message, "variant": "info"}], out
    out = _execute(app, app.name, "empty_view_notice", view_name="to-verify")
    assert not [r for r in out["executor"]["requests"] if r["operator_uri"] == "notify"]
