"""The Lightning side of training: the module, its optimisation rules, schedules, callbacks."""

from faceparse.training.callbacks import PredictionImages, ScoreReport
from faceparse.training.module import FaceParsingModule
from faceparse.training.schedulers import cosine_with_warmup
from faceparse.training.wandb_media import WandbMedia

__all__ = ["FaceParsingModule", "PredictionImages", "ScoreReport", "WandbMedia",
           "cosine_with_warmup"]
