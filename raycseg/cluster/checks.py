"""Field checks for Ray cluster launcher configs, and the helpers all cluster checks share.

Every problem is one string, "FIELD: what is wrong", where FIELD is a dotted path into the
config (`available_node_types.gpu_worker.min_workers`), so the CLI can name each bad field.

A launcher config (aws, gcp, any `provider.type` Ray knows) goes through Ray 2.60's own code, as
`ray up` does: `prepare_config` (merge with the provider's defaults), every error of the
`ray-schema.json` schema that `validate_config` checks (Ray stops at the first; we list all),
then `validate_config` for its semantic checks. We add two: a node type's `min_workers` above
its `max_workers` (Ray silently caps it), and credentials written into the file.
KubeRay manifests are checked in `raycseg.cluster.kuberay`.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Any

_CREDENTIAL_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
_CREDENTIAL_KEYS |= {"gcp_credentials"}
_CREDENTIAL_VALUE = re.compile(
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|aws_secret_access_key\s*[=:]",
    re.IGNORECASE,
)
_NO_CREDENTIALS = (
    "credentials do not belong in cluster configs; rely on the provider's default chain "
    "(environment, profile, instance role or Kubernetes service account)"
)


# ----------------------------------------------------------------------------- shared helpers


def join_field(path: str, key: Any) -> str:
    """Extend a dotted field path by a key (`a.b`) or a list index (`a[0]`)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def one_line(error: BaseException | str) -> str:
    """An error message on one line (Ray's messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def is_count(value: Any) -> bool:
    """True for a whole number >= 0 (YAML booleans excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def credential_problems(node: Any, path: str = "") -> list[str]:
    """List every place in a parsed config that holds a credential (keys, key-like values)."""
    problems = []
    if isinstance(node, dict):
        if str(node.get("name", "")).lower() in _CREDENTIAL_KEYS and "value" in node:
            problems.append(f"{join_field(path, 'value')}: {_NO_CREDENTIALS}")
        for key, value in node.items():
            if str(key).lower() in _CREDENTIAL_KEYS:
                problems.append(f"{join_field(path, key)}: {_NO_CREDENTIALS}")
            else:
                problems += credential_problems(value, join_field(path, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            problems += credential_problems(item, join_field(path, index))
    elif isinstance(node, str) and _CREDENTIAL_VALUE.search(node):
        problems.append(f"{path or '(value)'}: {_NO_CREDENTIALS}")
    return problems


# ----------------------------------------------------------------------------- launcher (aws, gcp)


def check_launcher_config(config: Any) -> list[str]:
    """Check one Ray cluster launcher config with Ray 2.60's own validation, plus ours.

    Args:
        config: The parsed YAML document.

    Returns:
        Problems, each naming its field; empty when `ray up` would accept the fields.
    """
    if not isinstance(config, dict):
        return ["(top level): a cluster launcher config is a mapping of keys"]
    problems = credential_problems(config) + _node_type_bound_problems(config)
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
    except Exception as error:  # Ray raises bare KeyError/AssertionError/TypeError here
        # Name the fields through the schema when it sees them (e.g. a string where Ray
        # concatenates command lists), else through the message.
        return problems + (
            _ray_schema_problems(config)
            or [f"{_prepare_error_field(error)}: Ray cannot prepare this config: {one_line(error)}"]
        )
    schema_problems = _ray_schema_problems(prepared)
    if schema_problems:
        return problems + schema_problems
    try:
        validate_config(prepared)
    except Exception as error:  # ValueError/RuntimeError with the field in backticks
        problems.append(f"{_field_named_in(error, default='(config)')}: {one_line(error)}")
    return problems


def _node_type_bound_problems(config: dict) -> list[str]:
    node_types = config.get("available_node_types")
    if not isinstance(node_types, dict):
        return []
    problems = []
    for name, node_type in node_types.items():
        if not isinstance(node_type, dict):
            continue
        low, high = node_type.get("min_workers"), node_type.get("max_workers")
        if is_count(low) and is_count(high) and low > high:
            problems.append(
                f"available_node_types.{name}.min_workers: {low} is more than max_workers {high}; "
                "Ray would silently cap it, so raise max_workers or lower min_workers"
            )
    return problems


def _ray_schema_problems(config: dict) -> list[str]:
    """Every error of Ray's launcher schema (the file `validate_config` loads), by field."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [problem for error in errors for problem in _describe_schema_error(error)]


def _describe_schema_error(error: Any) -> list[str]:
    where = ""
    for part in error.absolute_path:
        where = join_field(where, part)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        unknown = [
            key
            for key in error.instance
            if key not in allowed and not any(re.search(p, str(key)) for p in patterns)
        ]
        problems = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            problems.append(f"{join_field(where, key)}: unknown key in Ray's cluster schema{hint}")
        return problems
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        return [f"{join_field(where, key)}: required by Ray's cluster schema" for key in missing]
    return [f"{where or '(top level)'}: {one_line(error.message)}"]


def _prepare_error_field(error: BaseException) -> str:
    message = str(error)
    if "node provider" in message:
        return "provider.type"
    if "container" in message:  # "Must provide a container & image name"
        return "docker"
    return _field_named_in(error, default="(config)")


def _field_named_in(error: BaseException, default: str) -> str:
    """The field a Ray error message names: the first `backticked` or 'quoted' word."""
    match = re.search(r"`([A-Za-z_][\w.]*)`|'([A-Za-z_][\w.]*)'", str(error))
    return next(group for group in match.groups() if group) if match else default
