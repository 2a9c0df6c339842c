"""Backbone weights: what `init_from` may name, how it is read, and how a backbone is exported.

`load_backbone_weights` accepts:

- ``torchvision:resnet18|resnet50|resnet101``: torchvision's ImageNet-1k V1 weights
  (``ResNet50_Weights.IMAGENET1K_V1`` ...), the ones the papers start from. They go
  through torchvision's weights API and the torch hub cache,
  ``torch.hub.get_dir()/checkpoints/<file name of the weights' url>`` (TORCH_HOME
  moves it). A file already in the cache is read as it is, with no hash check
  (torch.hub does the same); a missing one is downloaded with torchvision's own
  ``check_hash=True``, so the hash is verified once, when the file arrives.
- a torchvision ResNet state dict (keys ``conv1.weight``, ``layer1.0.conv1.weight`` ...);
- a self-supervised checkpoint: MoCo v2 / DenseCL (``module.encoder_q.``), MoCo v3
  (``module.base_encoder.``) and the variants without ``module.`` or with
  ``backbone.``, the state dict at the top or nested under ``state_dict`` or
  ``model`` (beside ``epoch``, ``arch``, ``optimizer`` ...);
- a raycseg checkpoint: a dict with ``"format": "raycseg"`` and ``"backbone"``, saved as
  a file or as ``<dir>/state.pt``.

Of a state dict, the query encoder is kept: the known prefix that fits the most
backbone keys is removed (`ENCODER_PREFIXES`, in order of preference on a tie);
everything else is ignored: key encoders (``encoder_k``, ``momentum_encoder``),
heads (``fc``, ``head*``, ``predictor*``, ``neck*``), queues, non-tensor entries,
and the ResNet stages that a ``tiny`` backbone lacks. What remains must then fit the
backbone exactly (names and shapes), or loading fails naming the fix. Files are
always read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights

from raycseg.config import (
    TORCHVISION_WEIGHTS_NAMES,
    TORCHVISION_WEIGHTS_PREFIX,
    is_torchvision_weights,
)
from raycseg.errors import CsegError
from raycseg.run_directory import STATE_FILE

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

# `backbone` arguments are `raycseg.models.backbones.Backbone`s (which import this module):
# ResNet trunks with `name`, `width`, `stage_names` and `weights_reports`.
Backbone = torch.nn.Module

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
ENCODER_PREFIXES = (
    "module.encoder_q.",
    "module.base_encoder.",
    "encoder_q.",
    "base_encoder.",
    "module.backbone.",
    "backbone.",
    "module.",
    "",
)
IGNORED_KEY_STARTS = (
    "fc.",
    "head",
    "predictor",
    "neck",
    "queue",
    "encoder_k.",
    "momentum_encoder.",
)
NESTED_STATE_KEYS = ("state_dict", "model")


@dataclass
class WeightsReport:
    """What loading a weight source into a backbone did.

    Attributes:
        source: the init_from value or file that was read.
        mapped: how many backbone tensors were loaded.
        rule: how keys were mapped, e.g. "'state_dict' entry, prefix 'module.encoder_q.' removed".
        ignored: the source's entries that were not loaded, in file order.
    """

    source: str
    mapped: int
    rule: str
    ignored: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line for what was loaded and, if anything was left out, one for that."""
        lines = [f"init_from {self.source}: loaded {self.mapped} backbone tensors ({self.rule})"]
        if self.ignored:
            examples = ", ".join(_one_key_per_group(self.ignored))
            lines.append(
                f"init_from {self.source}: ignored {len(self.ignored)} entries (e.g. {examples})"
            )
        return lines


def load_backbone_weights(backbone: Backbone, source: str | Path) -> WeightsReport:
    """Load weights into `backbone` from torchvision's ImageNet weights or a weight file.

    The report is also appended to ``backbone.weights_reports`` (the trainer logs it).

    Args:
        backbone: the module to fill (its architecture must match the weights).
        source: ``torchvision:<name>``, a ``.pt``/``.pth`` file, or a checkpoint
            directory holding ``state.pt`` (see the module docstring for the formats).

    Raises:
        CsegError: unknown weights name, weights not in the cache and not downloadable,
            a missing or unreadable file, or keys/shapes that do not fit.
    """
    if is_torchvision_weights(source):
        loaded, label = read_torchvision_weights(str(source)), str(source)
    else:
        file = _weight_file(Path(source))
        loaded, label = read_tensor_file(file), str(file)
    return load_backbone_state(backbone, loaded, label)


