"""`cseg recipes ls|show|validate|cp`: the recipes shipped inside the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
import yaml
from rich.table import Table

from raycseg.config import (
    find_recipe,
    load_recipe,
    read_yaml,
    recipe_to_yaml,
    shipped_cluster_overlays,
    shipped_recipes,
)
from raycseg.errors import CsegError, RecipeError

from .console import err, out

app = typer.Typer(
    help="List, show, validate and copy recipes.",
    epilog="""Examples:

cseg recipes ls
cseg recipes show cacl/debug --resolved
cseg recipes cp quickstart my_recipe.yaml""",
    no_args_is_help=True,
)


@app.command(
    "ls",
    epilog="""Examples:

cseg recipes ls
cseg recipes show reco/voc_60labels         # then look at one""",
)
def list_recipes() -> None:
    """List the shipped recipes and cluster overlays."""
    table = Table()
    table.add_column("recipe", no_wrap=True)  # names are what users type: never cut
    table.add_column("stages")
    table.add_column("description")
    for name in shipped_recipes():
        raw = read_yaml(find_recipe(name))
        stages = " → ".join(s.get("name") or s.get("method", "?") for s in raw.get("stages", []))
        table.add_row(name, stages, raw.get("description", ""))
    out.print(table)
    overlays = ", ".join(shipped_cluster_overlays())
    out.print(f"cluster overlays (--cluster NAME): {overlays}", markup=False)


@app.command(
    "show",
    epilog="""Examples:

cseg recipes show quickstart
cseg recipes show cacl/debug --resolved     # every default filled in
cseg recipes show reco/voc_60labels stages.reco.steps=100""",
)
def show(
    recipe: str = typer.Argument(..., help="A shipped recipe name or a YAML path."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides."),
    resolved: bool = typer.Option(
        False, "--resolved", help="Print the validated recipe with every default."
    ),
) -> None:
    """Print a recipe (as written, or resolved with defaults and overrides)."""
    if resolved or overrides:
        out.print(
            recipe_to_yaml(load_recipe(recipe, overrides or [], check_files=False)), markup=False
        )
    else:
        out.print(find_recipe(recipe).read_text(), markup=False)


@app.command(
    "validate",
    epilog="""Examples:

cseg recipes validate                       # every shipped recipe
cseg recipes validate my_recipe.yaml --check-files""",
)
def validate(
    recipes: list[str] = typer.Argument(
        None, help="Recipe names or paths (default: every shipped recipe)."
    ),
    check_files: bool = typer.Option(
        False, "--check-files", help="Also require shard folders to exist."
    ),
) -> None:
    """Validate recipes against the schema; exit 2 naming every bad key."""
    names = recipes or shipped_recipes()
    failures = []
    for name in names:
        try:
            load_recipe(name, check_files=check_files)
            out.print(f"ok      {name}", markup=False)
        except RecipeError as error:
            failures.append(name)
            out.print(f"invalid {name}: {error}", markup=False)
    if failures:
        raise RecipeError(
            f"{len(failures)} of {len(names)} recipes are invalid: {', '.join(failures)}"
        )


@app.command(
    "cp",
    epilog="""Examples:

cseg recipes cp quickstart .
cseg recipes cp cacl/debug my_cacl.yaml --force""",
)
def copy(
    recipe: str = typer.Argument(..., help="A shipped recipe name."),
    dest: Path = typer.Argument(..., help="Destination file or folder."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Copy a shipped recipe out for editing."""
    source = find_recipe(recipe)
    target = dest / source.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise CsegError(f"{target} exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)
    yaml.safe_load(target.read_text())
    err.print(f"copied {recipe} to {target}", markup=False)
    out.print(str(target.resolve()), markup=False)
