"""Two processes under torchrun (gloo, CPU): Sinkhorn over the global batch, identical parameters after a
step, and the same step as one process accumulating the two halves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ovss.methods.pixelclip as pc
from ovss.methods.pixelclip import model as M

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = """
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import torch, torch.distributed as dist
from safetensors.torch import save_file
import ovss.methods.pixelclip as pc
from ovss.methods.pixelclip import model as M, train as T
from ovss.methods.pixelclip.data import UnlabeledMaskDataset, list_images, pair_masks
from ovss.models.clip import load_clip

images, masks, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
T.init_distributed(torch.device("cpu"))
rank, world = T.world()
logits = torch.randn(5 + 3 * rank, 6, generator=torch.Generator().manual_seed(rank)) * 3
q = M.sinkhorn(logits, 3)
save_file({{"logits": logits, "q": q}}, str(out / f"sinkhorn{{rank}}.safetensors"))
settings = pc.train_settings({settings!r})
paths = list_images(images)
data = UnlabeledMaskDataset(paths, pair_masks(images, paths, masks), settings)
torch.manual_seed(0)
clip = load_clip("tiny-random")
trainer = T.Trainer(M.PixelCLIPModel(clip.model.train(), clip.tokenizer, settings), data, settings,
                    torch.device("cpu"), clip.mean, clip.std)
trainer.step(0)
save_file(trainer.state_tensors(), str(out / f"params{{rank}}.safetensors"))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_step(tmp_path):
    from test_pixelclip_train import SMALL, write_world

    images, masks = write_world(tmp_path / "world")
    settings = {**SMALL, "max_steps": 1}
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(SCRIPT.format(settings=settings)))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(script),
        str(images),
        str(masks),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # Sinkhorn: each rank's rows equal the single-process result on the concatenated logits
    parts = [load_file(str(tmp_path / f"sinkhorn{r}.safetensors")) for r in (0, 1)]
    whole = M.sinkhorn(torch.cat([p["logits"] for p in parts]), 3)
    assert torch.allclose(torch.cat([p["q"] for p in parts]), whole, atol=1e-6)
    # identical parameters on both ranks after the step
    a, b = (load_file(str(tmp_path / f"params{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the same as one process accumulating both micro-batches of the global batch
    from ovss.methods.pixelclip import train as T
    from ovss.methods.pixelclip.data import UnlabeledMaskDataset, list_images, pair_masks
    from ovss.models.clip import load_clip

    s = pc.train_settings(settings)
    paths = list_images(images)
    data = UnlabeledMaskDataset(paths, pair_masks(images, paths, masks), s)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip("tiny-random")
    trainer = T.Trainer(
        M.PixelCLIPModel(clip.model.train(), clip.tokenizer, s), data, s, torch.device("cpu"), clip.mean, clip.std
    )
    trainer.step(0)
    single = trainer.state_tensors()
    worst = max((single[k] - a[k]).abs().max().item() for k in a)
    assert worst < 1e-6, worst


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