def load_backbone_state(backbone: Backbone, loaded: Any, source: str) -> WeightsReport:
    """Load an already read weight object (see `load_backbone_weights`) into `backbone`.

    Args:
        backbone: the module to fill.
        loaded: what ``torch.load`` returned for the weights.
        source: how to name the weights in messages.

    Raises:
        CsegError: the object is no known format, or its keys/shapes do not fit.
    """
    if not isinstance(loaded, dict):
        raise CsegError(f"{source} holds a {type(loaded).__name__}, not a state dict or checkpoint")
    if "format" in loaded:
        state, rule, ignored = _raycseg_backbone_state(loaded, source), "raycseg checkpoint", []
    else:
        nested, state_dict = _unwrap_state_dict(loaded, source)
        state, prefix, ignored = map_encoder_keys(state_dict, backbone.state_dict())
        rule = _describe_rule(nested, prefix)
    _check_state_matches(backbone, state, source)
    backbone.load_state_dict(state, strict=False)
    report = WeightsReport(source=source, mapped=len(state), rule=rule, ignored=ignored)
    backbone.weights_reports.append(report)
    return report


def map_encoder_keys(
    state_dict: dict[str, Any], expected: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Keep the query encoder's tensors of `state_dict`, renamed to the backbone's keys.

    Args:
        state_dict: a (possibly wrapped) model state dict.
        expected: the backbone's state dict (only its keys are read).

    Returns:
        (the renamed tensors to load, the prefix that was removed, the ignored keys).
    """
    prefix = max(ENCODER_PREFIXES, key=lambda p: _count_fitting(state_dict, p, expected))
    present_stages = {key.split(".")[0] for key in expected}
    absent_stages = tuple(f"{s}." for s in RESNET_STAGES if s not in present_stages)
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        short = key[len(prefix) :]
        if (
            not key.startswith(prefix)
            or not isinstance(value, torch.Tensor)
            or short.startswith(IGNORED_KEY_STARTS + absent_stages)
        ):
            ignored.append(key)
        else:
            mapped[short] = value
    return mapped, prefix, ignored


def _count_fitting(state_dict: dict[str, Any], prefix: str, expected: dict[str, Any]) -> int:
    return sum(key.startswith(prefix) and key[len(prefix) :] in expected for key in state_dict)


def _describe_rule(nested: str | None, prefix: str) -> str:
    where = f"'{nested}' entry, " if nested else ""
    return where + (f"prefix '{prefix}' removed" if prefix else "keys as saved")


def _one_key_per_group(keys: list[str], limit: int = 4) -> list[str]:
    """The first key of each group (its first two dotted parts), at most `limit` of them."""
    firsts: dict[str, str] = {}
    for key in keys:
        firsts.setdefault(".".join(key.split(".")[:2]), key)
    return list(firsts.values())[:limit]


# ----------------------------------------------------------------------------- files


def _weight_file(path: Path) -> Path:
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise CsegError(
            f"no weights at {file}; point init_from at a torchvision ResNet state dict, "
            f"a raycseg checkpoint or torchvision ImageNet weights ({_names()})"
        )
    return file


def read_tensor_file(
    file: Path,
    *,
    map_location: str | torch.device = "cpu",
    what: str = "tensor-only torch weights",
    fix: str = "save a state dict with torch.save",
) -> Any:
    """`torch.load` with `weights_only=True`: the one reader of weight and checkpoint files.

    Raises:
        CsegError: the file is not a tensor-only torch file; the message says `what`
            was expected and the `fix`.
    """
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for a bad file
        raise CsegError(f"cannot read {file} as {what} ({type(error).__name__}); {fix}") from error


def _raycseg_backbone_state(loaded: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    if loaded["format"] != "raycseg" or not isinstance(loaded.get("backbone"), dict):
        raise CsegError(
            f"{source} is not a raycseg checkpoint (needs format='raycseg' and a 'backbone' "
            "state dict); pass a raycseg checkpoint or a torchvision state dict"
        )
    return dict(loaded["backbone"])


def _unwrap_state_dict(loaded: dict[str, Any], source: str) -> tuple[str | None, dict[str, Any]]:
    """The state dict of a checkpoint: nested under 'state_dict' or 'model', or `loaded` itself."""
    for key in NESTED_STATE_KEYS:
        if isinstance(loaded.get(key), dict):
            return key, loaded[key]
    if not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CsegError(
            f"{source} is neither a state dict (at the top or under 'state_dict' or 'model') "
            "nor a raycseg checkpoint; pass one of those"
        )
    return None, loaded


def _check_state_matches(backbone: Backbone, state: dict[str, torch.Tensor], source: str) -> None:
    expected = backbone.state_dict()
    missing = [
        key for key in expected if key not in state and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        key for key in state if key in expected and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong_shape:
        key = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} with other shapes (e.g. {key}: "
            f"{tuple(state[key].shape)} vs {tuple(expected[key].shape)})"
        )
    if problems:
        raise CsegError(
            f"weights in {source} do not fit backbone {backbone.name} "
            f"(width {backbone.width}): keys {'; '.join(problems)}; "
            "set the backbone name/width to the one the weights were trained with"
        )


# ----------------------------------------------------------------------------- torchvision


def imagenet_weights(init_from: str) -> WeightsEnum:
    """The torchvision ImageNet-1k V1 weights enum for ``torchvision:<name>``.

    Raises:
        CsegError: the name is not one of `TORCHVISION_WEIGHTS_NAMES`.
    """
    name = init_from.removeprefix(TORCHVISION_WEIGHTS_PREFIX)
    if name not in TORCHVISION_WEIGHTS_NAMES:
        raise CsegError(f"unknown weights {init_from}; use one of {_names()}")
    return get_model_weights(name).IMAGENET1K_V1


def cached_weights_file(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps `weights`: ``torch.hub.get_dir()/checkpoints/<url's file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def read_torchvision_weights(init_from: str, *, progress: bool = False) -> dict[str, torch.Tensor]:
    """Read torchvision's ImageNet weights for ``torchvision:<name>``, cached or downloaded.

    Args:
        init_from: ``torchvision:resnet18``, ``torchvision:resnet50`` or ``torchvision:resnet101``.
        progress: show torch.hub's download progress bar (on stderr).

    Raises:
        CsegError: an unknown name; the file is not cached and cannot be downloaded
            (the message names the file to place in the cache); or the cached file is unreadable.
    """
    weights = imagenet_weights(init_from)
    file = cached_weights_file(weights)
    was_cached = file.is_file()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torch.hub announces downloads on stdout
            return weights.get_state_dict(
                progress=progress,
                check_hash=True,
                weights_only=True,
                map_location="cpu",
                model_dir=str(file.parent),
            )
    except Exception as error:  # urllib, hash and torch.load errors alike
        if was_cached:
            raise CsegError(
                f"cannot read {file} as {init_from} ({type(error).__name__}); delete it "
                f"to download it again, or place a copy of {weights.url} there"
            ) from error
        raise CsegError(
            f"{init_from} needs ImageNet weights: place {file.name} in {file.parent} "
            f"(download {weights.url} on a connected machine)"
        ) from error


def _names() -> str:
    return ", ".join(TORCHVISION_WEIGHTS_PREFIX + name for name in TORCHVISION_WEIGHTS_NAMES)


# ----------------------------------------------------------------------------- export


def export_torchvision_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The backbone's weights as a plain torchvision ResNet state dict (all but ``fc``).

    Dilation changes no parameter shape, so a dilated backbone exports as it is.

    Raises:
        CsegError: the backbone is not a torchvision ResNet (``tiny``).
    """
    if backbone.name not in TORCHVISION_WEIGHTS_NAMES:
        raise CsegError(
            f"the {backbone.name} backbone is not a torchvision ResNet, so it has no "
            f"torchvision state dict; export a run of {', '.join(TORCHVISION_WEIGHTS_NAMES)}"
        )
    return dict(backbone.state_dict())
