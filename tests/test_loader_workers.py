"""Loader workers start cleanly even after the parent process used OpenCV's thread pool."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import cv2, numpy as np
    from faceparse.data.datamodule import FaceDataModule
    from faceparse.data.synthetic import SyntheticFaces
    from functools import partial

    cv2.setNumThreads(2)  # the parent's pool is alive when the workers are forked
    for _ in range(3):
        cv2.resize(np.zeros((2048, 2048, 3), np.uint8), (1024, 1024))
    dm = FaceDataModule(partial(SyntheticFaces, sizes={"train": 4, "val": 2, "test": 2}),
                        image_size=32, batch_size=2, num_workers=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    print(tuple(batch["image"].shape))
""")


def test_workers_do_not_hang_after_the_parent_used_opencv_threads() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(2, 3, 32, 32)" in result.stdout
