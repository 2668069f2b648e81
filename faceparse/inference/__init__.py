"""Running a trained parser on images: batched prediction on any device, the Python
predictor (:class:`Parser`) and the one model-loading function (:func:`load_model`)."""

from faceparse.inference.batch import Prediction, predict, prepare_for_inference
from faceparse.inference.model import LoadedModel, load_model
from faceparse.inference.predictor import Parser, ParseResult, UnusableBoxWarning

__all__ = ["LoadedModel", "ParseResult", "Parser", "Prediction", "UnusableBoxWarning",
           "load_model", "predict", "prepare_for_inference"]
