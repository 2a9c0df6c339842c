"""Validate a raw recipe dict, with one message that names every problem by its key path.

Pydantic's locations become dotted recipe paths (stages by name, not index), and an
unknown key gets a "did you mean" from the schema's field names.
"""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ..errors import RecipeError
from .schema import Recipe
from .step_schedule import NUMBER_TAG, SCHEDULE_TAG


def did_you_mean(word: str, choices: list[str]) -> str:
    """`did you mean X? ` for the choice closest to a misspelt `word`, else ``""``."""
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {matches[0]}? " if matches else ""


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw dict, raising one RecipeError that lists every problem with its path."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        problems = [f"{_error_path(raw, e['loc'])}: {_error_message(e)}" for e in error.errors()]
        raise RecipeError(f"{source}: " + "; ".join(problems)) from None


def _error_path(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into a dotted recipe path, naming stages by name."""
    parts: list[str] = []
    index = 0
    while index < len(loc):
        part = loc[index]
        if parts == ["stages"] and isinstance(part, int):
            stages = raw.get("stages")
            stages = stages if isinstance(stages, list) else []
            stage = stages[part] if part < len(stages) and isinstance(stages[part], dict) else {}
            parts.append(_path_part(stage.get("name") or stage.get("method") or part))
            # pydantic puts the discriminator tag (the method) after the index
            if index + 1 < len(loc) and loc[index + 1] == stage.get("method"):
                index += 1
        elif part not in (NUMBER_TAG, SCHEDULE_TAG):  # which member of `number | schedule`
            parts.append(_path_part(part))
        index += 1
    return ".".join(parts) or "recipe"


def _path_part(part: Any) -> str:
    """A key as written in a dotted path; quoted when it has dots, spaces or odd characters."""
    text = str(part)
    plain = text and text.isprintable() and not any(c in text for c in ". \t'\"")
    return text if plain else repr(text)


def _error_message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        loc = error["loc"]
        hint = did_you_mean(str(loc[-1]), _schema_fields(loc[:-1])) if loc else ""
        if hint:
            return f"unknown key; {hint.strip()}"
        return "unknown key (check the spelling; `cseg recipes show` lists the schema)"
    return error["msg"].removeprefix("Value error, ")


def _schema_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the recipe section at a pydantic location (for "did you mean")."""
    node: Any = Recipe
    for part in loc:
        node = _schema_child(node, part)
        if node is None:
            return []
    node = _strip_optional(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _schema_child(node: Any, part: Any) -> Any:
    """The type found at `part` inside the type `node`, or None."""
    node = _strip_optional(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    origin = get_origin(node)
    if origin is list and isinstance(part, int):
        return get_args(node)[0]
    if origin is dict:
        return get_args(node)[1]
    if origin in (Union, UnionType):  # the stage union: pydantic adds the method tag to loc
        for member in get_args(node):
            method = getattr(member, "model_fields", {}).get("method")
            if method is not None and part in get_args(method.annotation):
                return member
    return None


def _strip_optional(node: Any) -> Any:
    """`X` for `Annotated[X, ...]` and `X | None`."""
    while True:
        if get_origin(node) is Annotated:
            node = get_args(node)[0]
        elif get_origin(node) in (Union, UnionType) and type(None) in get_args(node):
            members = [arg for arg in get_args(node) if arg is not type(None)]
            if len(members) != 1:
                return node
            node = members[0]
        else:
            return node
