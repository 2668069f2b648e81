"""Evaluation the way papers report it: protocol, test-time augmentation, scoring, report."""

from faceparse.evaluation.protocol import Protocol, file_fingerprint
from faceparse.evaluation.report import write_report
from faceparse.evaluation.score import EvalResult, score_split
from faceparse.evaluation.tta import MultiPassTTA

__all__ = ["EvalResult", "Protocol", "MultiPassTTA", "file_fingerprint", "score_split",
           "write_report"]
