"""The Lightning side of training: the module, its optimisation rules, schedules, callbacks."""

from faceparse.training.callbacks import PredictionImages, ScoreReport
from faceparse.training.module import FaceParsingModule
from faceparse.training.schedulers import cosine_with_warmup

__all__ = ["FaceParsingModule", "PredictionImages", "ScoreReport", "cosine_with_warmup"]
