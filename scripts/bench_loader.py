"""Loader throughput (images/s) at 512 px with the full train augmentation.

Compares raw CelebAMask-HQ (1024 px JPEG + one 512 px PNG per part, merged per sample),
its prepared copy (512 px JPEG + one label PNG) and FaceSynthetics (512 px PNG pairs),
on synthetic faces written in each real layout under a temporary folder::

    python scripts/bench_loader.py --samples 32 --workers 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import DataLoader

from faceparse.bench.measure import machine
from faceparse.bench.report import machine_line
from faceparse.data.loaders import seed_worker_transform, single_thread_opencv
from faceparse.data.prepare import prepare_dataset
from faceparse.data.readers.celebamask import CelebAMaskHQ
from faceparse.data.readers.facesynthetics import FaceSynthetics
from faceparse.data.synthetic import render_face, write_facesynthetics
from faceparse.data.transforms import train_transform
from faceparse.labels import CELEBAMASK, FACESYNTHETICS

# FaceSynthetics class -> CelebAMask-HQ part (others are background)
PARTS = {"skin": "skin", "nose": "nose", "right_eye": "r_eye", "left_eye": "l_eye",
         "right_brow": "r_brow", "left_brow": "l_brow", "right_ear": "r_ear",
         "left_ear": "l_ear", "mouth_interior": "mouth", "top_lip": "u_lip",
         "bottom_lip": "l_lip", "neck": "neck", "hair": "hair", "beard": "skin",
         "clothing": "cloth", "glasses": "eye_g", "headwear": "hat"}


def write_celebamask(root: Path, count: int) -> None:
    """``count`` faces in CelebAMask-HQ's layout, all in the train split."""
    (root / "CelebA-HQ-img").mkdir(parents=True)
    mapping, partition = ["idx orig_idx orig_file"], []
    for i in range(count):
        image, mask = render_face(1, i, 1024)
        cv2.imwrite(str(root / "CelebA-HQ-img" / f"{i}.jpg"), image[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        mask = cv2.resize(mask, (512, 512), interpolation=cv2.INTER_NEAREST)
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for part in CELEBAMASK.class_names[1:]:
            ids = [FACESYNTHETICS.index(k) for k, v in PARTS.items() if v == part]
            region = np.isin(mask, ids)
            if region.any():
                white = np.repeat(region[..., None] * np.uint8(255), 3, axis=2)
                cv2.imwrite(str(folder / f"{i:05d}_{part}.png"), white)
        mapping.append(f"{i}  {i}  {i + 1:06d}.jpg")
        partition.append(f"{i + 1:06d}.jpg 0")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")


def throughput(dataset, workers: int, passes: int) -> float:
    """Images per second over ``passes`` epochs, after one warm-up batch."""
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, worker_init_fn=seed_worker_transform)
    next(iter(loader))
    start, seen = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    single_thread_opencv()
    with tempfile.TemporaryDirectory() as tmp:
        celeba, synth = Path(tmp) / "CelebAMask-HQ", Path(tmp) / "FaceSynthetics"
        write_celebamask(celeba, args.samples)
        write_facesynthetics(synth, args.samples * 20 // 18 + 1, size=512)  # ~samples in train
        prepare_dataset(lambda s: CelebAMaskHQ(s, celeba), celeba / "prepared_512", 512,
                        ["train"], workers=1)
        transform = train_transform(512, "ourface")
        datasets = {
            "CelebAMask-HQ raw": CelebAMaskHQ("train", celeba, transform=transform),
            "CelebAMask-HQ prepared": CelebAMaskHQ("train", celeba, transform=transform,
                                                   prepared_dir=celeba / "prepared_512"),
            "FaceSynthetics": FaceSynthetics("train", synth, transform=transform),
        }
        print(f"{'layout':<24}{'workers':>8}{'images/s':>10}")
        for name, dataset in datasets.items():
            for workers in args.workers:
                rate = throughput(dataset, workers, args.passes)
                print(f"{name:<24}{workers:>8}{rate:>10.1f}", flush=True)
    print(machine_line({"machine": machine()}))  # figures are never compared blind


if __name__ == "__main__":
    main()
