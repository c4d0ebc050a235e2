"""Trade-off Explorer: clean vs adversarial accuracy of merged CLIP task vectors.

The public API, in the order one uses it::

    from explorer import Engine, MergeSpec, AttackSpec, EvalSpec, SweepSpec, Store
    engine = Engine()                                     # the demo zoo (or Engine("my.toml"))
    spec = MergeSpec.from_alpha(0.5, method="ties", keep=0.2)
    row = engine.point(["natural"], ["tecoa"], spec, AttackSpec("pgd-10", eps="4/255"),
                       EvalSpec(task="shapes-shifted", n=256))
"""
from __future__ import annotations

from .attacks import run_attack
from .config import AttackSpec, EvalSpec, MergeSpec, PointSpec, SweepSpec, parse_alphas, parse_eps
from .core.taskvec import FlatLayout, TaskVector
from .data import Task, get_task, task_names
from .engine.frontier import Engine
from .evaluation.evaluate import EvalOptions, EvalResult, Images, evaluate
from .evaluation.zeroshot import ZeroShotClassifier
from .merging import METHODS
from .store import Store
from .zoo import Manifest, ModelEntry, convert, load_manifest, load_weights

__version__ = "0.1.0"

__all__ = [
    "METHODS", "AttackSpec", "Engine", "EvalOptions", "EvalResult", "EvalSpec", "FlatLayout", "Images", "Manifest",
    "MergeSpec", "ModelEntry", "PointSpec", "Store", "SweepSpec", "Task", "TaskVector", "ZeroShotClassifier", "convert",
    "evaluate", "get_task", "load_manifest", "load_weights", "parse_alphas", "parse_eps",
    "run_attack", "task_names",
]
