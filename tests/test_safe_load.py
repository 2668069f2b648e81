"""Reading checkpoint files safely: pickled code refused, files that are no checkpoint named.

Every command reads through ``safe_load`` / ``read_checkpoint``, so each refusal here is
what predict, eval, export and train print.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceparse.checkpoints import load_face_parser, read_checkpoint, start_from
from faceparse.deploy.exporters import export_torchscript
from faceparse.inference.model import load_model
from faceparse.labels import get_scheme
from faceparse.safe_load import NotACheckpointError, UnsafeCheckpointError, safe_load


def _pwned(marker: str) -> None:
    Path(marker).write_text("code ran")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_pwned, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, path)
    for load in (safe_load, load_face_parser, read_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match="_pwned") as info:
            load(path)
        assert "trust_pickle" in str(info.value)
    result = subprocess.run(  # a command, as a user runs it
        [sys.executable, "-m", "faceparse.export_decoder", f"ckpt={path}",
         f"out={tmp_path / 'out.ckpt'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert f"{path} was refused" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before its work: no run folder
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()
    for typed, shown in (("no", "no"), ("off", "off"), (1, "1"), (None, "null")):
        with pytest.raises(ValueError, match=f"trust_pickle={shown}: use true or false"):
            safe_load(path, trust_pickle=typed)  # bool("no") is True: only True unpickles
    assert not marker.exists()
    safe_load(path, trust_pickle=True)  # the explicit opt-in really unpickles
    assert marker.read_text() == "code ran"


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        load_face_parser(tmp_path / "absent.ckpt")
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="neither a faceparse checkpoint"):
        load_face_parser(tmp_path / "other.ckpt")



def _truncated_checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"net.w": torch.zeros(4000)}}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _jpeg(path: Path) -> None:
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(path, format="JPEG")


def _torchscript(path: Path) -> None:
    """What ``faceparse.export format=torchscript`` writes, from a one-layer net."""
    net = torch.nn.Conv2d(3, 2, 1)
    net.size_multiple = 1
    export_torchscript(net, path, get_scheme("ourface"), 8, dynamic=False)


NOT_CHECKPOINTS = {  # how to write the file, what the refusal says
    "empty": (lambda p: p.write_bytes(b""), "is not a PyTorch checkpoint: the file is empty"),
    "random bytes": (lambda p: p.write_bytes(random.Random(0).randbytes(5000)),
                     "is not a PyTorch checkpoint (corrupt, or another file type"),
    "JPEG renamed": (_jpeg, "is not a PyTorch checkpoint (corrupt, or another file type"),
    "truncated": (_truncated_checkpoint,
                  "is not a PyTorch checkpoint (corrupt, or another file type"),
    "TorchScript export": (_torchscript, "is a TorchScript archive (what faceparse.export "
                                         "format=torchscript writes): TorchScript exports are "
                                         "not loaded by predict, eval"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
@pytest.mark.parametrize("trust_pickle", [False, True])
def test_a_file_that_is_no_checkpoint_is_named_without_the_pickle_hint(
        kind: str, trust_pickle: bool, tmp_path: Path) -> None:
    """The trust_pickle hint would only talk users out of the safety check for nothing."""
    write, message = NOT_CHECKPOINTS[kind]
    path = tmp_path / "model.ckpt"
    write(path)
    readers = (safe_load, read_checkpoint, load_face_parser, start_from_a_net, load_model)
    for read in readers:  # every command reads through one of these
        with pytest.raises(NotACheckpointError) as info:
            read(path, trust_pickle=trust_pickle)
        text = str(info.value)
        assert text.startswith(f"{path} {message}"), (read, text)
        assert "trust_pickle" not in text and "weights_only" not in text and "\n" not in text
    assert isinstance(info.value, ValueError)  # the commands' one-line errors catch these


def start_from_a_net(path: Path, trust_pickle: bool) -> None:
    """``faceparse.train ckpt_path=<path>``'s reading of the file."""
    start_from(path, torch.nn.Linear(1, 1), get_scheme("ourface"), trust_pickle)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_a_real_pickle_the_data_only_reader_cannot_check_keeps_the_opt_in(
        tmp_path: Path) -> None:
    """pickle_protocol=4 holds the same references in opcodes the data-only reader lacks."""
    path = tmp_path / "protocol4.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(3)}}, path, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="STACK_GLOBAL.*trust_pickle=true"):
        read_checkpoint(path)
    assert torch.equal(safe_load(path, trust_pickle=True)["state_dict"]["net.w"], torch.ones(3))


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_eval_of_an_empty_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "faceparse.eval", f"ckpt={empty}",
                             f"hydra.run.dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"error: {empty} is not a PyTorch checkpoint: the file is empty" in result.stderr
    assert "Traceback" not in result.stderr and "EOFError" not in result.stderr
