"""Telling an ONNX model from a PyTorch checkpoint by its bytes, not its file name.

A ``model.onnx`` renamed ``model.ckpt`` (or a checkpoint saved as ``.onnx``) must still go
to the reader that can read it, or be refused as what it is, not as a "corrupt file".
An ONNX file is a serialised ``ModelProto`` protobuf; protobuf writers emit fields in
field-number order, so a model starts with ``ir_version`` (field 1, a varint) followed by
another ``ModelProto`` field. A ``torch.save`` file starts with a zip header or a pickle.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_onnx_model", "is_torch_file"]

# ModelProto after ir_version (field 1, once): 2-4 producer/domain, 5 model_version (a
# varint), 6 doc_string, 7 graph, 8 opset_import, 14 metadata_props, 20 training_info,
# 25 functions
_VARINT_FIELDS = {5}
_LENGTH_FIELDS = {2, 3, 4, 6, 7, 8, 14, 20, 25}
_IR_VERSIONS = range(1, 64)  # 3 (2017) to 11 (2025); room for later ones
_HEAD = 64


def _varint(data: bytes, start: int) -> tuple[int, int] | None:
    """The varint at ``start`` and the index after it, or None when it runs off ``data``."""
    value, shift = 0, 0
    for index in range(start, min(len(data), start + 10)):
        value |= (data[index] & 0x7F) << shift
        if not data[index] & 0x80:
            return value, index + 1
        shift += 7
    return None


def is_onnx_model(path: str | Path) -> bool:
    """Whether ``path`` starts the way every ONNX model does: ``ir_version``, then a
    ``ModelProto`` field with its right wire type. Unreadable files are not ONNX."""
    try:
        with Path(path).open("rb") as file:
            head = file.read(_HEAD)
    except OSError:
        return False
    if not head or head[0] != 0x08:  # field 1, wire type 0
        return False
    version = _varint(head, 1)
    if version is None or version[0] not in _IR_VERSIONS:
        return False
    tag = _varint(head, version[1])
    if tag is None:
        return False
    field, wire_type = tag[0] >> 3, tag[0] & 7
    return (wire_type == 0 and field in _VARINT_FIELDS
            or wire_type == 2 and field in _LENGTH_FIELDS)


def is_torch_file(path: str | Path) -> bool:
    """Whether ``path`` starts as a ``torch.save`` file does: a zip archive or a pickle."""
    try:
        with Path(path).open("rb") as file:
            head = file.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
