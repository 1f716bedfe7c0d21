"""``ovss demo``: a local web page (gradio) to segment one photo with any class names.

Wired into ``ovss.cli`` with :func:`add_demo_parser`; also runs as ``python -m ovss.demo``.
gradio is an optional extra (``pip install "ovss[demo]"``) and is imported only here, lazily.

The page never shows a traceback: every problem with the input (not an image, no classes,
a class given twice, an unknown model) becomes one line in a ``gr.Error`` pop-up.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OvssError

DESCRIPTION = """\
A local web page: upload a photo (or pick the example), type class names, press Segment, and get
the overlay with its legend, the area of every class, and the label PNG and JSON to download.
Models load on first use and stay loaded (at most --max-models at once).

examples:
  ovss demo --clip openai/clip-vit-base-patch16
  ovss demo --clip openai/clip-vit-base-patch16 --sam facebook/sam-vit-base --method tuss
  ovss demo --clip tiny-random --port 7861     (a random model: checks the page, not the result)
"""

INSTALL_HINT = 'the demo needs gradio; install it with: pip install "ovss[demo]"'
BACKGROUND_CHOICES = ("none", "words", "threshold", "my own words")
DEFAULT_CLASSES = "cat; sofa, couch; potted plant"
DEFAULT_MAX_MODELS = 2
# Request folders kept on disk; gradio copies the returned files into its own cache.
KEPT_REQUEST_FOLDERS = 16
EXAMPLE_PHOTO = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"  # present in a source checkout


def import_gradio():
    """gradio, with analytics and its version check off; one-line InputError when missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry and no version check at start
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return gradio


@dataclass
class DemoConfig:
    """What the command line fixes for the whole session; the page may change method and CLIP."""

    method: str = "sclip"
    clip: str = "tiny-random"
    dino: str | None = None
    sam: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    max_models: int = DEFAULT_MAX_MODELS
    max_pixels: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)


# --- the bounded segmenter cache (one function to swap for the shared model cache) ---------------


class SegmenterCache:
    """At most ``max_items`` built segmenters, least recently used dropped first and released."""

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise InputError(f"--max-models is {max_items}; keep at least 1 model loaded")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        from .models.registry import ModelCache

        # the server's own bounded backbone cache (a CLIP, a DINO and a SAM per segmenter at most)
        self.models = ModelCache(3 * max_items)
        self._lock = threading.Lock()  # gradio runs handlers on worker threads

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = build()  # built under the lock: two requests never load the same model twice
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
                self._release_unused_models()
                _release_memory()
            return value

    def _release_unused_models(self) -> None:
        """Drop backbones no kept segmenter uses, so an evicted segmenter frees its models."""
        used = {
            id(b)
            for seg in self._items.values()
            for b in getattr(getattr(seg, "method", None), "backbones", {}).values()
        }
        for key in [k for k, model in self.models.items() if id(model) not in used]:
            self.models.drop(key)

    def keys(self) -> list[Hashable]:
        return list(self._items)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cached_segmenter(cache: SegmenterCache, method: str, models: dict[str, str | None], config: DemoConfig):
    """The segmenter for (method, models, settings), built on first use."""
    from .api import Segmenter
    from .methods import get_method_spec

    settings = dict(config.settings)
    key = (method, tuple(sorted(models.items())), config.checkpoint, str(config.device), repr(sorted(settings.items())))
    extra = {"max_pixels": config.max_pixels} if config.max_pixels else {}
    takes_checkpoint = get_method_spec(method).checkpoint != "none"  # training-free methods do not
    checkpoint = config.checkpoint if takes_checkpoint else None
    return cache.get(
        key,
        lambda: Segmenter(
            method,
            device=config.device,
            checkpoint=checkpoint,
            cache=cache.models,
            **models,  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
            **settings,
        ),
    )


# --- what the page offers -------------------------------------------------------------------------


