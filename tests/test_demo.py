"""``ovss demo``: the handler behind the Segment button, and the page driven in headless Chromium.

The browser test starts the real command in a subprocess, uploads a VOC photo, segments it and
downloads the label PNG through the page. It skips only where gradio, selenium, chromium or
chromedriver are missing. Set OVSS_DEMO_SCREENSHOT=docs/demo.png to refresh the screenshot.
"""

from __future__ import annotations

import argparse
import gc
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.errors import InputError, ModelLoadError

gr = pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")

from ovss import demo  # noqa: E402  (after the gradio check)

REPO = Path(__file__).resolve().parents[1]
CHELSEA = REPO / "examples" / "chelsea.jpg"
CHROMIUM = os.environ.get("OVSS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OVSS_CHROMEDRIVER", "/usr/bin/chromedriver")


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map, written out from its definition (bits of the index spread over RGB)."""
    out = np.zeros((n, 3), dtype=np.int64)
    for index in range(n):
        value = index
        for bit in range(8):
            for channel in range(3):
                out[index, channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
    return out


def expected_blend(rgb: np.ndarray, labels: np.ndarray, background_first: bool) -> np.ndarray:
    """Image and class colours half and half (class 0 black only when it is "background")."""
    shift = 0 if background_first else 1
    colours = voc_palette(labels.max() + 1 + shift)[shift:]
    return (rgb.astype(np.float64) * 0.5 + colours[labels] * 0.5).astype(np.int64)


@pytest.fixture(scope="module")
def app():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny-random warns that it is random
        application = demo.DemoApp(demo.DemoConfig(clip="tiny-random", device="cpu", settings={"templates": "simple"}))
    yield application
    application.folders.cleanup()


# --- the handler, without a browser ---------------------------------------------------------------


def test_handler_parses_classes_and_writes_overlay_labels_json(app):
    out = app.segment(str(CHELSEA), " cat ;sofa,  couch; potted plant;", "words", "", "sclip", "tiny-random")
    rgb = np.asarray(Image.open(CHELSEA).convert("RGB"))
    height, width = rgb.shape[:2]

    summary = json.loads(out.summary_json.read_text())
    assert summary["vocabulary"]["names"] == ["background", "cat", "sofa", "potted plant"]
    assert summary["settings"]["templates"] == "simple"  # the demo's settings reach the method
    assert summary["vocabulary"]["synonyms"][1:] == [["cat"], ["sofa", "couch"], ["potted plant"]]
    assert summary["vocabulary"]["synonyms"][0][:3] == ["sky", "wall", "tree"]  # SCLIP's background words

    labels = np.asarray(Image.open(out.label_png))
    assert labels.shape == (height, width) and labels.max() < 4
    counts = np.bincount(labels.ravel(), minlength=4)
    assert [row[0] for row in out.areas] == summary["vocabulary"]["names"]
    assert [row[1] for row in out.areas] == counts.tolist()
    assert [row[2] for row in out.areas] == [round(100 * c / labels.size, 2) for c in counts]

    overlay = np.asarray(Image.open(out.overlay).convert("RGB")).astype(np.int64)
    assert overlay.shape[0] == height and overlay.shape[1] > width  # the legend sits right of the photo
    assert np.abs(overlay[:, :width] - expected_blend(rgb, labels, background_first=True)).max() <= 1
    assert out.warnings and "tiny-random" in out.warnings[0]

    # The page's legend lists the classes present, largest first, each in its overlay colour.
    legend = re.findall(r'data-class="([^"]+)".*?background:rgb\((\d+),(\d+),(\d+)\)', out.legend)
    present = [i for i in np.argsort(-counts, kind="stable") if counts[i]]
    assert [name for name, *_ in legend] == [summary["vocabulary"]["names"][i] for i in present]
    colours = voc_palette(4)
    assert [tuple(int(v) for v in rgb_) for _, *rgb_ in legend] == [tuple(colours[i]) for i in present]

    returned = app.handle(str(CHELSEA), "cat; dog", "none", "", "sclip", "tiny-random")
    assert Image.open(returned[0]).size[1] == height
    assert [row[0] for row in returned[2]] == ["cat", "dog"]


def test_handler_own_background_words(app):
    out = app.segment(str(CHELSEA), "cat", "my own words", "floor; rug, carpet", "sclip", "tiny-random")
    summary = json.loads(out.summary_json.read_text())
    assert summary["vocabulary"]["synonyms"][0] == ["floor", "rug", "carpet"]


@pytest.mark.parametrize(
    ("image", "classes", "background", "words", "clip", "expected"),
    [
        ("photo", "", "words", "", "tiny-random", "no class names"),
        ("photo", "cat; Cat", "none", "", "tiny-random", "'Cat' is given twice"),
        ("photo", "cat", "my own words", " , ", "tiny-random", "needs words"),
        ("text", "cat", "none", "", "tiny-random", "notes.png: not a readable image"),
        (None, "cat", "none", "", "tiny-random", "no image"),
        ("photo", "cat", "none", "", "no-such-org/no-such-clip", "cannot find CLIP model 'no-such-org/no-such-clip'"),
    ],
)
def test_handler_errors_are_one_line_pop_ups(app, tmp_path, image, classes, background, words, clip, expected):
    if image == "text":
        image = tmp_path / "notes.png"
        image.write_text("not an image")
    elif image == "photo":
        image = CHELSEA
    with pytest.raises(gr.Error) as caught:
        app.handle(image and str(image), classes, background, words, "sclip", clip)
    message = html.unescape(caught.value.message)
    assert "\n" not in message and expected in message
    assert str(tmp_path) not in message  # the upload is named as the user knows it


def test_upload_path_reads_the_raw_page_value():
    assert demo.upload_path({"path": "/tmp/x/photo.png", "orig_name": "photo.png"}) == "/tmp/x/photo.png"
    assert demo.upload_path("/tmp/x/photo.png") == "/tmp/x/photo.png"
    assert demo.upload_path(None) is None and demo.upload_path({"path": None}) is None and demo.upload_path("") is None


def test_unavailable_method_is_refused(app):
    with pytest.raises(InputError, match="not available here"):
        app.segment(str(CHELSEA), "cat", "none", "", "tuss", "tiny-random")


def test_methods_needing_sam_or_weights_are_offered_only_when_given():
    plain = demo.offered_methods(demo.DemoConfig())
    assert "sclip" in plain and "tuss" not in plain and "fmbseg" not in plain
    assert "tuss" in demo.offered_methods(demo.DemoConfig(sam="tiny-random"))
    with pytest.raises(InputError, match="--sam"):
        demo.DemoApp(demo.DemoConfig(method="tuss"))


def test_segmenter_cache_keeps_the_most_recent_and_releases_the_rest():
    class Model:
        pass

    built: list[str] = []
    alive: dict[str, weakref.ref] = {}

    def build(name: str):
        def make():
            built.append(name)
            model = Model()
            alive[name] = weakref.ref(model)
            return model

        return make

    cache = demo.SegmenterCache(2)
    first = cache.get("a", build("a"))
    cache.get("b", build("b"))
    assert cache.get("a", build("a")) is first  # a hit: not built again
    cache.get("c", build("c"))  # "b" is the least recently used
    gc.collect()
    assert built == ["a", "b", "c"] and cache.keys() == ["a", "c"]
    assert alive["b"]() is None and alive["a"]() is not None
    with pytest.raises(InputError, match="at least 1"):
        demo.SegmenterCache(0)


def test_missing_gradio_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    with pytest.raises(InputError) as caught:
        demo.import_gradio()
    assert 'pip install "ovss[demo]"' in str(caught.value) and "\n" not in str(caught.value)


def test_command_refuses_bad_options_before_serving():
    parser = argparse.ArgumentParser()
    demo.add_demo_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--method", "no-such-method", "--port", "7999"])
    with pytest.raises(InputError, match="unknown method 'no-such-method'"):
        args.func(args)
    args = parser.parse_args(["demo", "--port", "70000"])
    with pytest.raises(InputError, match="not a port"):
        args.func(args)
    args = parser.parse_args(["demo", "--clip", "no-such-org/no-such-clip", "--device", "cpu"])
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-clip"):
        args.func(args)  # the models load before the page is served


def test_command_reports_a_port_in_use():
    parser = argparse.ArgumentParser()
    demo.add_demo_parser(parser.add_subparsers())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = parser.parse_args(["demo", "--port", str(taken.getsockname()[1]), "--device", "cpu"])
        with pytest.raises(InputError, match="pass another --port"):
            args.func(args)


def test_page_builds_with_the_offered_methods(app):
    page = demo.build_demo(app=app)
    assert isinstance(page, gr.Blocks)
    dropdowns = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "ovss-method"]
    assert [choice[0] for choice in dropdowns[0].choices] == app.methods


# --- the page in headless Chromium ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingProxy:
    """An HTTP proxy that answers nothing and remembers who asked: any outside request shows up here."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.5)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(2048).split(b"\r\n", 1)[0].decode(errors="replace"))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()


