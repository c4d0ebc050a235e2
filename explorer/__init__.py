"""Trade-off Explorer: clean vs adversarial accuracy of merged CLIP task vectors.

The public API, in the order one uses it::

    from explorer import Engine, MergeSpec, AttackSpec, EvalSpec, SweepSpec, Store
    engine = Engine()                                     # the demo zoo (or Engine("my.toml"))
    spec = MergeSpec.from_alpha(0.5, method="ties", keep=0.2)
    row = engine.point(["natural"], ["tecoa"], spec, AttackSpec("pgd-10", eps="4/255"),
                       EvalSpec(task="shapes-shifted", n=256))
"""
from __future__ import annotations

import os as _os

# PyTorch's CPU thread pool is GNU OpenMP: by default a thread that waits at the end of a parallel
# region spins for ~300,000 iterations before it sleeps. On a CPU shared with other processes
# (this project's 2-core machine, a laptop during a demo) the spinning threads take the cores
# from the threads they wait for. Measured on the Fashion ViT zoo, one autoattack-fast point on
# 16 images (2 cores; 7 s of work): at load 3, 159 s wall with the default policy, > 300 s with
# ACTIVE, 7.3-8.0 s with PASSIVE, 6.8-7.4 s on one thread; at load 7, > 100 s default, 12.6-15.0 s
# PASSIVE, 11.6 s one thread. PASSIVE makes a waiting thread sleep at once. libgomp reads it when
# it is loaded (with torch, imported below), so it is set here, first; a value the user set is
# kept, and a process that imported torch before this package keeps the runtime's default.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
