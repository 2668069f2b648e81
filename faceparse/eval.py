"""Evaluate a checkpoint like the papers: ``python -m faceparse.eval ckpt=... data=... split=test``.

Loads any supported checkpoint (file or run folder), scores one split of any dataset in
one confusion matrix, optionally with flip/multi-scale TTA and at each mask's own
resolution (the image resized to its mask), and writes a report folder that states its
protocol (``faceparse.evaluation``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from faceparse.checkpoints import load_face_parser, locate_checkpoint, read_checkpoint
from faceparse.checkpoints.load import check_vit_weights
from faceparse.checkpoints.locate import LocatedCheckpoint
from faceparse.cli import (
    command_line_keys,
    hydra_entry,
    instantiate_option,
    keep_run_folder,
    one_line_errors,
)
from faceparse.data.loaders import single_thread_opencv
from faceparse.evaluation import MultiPassTTA, Protocol, file_fingerprint, score_split
from faceparse.evaluation.data_module import load_run_data, open_data_module, worker_count
from faceparse.evaluation.options import eval_options
from faceparse.evaluation.report import write_report
from faceparse.evaluation.samples import EvalSamples, collate_samples
from faceparse.evaluation.score import scores_in_bf16
from faceparse.inference.batch import prepare_for_inference
from faceparse.inference.model import resolve_device
from faceparse.labels import LabelScheme, get_scheme, mapping_lut
from faceparse.models.dinov3 import DinoVitEncoder, has_bf16_frozen_vit
from faceparse.training.run_folder import CONFIG_FILE
from faceparse.writable import check_output_dir, output_dir

log = logging.getLogger(__name__)


def scoring_scheme(model: LabelScheme, data_labels: str, labels: str | None) -> LabelScheme:
    """The scheme predictions and truth are compared in; a class mismatch is refused."""
    if labels is not None:
        return get_scheme(labels)
    data = get_scheme(data_labels)
    if data.class_names != model.class_names:
        raise ValueError(
            f"the checkpoint predicts {model.num_classes} '{model.name}' classes but "
            f"data.labels={data.name} has {data.num_classes}: set data.labels={model.name}, "
            f"or labels=<scheme> (e.g. labels=ourface) to score both in a common scheme"
        )
    return data


@contextlib.contextmanager
def labels_named(labels: str | None, what: str) -> Iterator[None]:
    """A ``labels=`` the classes cannot be mapped to, refused naming the option and what
    would be mapped (labels.py's words name two schemes and neither option)."""
    try:
        yield
    except ValueError as err:
        if labels is None or not str(err).startswith("no mapping from label scheme"):
            raise
        raise ValueError(f"labels={labels}: {what} cannot be scored in it ({err})") from None


def raw_files_unless(cfg: DictConfig, data: DictConfig | None = None) -> dict[str, Any]:
    """Reader overrides that skip the prepared copy (resized JPEGs) unless it may be used.

    Scoring at the original resolution needs the original masks; at the model size the
    prepared copy is used only when ``use_prepared=true`` (its images are re-encoded).
    """
    if "prepared_dir" not in (cfg.data if data is None else data).dataset:
        return {}
    if cfg.use_prepared and cfg.resolution == "original":
        log.warning("use_prepared=true is ignored at resolution=original: the prepared copy "
                    "holds resized masks")
    keep = bool(cfg.use_prepared) and cfg.resolution == "model"
    return {} if keep else {"prepared_dir": None}


def run_folder_of(located: LocatedCheckpoint) -> Path | None:
    """The training run a checkpoint belongs to: the folder given as ``ckpt=``, or the one
    around ``<run>/checkpoints/<file>.ckpt``; None for a file on its own."""
    run = located.run_dir or located.path.parent.parent
    return run if located.path.parent.name == "checkpoints" and (run / CONFIG_FILE).is_file() \
        else None


@dataclass(frozen=True)
class DataSource:
    """Where the data scored was configured: the protocol says so, since a run's own test
    set and eval's default synthetic faces give other scores."""

    origin: str  # "the command line", "eval's defaults" or "the run's <config file>"
    typed: tuple[str, ...] = ()  # data.* keys the command line set over the run's config
    from_run: bool = False

    def without(self, key: str) -> DataSource:
        """This source no longer naming ``key`` as typed: a key the checkpoint overrode did
        not set the data scored."""
        return replace(self, typed=tuple(k for k in self.typed if k != key))

    def describe(self) -> str:
        typed = f", with {', '.join(self.typed)} from the command line" if self.typed else ""
        return self.origin + typed


def data_to_score(cfg: DictConfig, located: LocatedCheckpoint,
                  command_keys: list[str] | None) -> tuple[DictConfig, DataSource]:
    """The data config to score, and where it came from.

    A run is scored on its own data (its test split, rendered or listed with its options:
    ``data.dataset.fractions``, a synthetic ``render_size``) unless the command line picks
    another (``data=<dataset>``); eval's default, synthetic faces at 256 px, would be another
    test set. Single keys typed (``data.root=`` where the data lives on this machine) change
    the run's data, not eval's default: ``data.root`` alone must not score synthetic faces.
    """
    run = run_folder_of(located)
    if command_keys is None or "data" in command_keys:
        return cfg.data, DataSource("the command line")
    typed = [k for k in command_keys if k.startswith("data.")]
    if run is None or not cfg.run_data:
        return cfg.data, DataSource("the command line" if typed else "eval's defaults")
    saved = load_run_data(run / CONFIG_FILE)
    for key in typed:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    return saved.data, DataSource(f"the run's {run / CONFIG_FILE}", tuple(typed), from_run=True)


def input_size(options_size: int | None, ckpt_size: Any, data: DictConfig,
               command_keys: list[str] | None) -> tuple[int, bool]:
    """The input side: ``image_size=``, else the checkpoint's training size, else
    ``data.image_size``; and whether a typed ``data.image_size`` was overridden by the
    checkpoint's size (it is then not the size scored at: a warning says so)."""
    size = int(options_size or ckpt_size or data.image_size)
    typed = command_keys is not None and "data.image_size" in command_keys
    overridden = typed and options_size is None and bool(ckpt_size)
    if overridden and int(data.image_size) != size:
        log.warning("data.image_size=%s is not the input size: the checkpoint's training size "
                    "%d px is (the README's default); image_size=%s scores at %s px",
                    data.image_size, size, data.image_size, data.image_size)
    return size, overridden


def vit_file_of(net: nn.Module) -> tuple[str | None, str | None]:
    """The DINOv3 file a net's ViT was read from (a checkpoint without ViT weights), and
    its sha256: two such files of one shape give two scores from one checkpoint."""
    files = [m.weights_file for m in net.modules()
             if isinstance(m, DinoVitEncoder) and m.weights_file]
    return (files[0], file_fingerprint(files[0])) if files else (None, None)


def precision_of(net: nn.Module, device: torch.device) -> str:
    """What the scores were computed in (bf16 moves a few pixels' labels): bf16 autocast
    on a GPU (:func:`score_split`), else fp32, noting a frozen ViT whose weights the fast
    path stored in bf16 (it then runs in bf16 whatever the rest does)."""
    if scores_in_bf16(device):
        return "bf16 autocast"
    return "fp32, the frozen ViT in bf16" if has_bf16_frozen_vit(net) else "fp32"


def evaluate(cfg: DictConfig, command_keys: list[str] | None = None) -> dict[str, Any]:
    """Score ``cfg.ckpt`` on ``cfg.split`` of ``cfg.data`` (a run's own data when the
    command line, whose keys ``command_keys`` are, sets none); write and return the report."""
    options = eval_options(cfg)  # every option checked before the checkpoint is read
    out = check_output_dir(cfg.out or cfg.paths.output_dir, "out")  # created only with the report
    located = locate_checkpoint(cfg.ckpt)
    vit_weights = check_vit_weights(cfg.vit_weights)  # load_face_parser warns if unused
    data, data_from = data_to_score(cfg, located, command_keys)
    datamodule = open_data_module(data)  # its options refused before the checkpoint is read
    workers = worker_count(data)
    ckpt = read_checkpoint(located.path, options.trust_pickle)
    net, model_scheme = load_face_parser(ckpt, vit_weights)
    scored = scoring_scheme(model_scheme, data.labels, cfg.labels)
    with labels_named(cfg.labels, f"the checkpoint's '{model_scheme.name}' predictions"):
        to_scored = mapping_lut(model_scheme, scored)
    image_size, overridden = input_size(options.image_size,
                                        (ckpt.metadata or {}).get("image_size"), data,
                                        command_keys)
    if overridden:
        data_from = data_from.without("data.image_size")
    if data_from.from_run:
        log.info("scoring on %s; data=<dataset> on the command line scores another",
                 data_from.describe())
    if image_size % net.size_multiple:
        raise ValueError(f"image_size={image_size} is not a multiple of the model's "
                         f"{net.size_multiple}: set image_size= to a multiple of it")
    device = resolve_device(str(cfg.device))
    net = prepare_for_inference(net, device, instantiate_option(cfg.fast_path),
                                bf16=scores_in_bf16(device))

    with labels_named(cfg.labels, f"the data's '{data.labels}' masks (data.labels)"):
        reader = datamodule.open_dataset(str(cfg.split), None, image_size, labels=scored.name,
                                         **raw_files_unless(cfg, data))
    if len(reader) == 0:
        raise ValueError(f"split={cfg.split} of data={type(reader).__name__} has no samples")
    samples = EvalSamples(reader, image_size, options.resolution == "original")
    if workers:
        single_thread_opencv()
    loader = DataLoader(samples, batch_size=int(data.eval_batch_size or data.batch_size),
                        num_workers=workers, collate_fn=collate_samples,
                        pin_memory=device.type == "cuda")
    tta = MultiPassTTA(options.flip, options.scales, net.size_multiple)
    tta.check_sides(image_size)  # the net sees image_size squares, at either resolution
    keep_run_folder()  # what fails from here on failed a run: its log stays
    result = score_split(net, loader, model_scheme, to_scored, scored.num_classes, tta, device,
                         options.worst)
    if result.samples == 0:
        raise ValueError(f"no sample of split={cfg.split} could be scored: all {len(reader)} "
                         f"were bad (the warnings above name them; e.g. "
                         f"{result.skipped[0] if result.skipped else 'none'})")
    present = result.scores["present"].tolist()
    vit_file = vit_file_of(net)
    protocol = Protocol(
        checkpoint=str(located.path), checkpoint_sha256=file_fingerprint(located.path),
        model_labels=model_scheme.name, dataset=type(reader).__name__,
        dataset_labels=reader.native_scheme.name, scored_labels=scored.name,
        source="prepared copy" if getattr(reader, "prepared", None) else "original files",
        split=str(cfg.split), samples=result.samples,
        skipped=[*result.skipped, *(f"{i} (skipped by prepare as unreadable)"
                                    for i in getattr(reader, "prepare_skipped", []))],
        left_out=list(getattr(reader, "left_out", [])),
        resolution=options.resolution, image_size=image_size, tta=tta.describe(image_size),
        precision=precision_of(net, device),
        data_from=data_from.describe(),
        data_root=None if data.get("root") is None else str(data.root),
        data_options=OmegaConf.to_container(data.dataset, resolve=True),
        vit_weights=vit_file[0], vit_weights_sha256=vit_file[1],
        background=[scored.class_names[0]],
        averaged=[n for i, n in enumerate(scored.class_names) if i and present[i]],
    )
    report = write_report(output_dir(out, "out"), result, scored, protocol)
    log.info("%s", protocol.describe())
    log.info("report written to %s", out)
    return report


@hydra_entry("eval")
@one_line_errors(ValueError, KeyError, FileNotFoundError, ImportError)
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg, command_line_keys())["f1_mean"]


if __name__ == "__main__":
    main()
