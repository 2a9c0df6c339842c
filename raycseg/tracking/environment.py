"""What the trackers take from the environment, and how their errors are told without secrets.

Tracking URIs, projects and keys come from the environment only (`MLFLOW_TRACKING_URI`,
`MLFLOW_EXPERIMENT_NAME`, `WANDB_PROJECT`, `WANDB_MODE`, `WANDB_API_KEY`, ...) and are
never written into recipes, logs or reports: a failure is told by the exception's
type and first line, with URL credentials and the values of secret-looking variables
masked.
"""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from ..storage import is_url

LOGGERS = ("tensorboard", "mlflow", "wandb")
DEFAULT_WANDB_PROJECT = "raycseg"
SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def not_installed(logger: str) -> str:
    """The one warning line for a tracker whose library is missing."""
    return (
        f"storage.loggers: {logger} is not installed; pip install 'raycseg[tracking]' "
        "(logging to metrics.jsonl without it)"
    )


def is_installed(module: str) -> bool:
    """Whether a tracker's library (named as its logger: `mlflow`, ...) imports, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
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
    """Where MLflow logs: `MLFLOW_TRACKING_URI`, else `sqlite:///<folder>/mlflow.db` (None: a URL).

    MLflow 3.13+ refuses plain `file://` stores unless told otherwise; its SQL
    store needs SQLAlchemy and Alembic, which the `raycseg[tracking]` extra installs.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if is_url(str(folder)):
        return None
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def quiet_mlflow() -> None:
    """Keep MLflow's and Alembic's INFO lines (creating the sqlite store's tables) off stderr."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