def offered_methods(config: DemoConfig) -> list[str]:
    """Methods that can run with the models given: SAM or DINO methods only with those, trained ones with weights."""
    from .methods import available_methods

    given = {"clip": True, "dino": config.dino is not None, "sam": config.sam is not None}
    names = []
    for name, spec in available_methods().items():
        if spec.checkpoint == "required" and not config.checkpoint:
            continue
        recorded: set[str] = set()
        if spec.checkpoint == "required":
            from .methods.settings import read_checkpoint

            try:  # the backbones its weights were trained on
                recorded = set(read_checkpoint(spec, config.checkpoint).backbones)  # type: ignore[union-attr]
            except OvssError:
                continue  # a checkpoint of another method
        if all(given.get(kind, False) or kind in recorded for kind in spec.needs):
            names.append(name)
    return names


def background_argument(mode: str, own_words: str) -> str | list[str] | None:
    """The page's background choice as ``Segmenter.segment(background=...)`` takes it."""
    if mode in ("none", "words", "threshold"):
        return mode
    if mode == "my own words":
        words = [w for w in own_words.replace(";", ",").split(",") if w.strip()]
        if not words:
            raise InputError('background "my own words" needs words, like: sky, wall, floor')
        return words
    raise InputError(f"unknown background mode {mode!r}; choose one of: {', '.join(BACKGROUND_CHOICES)}")


# --- downloads: the label PNG and JSON, plus any exporter that is installed -----------------------


def export_files(result, folder: Path, stem: str) -> list[Path]:
    """Every download for one result; extra formats (COCO, YOLO) join here from ``ovss.export``."""
    label_png, summary_json = folder / f"{stem}_labels.png", folder / f"{stem}.json"
    result.save_png(label_png)
    result.save_json(summary_json)
    return [label_png, summary_json, *extra_exports(result, folder, stem)]


def extra_exports(result, folder: Path, stem: str) -> list[Path]:
    """The hook for ``ovss.export`` (built separately): none until it exists and is wired here."""
    return []


class RequestFolders:
    """A fresh folder per request under one session folder, the oldest removed beyond a bound."""

    def __init__(self, keep: int = KEPT_REQUEST_FOLDERS) -> None:
        self.root: Path | None = None  # made on the first request
        self._recent: deque[Path] = deque()
        self._keep = keep
        self._lock = threading.Lock()

    def new(self) -> Path:
        with self._lock:
            if self.root is None:
                self.root = Path(tempfile.mkdtemp(prefix="ovss-demo-"))
            folder = Path(tempfile.mkdtemp(dir=self.root))
            self._recent.append(folder)
            while len(self._recent) > self._keep:
                shutil.rmtree(self._recent.popleft(), ignore_errors=True)
            return folder

    def cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


# --- the handler behind the Segment button --------------------------------------------------------


@dataclass
class DemoOutput:
    overlay: Path
    areas: list[list[Any]]  # rows of [class, pixels, percent]
    legend: str  # HTML: a colour swatch per class present, as in the overlay
    label_png: Path
    summary_json: Path
    extra: list[Path]
    warnings: list[str]


def area_rows(result) -> list[list[Any]]:
    total = max(1, result.labels.size)
    return [[name, pixels, round(100.0 * pixels / total, 2)] for name, pixels in result.areas().items()]


def _percent(pixels: int, total: int) -> str:
    share = 100.0 * pixels / total
    return f"{share:.1f}%" if share >= 0.1 else "<0.1%"


def legend_html(result) -> str:
    """The classes present with their overlay colours, largest first, large enough to read on the page."""
    import html

    from .result import class_colours

    colours = class_colours(result.class_names)
    total = max(1, result.labels.size)
    present = sorted(((a, i) for i, a in enumerate(result.areas().values()) if a), reverse=True)
    items = []
    for pixels, index in present:
        r, g, b = (int(v) for v in colours[index])
        items.append(
            f'<span class="ovss-legend-item" data-class="{html.escape(result.class_names[index])}" '
            f'style="display:inline-flex;align-items:center;margin:0 14px 6px 0">'
            f'<span style="display:inline-block;width:18px;height:18px;margin-right:6px;border:1px solid #333;'
            f'background:rgb({r},{g},{b})"></span>{html.escape(result.class_names[index])} '
            f"({_percent(pixels, total)})</span>"
        )
    return f'<div class="ovss-legend">{"".join(items)}</div>'


