"""Running a trained parser on images: batched prediction on any device."""

from faceparse.inference.batch import Prediction, predict, prepare_for_inference

__all__ = ["Prediction", "predict", "prepare_for_inference"]
