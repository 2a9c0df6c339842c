"""`cseg tune`: Ray Tune searches over a recipe, described by a YAML space file.

`spaces.py` reads and checks a YAML search space against its recipe before Ray
starts; `search.py` runs it (one Ray Train run per trial, ASHA on the global
`step`) and restores it; `results.py` summarises trials and writes `best.yaml`.
"""

from .results import TrialOutcome, TuneResult
from .search import run_tune
from .spaces import SearchPlan, Space, load_space, to_param_space

__all__ = [
    "SearchPlan",
    "Space",
    "TrialOutcome",
    "TuneResult",
    "load_space",
    "run_tune",
    "to_param_space",
]