class DemoApp:
    """The state behind the page: configuration, segmenter cache and output folders."""

    def __init__(self, config: DemoConfig) -> None:
        from .methods import get_method_spec

        get_method_spec(config.method)  # an unknown --method stops the command, not the first click
        self.config = config
        self.methods = offered_methods(config)
        if config.method not in self.methods:
            raise InputError(
                f"method {config.method!r} needs models not given here; pass them (--sam, --dino, --checkpoint) "
                f"or pick one of: {', '.join(self.methods)}"
            )
        self.cache = SegmenterCache(config.max_models)
        self.folders = RequestFolders()

    def preload(self) -> None:
        """Load the models the page starts with, so that a wrong --clip stops the command, not the first click."""
        models = {"clip": self.config.clip, "dino": self.config.dino, "sam": self.config.sam}
        cached_segmenter(self.cache, self.config.method, models, self.config)

    def segment(
        self,
        image_path: str | None,
        classes: str,
        background: str,
        own_words: str,
        method: str,
        clip: str,
        progress: Callable[[float, str], None] | None = None,
    ) -> DemoOutput:
        """Check the input, segment, and write the downloads; raises InputError / ModelLoadError."""
        from .vocab import build_vocabulary

        step = progress or (lambda fraction, desc: None)
        if not image_path:
            raise InputError("no image: upload a photo or pick the example first")
        if method not in self.methods:
            raise InputError(f"method {method!r} is not available here; choose one of: {', '.join(self.methods)}")
        clip = (clip or "").strip()
        if not clip:
            raise InputError(
                "no CLIP model: type a hub id (openai/clip-vit-base-patch16), a local folder or tiny-random"
            )
        vocab = build_vocabulary(classes or "", background_argument(background, own_words or ""))
        rgb = self.read_image(image_path)  # before any model loads
        step(0.1, "loading the models (first use only)")
        models = {"clip": clip, "dino": self.config.dino, "sam": self.config.sam}
        segmenter = cached_segmenter(self.cache, method, models, self.config)
        step(0.4, "segmenting")
        result = segmenter.segment(rgb, vocab)
        step(0.9, "writing the downloads")
        folder = self.folders.new()
        stem = Path(image_path).stem or "image"
        overlay = folder / f"{stem}_overlay.png"
        result.save_overlay(overlay)
        label_png, summary_json, *extra = export_files(result, folder, stem)
        warnings = []
        if result.info.get("random_weights"):
            names = ", ".join(result.info["random_weights"])
            warnings.append(f"{names} is tiny-random: a random model for tests, its labels are meaningless")
        return DemoOutput(overlay, area_rows(result), legend_html(result), label_png, summary_json, extra, warnings)

    def read_image(self, image_path: str) -> np.ndarray:
        """The upload as RGB; errors name the file as uploaded, not gradio's copy of it."""
        from .io import DEFAULT_MAX_PIXELS, load_image

        try:
            return load_image(image_path, self.config.max_pixels or DEFAULT_MAX_PIXELS)
        except InputError as e:
            raise InputError(str(e).replace(str(image_path), Path(image_path).name)) from None

    def check_upload(self, image_path: str | None) -> None:
        """On upload: a file that is not an image is reported at once, not at the first click."""
        if image_path:
            try:
                self.read_image(image_path)
            except InputError as e:
                raise import_gradio().Error(_one_line(str(e)), print_exception=False) from None

    def handle(self, *inputs: Any, progress: Any = None) -> tuple[Any, ...]:
        """The gradio handler: errors become one-line gr.Error pop-ups, warnings gr.Warning toasts."""
        gr = import_gradio()

        def step(fraction: float, desc: str) -> None:
            if progress is not None:
                progress(fraction, desc=desc)

        try:
            out = self.segment(*inputs, progress=step)  # type: ignore[misc]
        except OvssError as e:
            raise gr.Error(_one_line(str(e)), print_exception=False) from None
        except Exception as e:  # a bug, not the user's input: one line on the page, the traceback in the log
            import traceback

            traceback.print_exc(file=sys.stderr)
            raise gr.Error(_one_line(f"segmentation failed ({type(e).__name__}: {e})"), print_exception=False) from None
        for message in out.warnings:
            gr.Warning(_one_line(message))
        return (
            str(out.overlay),
            out.legend,
            out.areas,
            gr.DownloadButton(value=str(out.label_png), visible=True),
            gr.DownloadButton(value=str(out.overlay), visible=True),
            gr.DownloadButton(value=str(out.summary_json), visible=True),
            gr.File(value=[str(p) for p in out.extra] or None, visible=bool(out.extra)),
        )


