"""The ``predict`` bench section: a folder of 512 px JPEGs end to end against the model alone.

End to end is what ``python -m faceparse.predict`` does per photo (decode in workers,
resize, normalise, model, logits back to the photo, argmax, write the mask and colour
PNGs and, with ``bench.predict.save_overlay`` (predict's default: on), the overlay and
visualization, in writer threads); model only is the forward pass on the same number of
prepared inputs. Their ratio says whether users wait for the model or for the code around
it; the result names the files written per photo.
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
from faceparse.inference.images import output_stems, read_photo
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
    """Images/s end to end and model only, and the model's share of the time."""
    options = cfg.bench.predict
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = folder / "model.ckpt"
        meta = checkpoint_metadata(net.config, get_scheme(cfg.data.labels), cfg.data.image_size)
        torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                    META_KEY: meta}, ckpt)
        parser = Parser.from_checkpoint(ckpt, device=cfg.bench.device,
                                        batch_size=cfg.data.batch_size)
        files = write_photos(folder / "in", int(options.images), int(options.photo_size))
        prepared = torch.stack([parser.prepare(read_photo(f))[0] for f in files])
        parser.forward(prepared[: cfg.data.batch_size])  # warm-up
        start = time.perf_counter()
        parser.forward(prepared)
        if parser.model.device.type == "cuda":
            torch.cuda.synchronize()
        model_s = time.perf_counter() - start
        out = WriteOptions(folder / "out", save_overlay=bool(options.save_overlay))
        summary = predict_files(parser, files, output_stems(files, folder / "in"), out,
                                cfg.data.batch_size, int(options.workers))
    written = [p.name.split("_", 2)[-1]
               for p in output_paths(out.out_dir, Path("photo_x"), out.save_overlay, False)]
    return {"images": len(files), "photo_size": int(options.photo_size),
            "image_size": parser.image_size, "batch_size": cfg.data.batch_size,
            "device": str(parser.model.device), "workers": int(options.workers),
            "writer_threads": writer_threads(parser.model.device, int(options.workers)),
            "torch_threads": torch.get_num_threads(),
            "save_overlay": out.save_overlay, "written_per_photo": written,
            "end_to_end_images_per_s": summary.images_per_s,
            "model_images_per_s": len(files) / model_s,
            "end_to_end_over_model": summary.images_per_s * model_s / len(files),
            "model_share": model_s / summary.seconds, "failed": len(summary.failed)}
