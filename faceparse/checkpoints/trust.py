"""What a checkpoint's net config may ask Hydra to build: our model classes, nothing else.

A checkpoint's ``faceparse.model`` entry is read data-only, but ``hydra.utils.instantiate``
calls whatever a ``_target_`` names, and Hydra follows attribute chains out of any module
(``faceparse.models.weights.torch.load`` is ``torch.load``). A file from the internet could
then run code without any pickle. So every node is checked before anything is built:
each ``_target_`` must be ``<a module of faceparse.models>.<ClassName>`` naming a module
class defined in that package, the only Hydra keys are ``_target_`` and ``_partial_``
(``_args_``, ``_recursive_``, ``_convert_`` never occur in our configs), and no value is
an interpolation (``${...}`` would run OmegaConf resolvers).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from faceparse.models import FaceParser

__all__ = ["MODELS_PACKAGE", "check_net_config", "model_class"]

MODELS_PACKAGE = "faceparse.models"
ALLOWED_HYDRA_KEYS = {"_target_", "_partial_"}
_HYDRA_KEY = re.compile(r"^_.*_$")


def _in_package(name: str) -> bool:
    return name == MODELS_PACKAGE or name.startswith(MODELS_PACKAGE + ".")


def model_class(target: Any) -> type[nn.Module] | None:
    """The model class ``target`` names exactly, or None when it names anything else.

    Only modules inside :data:`MODELS_PACKAGE` are imported (our own code); the last part
    must be a class attribute of that module, so no attribute chain leads elsewhere.
    """
    if not isinstance(target, str):
        return None
    module_name, _, class_name = target.rpartition(".")
    if not _in_package(module_name) or not class_name.isidentifier():
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # e.g. faceparse.models.weights.torch: an attribute, no module
        return None
    if module.__name__ != module_name:
        return None
    cls = getattr(module, class_name, None)
    if (inspect.isclass(cls) and issubclass(cls, nn.Module) and _in_package(cls.__module__)
            and not class_name.startswith("_")):
        return cls
    return None


def _problems(node: Any, at: str) -> list[str]:
    """Every reason to refuse ``node`` (at config path ``at``)."""
    if isinstance(node, str):
        return [f"{at or 'the config'} is an interpolation ({node!r})"] if "${" in node else []
    if isinstance(node, (list, tuple)):
        return [p for i, v in enumerate(node) for p in _problems(v, f"{at}[{i}]")]
    if not isinstance(node, Mapping):
        return []
    found = []
    where = at or "the top level"
    for key in node:
        if not isinstance(key, str):
            found.append(f"{where} has a non-string key {key!r}")
        elif _HYDRA_KEY.match(key) and key not in ALLOWED_HYDRA_KEYS:
            found.append(f"{where} sets Hydra's {key}")
    if "_target_" in node and model_class(node["_target_"]) is None:
        found.append(f"{where} names {node['_target_']!r}, which is no faceparse model class")
    if "_partial_" in node and ("_target_" not in node or not isinstance(node["_partial_"], bool)):
        found.append(f"{where} has a _partial_ of {node['_partial_']!r} "
                     f"without a model class to apply it to")
    for key, value in node.items():
        if isinstance(key, str):
            found += _problems(value, f"{at}.{key}" if at else key)
    return found


def check_net_config(config: Mapping[str, Any], source: str = "the net config") -> None:
    """Refuse (ValueError, one line) a net config that could build anything but our model.

    Run before any ``instantiate``: nothing of a refused config is called.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: its net config is a {type(config).__name__}, not a mapping")
    problems = _problems(config, "")
    root = model_class(config.get("_target_"))
    if not problems and (root is None or not issubclass(root, FaceParser)):
        problems.append(f"its top level builds {config.get('_target_')!r}, not a FaceParser")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{source}: refusing to build its net config: {'; '.join(problems[:3])}"
                         f"{more}. A checkpoint may only name faceparse model classes "
                         f"(faceparse.models.<Class>); was the file crafted or damaged?")