def _one_line(text: str) -> str:
    """The first line, HTML-escaped: gradio renders pop-up messages as HTML and they quote user text."""
    import html

    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return html.escape(first[:300], quote=False)


# --- the page -------------------------------------------------------------------------------------


def upload_path(payload: Any) -> str | None:
    """The uploaded file's path from the page's raw value (the events run with ``preprocess=False``).

    gr.Image would decode the upload itself and turn a file that is not an image into a long
    "Could not preprocess input component" message; ovss.io.load_image checks it instead, in one line.
    """
    if payload is None or isinstance(payload, str):
        return payload or None
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    return str(path) if path else None


def build_demo(config: DemoConfig | None = None, app: DemoApp | None = None):
    """The gradio page for ``config``; returns ``gradio.Blocks`` (launch it, or mount it in FastAPI)."""
    gr = import_gradio()
    app = app or DemoApp(config or DemoConfig())
    config = app.config

    tracked = gr.Progress(track_tqdm=True)  # gradio finds it as a default: download bars show on the page too

    def on_segment(image, classes, background, own_words, method, clip, progress=tracked):
        return app.handle(upload_path(image), classes, background, own_words, method, clip, progress=progress)

    def on_upload(image) -> None:
        app.check_upload(upload_path(image))

    with gr.Blocks(title="ovss demo", analytics_enabled=False, delete_cache=(3600, 3600), fill_width=True) as demo:
        gr.Markdown(
            "## ovss: label every pixel with your own class names\n"
            "Upload a photo, type classes (`;` between classes, `,` between synonyms: `sofa, couch`), "
            "and press **Segment**."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="photo", type="filepath", sources=["upload", "clipboard"], elem_id="ovss-image")
                classes = gr.Textbox(
                    label="classes",
                    value=DEFAULT_CLASSES,
                    elem_id="ovss-classes",
                    placeholder="cat; sofa, couch; potted plant",
                )
                with gr.Row():
                    background = gr.Dropdown(
                        list(BACKGROUND_CHOICES), value="words", label="background", elem_id="ovss-background"
                    )
                    own_words = gr.Textbox(
                        label="my own background words", placeholder="sky, wall, floor", elem_id="ovss-own-words"
                    )
                with gr.Row():
                    method = gr.Dropdown(app.methods, value=config.method, label="method", elem_id="ovss-method")
                    clip = gr.Textbox(
                        label="CLIP model (hub id, local folder or tiny-random)", value=config.clip, elem_id="ovss-clip"
                    )
                run = gr.Button("Segment", variant="primary", elem_id="ovss-run")
                if EXAMPLE_PHOTO.is_file():
                    gr.Examples([[str(EXAMPLE_PHOTO), DEFAULT_CLASSES]], inputs=[image, classes], label="example")
            with gr.Column(scale=1):
                overlay = gr.Image(
                    label="overlay",
                    type="filepath",
                    format="png",
                    interactive=False,
                    buttons=[],
                    elem_id="ovss-overlay",
                )
                legend = gr.HTML(elem_id="ovss-legend")
                areas = gr.Dataframe(
                    headers=["class", "pixels", "%"], label="area per class", interactive=False, elem_id="ovss-areas"
                )
                with gr.Row():
                    label_png = gr.DownloadButton("label PNG", visible=False, elem_id="ovss-download-png")
                    overlay_png = gr.DownloadButton("overlay PNG", visible=False, elem_id="ovss-download-overlay")
                    summary_json = gr.DownloadButton("JSON", visible=False, elem_id="ovss-download-json")
                extra = gr.File(label="other formats", visible=False, file_count="multiple", elem_id="ovss-exports")
        # Raw values in (preprocess=False): the handler reads and checks the upload itself.
        image.upload(on_upload, inputs=[image], outputs=None, preprocess=False)
        run.click(
            on_segment,
            inputs=[image, classes, background, own_words, method, clip],
            outputs=[overlay, legend, areas, label_png, overlay_png, summary_json, extra],
            concurrency_limit=1,  # one segmentation at a time: models are shared and CPU-bound
            preprocess=False,
        )
    demo.ovss_app = app  # for tests and for cleanup
    return demo


