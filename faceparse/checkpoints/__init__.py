"""Checkpoints: our format (metadata, building a net from it, decoder-only export), the
original FaceParsing project's files, reading a file once, loading and resuming."""

from faceparse.checkpoints.export import export_decoder_only
from faceparse.checkpoints.format import (
    META_KEY,
    build_face_parser,
    build_net,
    checkpoint_metadata,
)
from faceparse.checkpoints.load import load_face_parser, load_net_weights
from faceparse.checkpoints.locate import LocatedCheckpoint, locate_checkpoint
from faceparse.checkpoints.read import CheckpointFile, CheckpointKind, read_checkpoint
from faceparse.checkpoints.resume import ResumePoint, rng_states, set_rng_states, start_from

__all__ = [
    "META_KEY",
    "CheckpointFile",
    "CheckpointKind",
    "LocatedCheckpoint",
    "build_face_parser",
    "build_net",
    "checkpoint_metadata",
    "export_decoder_only",
    "load_face_parser",
    "load_net_weights",
    "locate_checkpoint",
    "read_checkpoint",
    "rng_states",
    "set_rng_states",
    "ResumePoint",
    "start_from",
]