def _browser_or_skip(download_dir: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.skip(f"{path} not found (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,1250",
        f"--user-data-dir={tempfile.mkdtemp(prefix='ovss-chromium-')}",
    ]
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def _wait(condition, timeout: float, what: str):
    """Poll ``condition`` until it is truthy; an element re-rendered under our feet counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_demo(tmp_path: Path, proxy: RecordingProxy) -> tuple[subprocess.Popen, str, Path]:
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OVSS_CACHE_DIR": str(tmp_path / "cache"),
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "TMPDIR": str(tmp_path / "tmp"),
        "HTTP_PROXY": proxy.url,
        "HTTPS_PROXY": proxy.url,
        "http_proxy": proxy.url,
        "https_proxy": proxy.url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "OMP_NUM_THREADS": "1",
    }
    (tmp_path / "tmp").mkdir()
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "ovss.demo", "--clip", "tiny-random", "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"ovss demo exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait(up, 180, "the demo to answer")
    except BaseException:
        _stop(server)
        raise
    return server, url, log


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(15)


def _toasts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")]


def _fetch_image(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        data = response.read()
    path = Path(tempfile.mkdtemp()) / "fetched"
    path.write_bytes(data)
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int64)


def _save_screenshot(driver, target: Path) -> None:
    """The page at 1000 px wide, in 256 colours to stay small."""
    raw = target.with_suffix(".raw.png")
    driver.save_screenshot(str(raw))
    shot = Image.open(raw).convert("RGB")
    if shot.width > 1000:
        shot = shot.resize((1000, round(shot.height * 1000 / shot.width)), Image.LANCZOS)
    # Octree keeps the few saturated legend colours that median cut merges into grey.
    shot.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(target, optimize=True)
    raw.unlink()


def test_demo_in_headless_chromium(tmp_path, evaldata):
    from selenium.webdriver.common.by import By

    photo = evaldata / "vainf_voc_samples" / "samples" / "0_image.png"
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _browser_or_skip(downloads)
    proxy = RecordingProxy()
    server = None
    try:
        server, url, log = _start_demo(tmp_path, proxy)
        driver.get(url)
        upload = "#ovss-image input[type=file]"
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, upload), 60, "the upload field")

        # A file that is not an image: a message in the page as soon as it is uploaded.
        not_image = tmp_path / "holiday.png"
        not_image.write_text("this is text, not a picture")
        driver.find_element(By.CSS_SELECTOR, upload).send_keys(str(not_image))
        message = _wait(lambda: [t for t in _toasts(driver) if "holiday.png" in t], 60, "the not-an-image message")
        assert "not a readable image" in message[0] and "Traceback" not in message[0]

        # The example row fills in the photo and the classes.
        driver.get(url)
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, upload), 60, "the upload field")
        example = _wait(lambda: driver.find_elements(By.XPATH, f"//*[text()='{demo.DEFAULT_CLASSES}']"), 30, "examples")
        example[0].click()
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#ovss-image img"), 60, "the example photo")
        box = driver.find_element(By.CSS_SELECTOR, "#ovss-classes textarea, #ovss-classes input")
        assert box.get_attribute("value") == demo.DEFAULT_CLASSES

        driver.get(url)  # a fresh page
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, upload), 60, "the upload field")
        driver.find_element(By.CSS_SELECTOR, upload).send_keys(str(photo))
        box = driver.find_element(By.CSS_SELECTOR, "#ovss-classes textarea, #ovss-classes input")
        box.clear()
        box.send_keys("aeroplane, airplane; person; car")
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#ovss-image img"), 60, "the uploaded photo's preview")
        driver.find_element(By.ID, "ovss-run").click()

        overlay = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#ovss-overlay img"), 180, "the overlay")
        shown = _fetch_image(overlay[0].get_attribute("src"))
        height, width = rgb.shape[:2]
        assert shown.shape[0] == height and shown.shape[1] > width  # photo plus legend

        area_text = _wait(lambda: driver.find_element(By.ID, "ovss-areas").text, 30, "the area table")
        for name in ("background", "aeroplane", "person", "car"):
            assert name in area_text
        assert any("tiny-random" in t for t in _toasts(driver))  # the random-model warning reaches the page

        button = _wait(lambda: driver.find_element(By.ID, "ovss-download-png"), 30, "the label PNG button")
        button.click()
        done = _wait(
            lambda: [p for p in downloads.glob("*.png") if not p.name.endswith(".crdownload")],
            60,
            "the label PNG download",
        )
        labels = np.asarray(Image.open(done[0]))
        assert labels.shape == (height, width) and labels.max() < 4  # background + 3 classes
        # The overlay on the page is the photo blended with the colours of the downloaded labels.
        assert np.abs(shown[:, :width] - expected_blend(rgb, labels, background_first=True)).max() <= 1
        names = ["background", "aeroplane", "person", "car"]
        legend = driver.execute_script(
            "return [...document.querySelectorAll('#ovss-legend .ovss-legend-item')].map(e => e.dataset.class)"
        )
        assert sorted(legend) == sorted(
            names[i] for i in np.unique(labels)
        )  # the page's legend names exactly the classes in the label map

        # The screenshot shows the page, not the pop-ups.
        driver.execute_script(
            "document.querySelectorAll('[data-testid=toast-body] .toast-close').forEach(b => b.click())"
        )
        _wait(lambda: not _toasts(driver), 15, "the pop-ups to close")
        _save_screenshot(driver, Path(os.environ.get("OVSS_DEMO_SCREENSHOT") or tmp_path / "demo.png"))

        # Everything the page loaded came from the demo itself, and the server asked nothing outside.
        hosts = set()
        for entry in driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            if event["method"] == "Network.requestWillBeSent":
                request_url = event["params"]["request"]["url"]
                if request_url.startswith(("http://", "https://", "ws://", "wss://")):
                    hosts.add(request_url.split("/")[2])
        assert hosts == {url.split("/")[2]}
        assert proxy.requests == [], f"the demo tried the network: {proxy.requests}"
        assert "Traceback" not in log.read_text()
        assert list((tmp_path / "tmp").glob("ovss-demo-*")), "the outputs were not written where expected"
        _stop(server)
        assert server.returncode == 0 and not list((tmp_path / "tmp").glob("ovss-demo-*"))  # removed on SIGTERM
    finally:
        driver.quit()
        if server is not None:
            _stop(server)
        proxy.close()