# --- the command ----------------------------------------------------------------------------------


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on an ``argparse`` sub-parser collection; returns the new parser."""
    p = subparsers.add_parser(
        "demo",
        help="a local web page to segment a photo with your class names (needs ovss[demo])",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _demo_arguments(p)
    p.set_defaults(func=cmd_demo)
    return p


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--method", "-m", default="sclip", help="method shown first (default sclip)")
    p.add_argument("--clip", default="tiny-random", help="CLIP shown first: hub id, local directory or tiny-random")
    p.add_argument("--dino", default=None, help="DINOv2/DINO for methods that need it")
    p.add_argument("--sam", default=None, help="SAM/SAM2 for methods that need it (tuss)")
    p.add_argument(
        "--checkpoint",
        "--classifier",
        dest="checkpoint",
        default=None,
        help="trained weights (fmbseg) or a fitted tuss classifier folder",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument(
        "--max-models",
        type=int,
        default=DEFAULT_MAX_MODELS,
        help=f"segmenters kept loaded at once (default {DEFAULT_MAX_MODELS})",
    )
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (default 64e6)")


def cmd_demo(args: argparse.Namespace) -> int:
    gr = import_gradio()
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is not a port; use 1-65535 (e.g. 7860)")
    config = DemoConfig(
        method=args.method,
        clip=args.clip,
        dino=args.dino,
        sam=args.sam,
        checkpoint=args.checkpoint,
        device=args.device,
        max_models=args.max_models,
        max_pixels=args.max_pixels,
    )
    demo = build_demo(config)
    print(f"ovss: loading {config.method} with CLIP {config.clip} ...", file=sys.stderr)
    demo.ovss_app.preload()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None  # kill cleans up too
    print(f"ovss: demo on http://{args.host}:{args.port} (Ctrl+C to stop)", file=sys.stderr)
    try:
        demo.queue(default_concurrency_limit=1).launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            ssr_mode=False,  # no Node server
            inbrowser=False,
            show_error=True,
            quiet=True,
            theme=gr.themes.Default(),  # its fonts ship with gradio: the page fetches nothing from the internet
        )
    except OSError as e:  # the port is taken
        raise InputError(
            f"cannot listen on {args.host}:{args.port} ({(str(e).splitlines() or [''])[0]}); pass another --port"
        ) from None
    finally:
        demo.ovss_app.folders.cleanup()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """``python -m ovss.demo``: the same options as ``ovss demo``."""
    parser = argparse.ArgumentParser(
        prog="ovss demo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _demo_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_demo(args)
    except OvssError as e:
        print(f"ovss: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
