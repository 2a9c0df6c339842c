"""What the trackers take from the environment, and how their errors are told without secrets.

Tracking URIs, projects and keys come from the environment only (`MLFLOW_TRACKING_URI`,
`MLFLOW_EXPERIMENT_NAME`, `WANDB_PROJECT`, `WANDB_MODE`, `WANDB_API_KEY`, ...) and are
never written into recipes, logs or reports: a failure is told by the exception's
type and first line, with URL credentials and the values of secret-looking variables
masked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import netrc
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from ..storage import is_url

LOGGERS = ("tensorboard", "mlflow", "wandb")
LIBRARIES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
DEFAULT_WANDB_PROJECT = "raycseg"
SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def not_installed(logger: str) -> str:
    """The one warning line for a tracker whose library is missing."""
    return (
        f"storage.loggers: {logger} is not installed; pip install 'raycseg[tracking]' "
        "(logging to metrics.jsonl without it)"
    )


def is_installed(logger: str) -> bool:
    """Whether the tracker's library can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(LIBRARIES[logger]) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules
        return False


def describe(error: BaseException) -> str:
    """`Type: first line of the message`, with credentials and secret values masked."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    text = URL_CREDENTIALS.sub(r"\1***@", text)
    for name, value in os.environ.items():
        if SECRET_NAMES.search(name) and len(value) >= 6 and value in text:
            text = text.replace(value, "***")
    return text[:300]


def mlflow_uri(folder: Path | str) -> str | None:
    """Where MLflow logs: `MLFLOW_TRACKING_URI`, else a local store in `folder` (None: a URL).

    The local store is `sqlite:///<folder>/mlflow.db` where MLflow's SQL store is
    installed (the full `mlflow` package); `mlflow-skinny` (the `raycseg[tracking]`
    extra) has none, so there it is the file store `<folder>/mlruns`, opened with
    MLflow's file-store opt-out (`file_store_allowed`).
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if is_url(str(folder)):
        return None
    folder = Path(folder).resolve()
    if importlib.util.find_spec("sqlalchemy") is not None:
        return f"sqlite:///{folder / 'mlflow.db'}"
    return (folder / "mlruns").as_uri()


@contextlib.contextmanager
def file_store_allowed(uri: str | None) -> Iterator[None]:
    """Let MLflow 3.13+ open a plain file store (it refuses one unless told) for the block."""
    local = uri is not None and (uri.startswith("file:") or "://" not in uri)
    if not local or os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def wandb_project() -> str:
    """`WANDB_PROJECT`, else raycseg's default project."""
    return os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT


def wandb_key_missing() -> bool:
    """True when W&B would go online without an API key (it would ask for one, or fail).

    Offline and disabled modes need none; otherwise `WANDB_API_KEY` or a `wandb login`
    entry in ~/.netrc for the W&B host will do.
    """
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return False
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def no_wandb_key() -> str:
    """The one warning line for W&B without an API key."""
    return (
        "storage.loggers: wandb has no API key; set WANDB_API_KEY, run `wandb login` or "
        "set WANDB_MODE=offline (logging to metrics.jsonl without it)"
    )
