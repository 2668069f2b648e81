"""The ``predict`` bench section: a folder of 512 px JPEGs end to end against the model alone.

End to end is what ``python -m faceparse.predict`` does per photo (decode, resize,
normalise, model, logits back to the photo, argmax, write the mask and colour PNGs and,
with ``bench.predict.save_overlay``, the overlay and visualization); model only is the
forward pass on the same number of prepared inputs, in alternating runs. Their ratio says
whether users wait for the model or for the code around it; so does ``model_share``, the
model passes' share of each end-to-end run, timed inside the run and so immune to the
drift of a shared machine between runs (their ratio moved by +-15% on a 2-core VM).
The result names the files written per photo.

The photo side costs more where labels change (the argmax is taken at boundaries, and
PNGs of busy maps take longer to compress) and a net with random weights tends to give one
class everywhere, so ``bench.predict.ckpt`` takes a trained checkpoint (run at the size it
was trained at, as predict does) and the result reports the share of boundary pixels.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from faceparse.checkpoints import META_KEY, checkpoint_metadata
from faceparse.inference.folder import WriteOptions, predict_files, writer_threads
from faceparse.inference.images import read_photo
from faceparse.inference.listing import output_stems
from faceparse.inference.outputs import output_paths
from faceparse.inference.predictor import Parser
from faceparse.labels import get_scheme

__all__ = ["bench_predict", "write_photos"]


def write_photos(folder: Path, count: int, side: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``side`` px: shifted crops of scikit-image's astronaut photo."""
    from skimage.data import astronaut

    base = cv2.resize(astronaut(), (side + 64, side + 64), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n in range(count):
        y, x = rng.integers(0, 64, 2)
        files.append(folder / f"photo_{n:03d}.jpg")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(base[y:y + side, x:x + side], cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    return files


def bench_predict(cfg: DictConfig) -> dict[str, Any]:
    """Images/s end to end and model only (medians of ``repeats`` alternating runs), and
    the model's share of the time."""
    options = cfg.bench.predict
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = Path(options.ckpt) if options.get("ckpt") else _random_checkpoint(cfg, folder)
        parser = Parser.from_checkpoint(ckpt, device=cfg.bench.device,
                                        batch_size=cfg.data.batch_size)
        files = write_photos(folder / "in", int(options.images), int(options.photo_size))
        prepared = torch.stack([parser.prepare(read_photo(f))[0] for f in files])
        parser.forward(prepared[: cfg.data.batch_size])  # warm-up
        model_s, run_s, share = [], [], []
        for repeat in range(int(options.repeats)):  # alternating: load drifts hit both
            start = time.perf_counter()
            parser.forward(prepared)
            if parser.model.device.type == "cuda":
                torch.cuda.synchronize()
            model_s.append(time.perf_counter() - start)
            out = WriteOptions(folder / f"out{repeat}", save_overlay=bool(options.save_overlay))
            summary = predict_files(parser, files, output_stems(files, folder / "in"), out,
                                    cfg.data.batch_size, int(options.workers))
            run_s.append(summary.seconds)
            share.append(summary.model_seconds / summary.seconds)
        masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in out.out_dir.glob("*_mask.png")]
    written = [p.name.split("_", 2)[-1]
               for p in output_paths(out.out_dir, Path("photo_x"), out.save_overlay, False)]
    model, run = float(np.median(model_s)), float(np.median(run_s))
    return {"images": len(files), "photo_size": int(options.photo_size),
            "image_size": parser.image_size, "batch_size": cfg.data.batch_size,
            "device": str(parser.model.device), "workers": int(options.workers),
            "writer_threads": writer_threads(parser.model.device, int(options.workers)),
            "torch_threads": torch.get_num_threads(),
            "save_overlay": out.save_overlay, "written_per_photo": written,
            "repeats": len(run_s), "end_to_end_images_per_s": len(files) / run,
            "model_images_per_s": len(files) / model,
            "end_to_end_over_model": model / run,
            "end_to_end_over_model_per_repeat": [
                m / r for m, r in zip(model_s, run_s, strict=True)],
            "model_share": float(np.median(share)), "failed": len(summary.failed),
            "weights": str(options.ckpt) if options.get("ckpt") else "random",
            "boundary_share": float(np.mean([boundary_share(m) for m in masks])),
            "classes_per_photo": float(np.mean([len(np.unique(m)) for m in masks]))}


def _random_checkpoint(cfg: DictConfig, folder: Path) -> Path:
    """``cfg.model.net`` with random weights, saved as predict reads it."""
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    path = folder / "model.ckpt"
    meta = checkpoint_metadata(net.config, get_scheme(cfg.data.labels), cfg.data.image_size)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                META_KEY: meta}, path)
    return path


def boundary_share(labels: np.ndarray) -> float:
    """Share of pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    return float(edge.mean())
