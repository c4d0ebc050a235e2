"""What a point is evaluated on: classifiers, attack twins, eval images, batch plans, banks.

A part of :class:`explorer.engine.frontier.Engine`: it reads the resident model
(``ResidentModels``) and builds and caches these inputs once per setting; ``refresh`` is told each
merge, so the attack twins and (when the merged text tower changed) the class embeddings follow.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from explorer.config import AttackSpec, EvalSpec
from explorer.data import get_task
from explorer.evaluation.activation import BatchPlan, plan_batch
from explorer.evaluation.evaluate import AdversarialBank
from explorer.evaluation.zeroshot import ZeroShotClassifier
from explorer.zoo import Manifest

from .attack_twin import AttackTwin, make_twin
from .merge_cache import Merged
from .models import ResidentModels


class EvalInputs:
    """Cached evaluation inputs of a resident model (see the module docstring).

    Args:
        models: the resident weights (their model, tokenizer, manifest and base are read).
        device: where eval images are kept.
        fast_attack: attack an ``AttackTwin`` where the tower has one (``attack_model``).
        batch_size: the most images per batch (``batch_plan``'s cap).
        activation_budget: bytes of saved activations one attack batch may hold.
    """

    def __init__(self, models: ResidentModels, device: torch.device, fast_attack: bool, batch_size: int,
                 activation_budget: int) -> None:
        self.models, self.device, self.fast_attack = models, device, fast_attack
        self.batch_size, self.activation_budget = batch_size, activation_budget
        self._text_key: Any = None   # what the merged text tower is (``Merged.text_key``); None: never merged
        self._classifiers: dict[tuple[str, str], ZeroShotClassifier] = {}   # (task, normalize)
        self._twins: dict[tuple[str, str], AttackTwin | None] = {}
        self._data: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._plans: dict[tuple, BatchPlan] = {}
        self._banks: dict[tuple, AdversarialBank] = {}

    @property
    def manifest(self) -> Manifest:
        return self.models.manifest

    @property
    def base(self) -> str:
        return self.models.base

    @property
    def model(self) -> nn.Module:
        return self.models.model

    def refresh(self, merged: Merged) -> None:
        """Theta now holds ``merged``: the twins refold it, and the class embeddings are recomputed
        when the merged text tower changed."""
        for twin in self._twins.values():
            if twin is not None:
                twin.refresh()
        if merged.text_key != self._text_key:
            self._text_key = merged.text_key
            for clf in self._classifiers.values():
                clf.refresh_text_head(key=repr(merged.text_key))

    def normalization(self, names: Sequence[str]) -> str:
        """The input normalisation a merge of ``names`` is evaluated with (``"clip"``/``"imagenet"``).

        Every vector's manifest declaration must agree (a model fine-tuned on ImageNet-normalised
        pixels merged with one fine-tuned on CLIP-normalised pixels has no single correct input);
        no vectors: the base's.

        Raises:
            ValueError: the named vectors declare different normalisations (the message lists them).
        """
        if not names:
            return self.manifest.get(self.base).normalize
        declared = {n: self.manifest.get(n).normalize for n in names}
        if len(set(declared.values())) > 1:
            listed = ", ".join(f"{n} ({v})" for n, v in declared.items())
            raise ValueError(f"cannot merge vectors with different input normalisations: {listed}; "
                             "merge only models fine-tuned with the same mean/std (manifest 'normalize')")
        return next(iter(declared.values()))

    def classifier(self, task: str, normalize: str | None = None) -> ZeroShotClassifier:
        """The zero-shot classifier of ``task`` over the resident model, with ``normalize``
        (default: the base's declaration) applied inside its forward."""
        normalize = normalize or self.manifest.get(self.base).normalize
        key = (task, normalize)
        if key not in self._classifiers:
            t = get_task(task, preprocess=self.preprocess_cfg())
            self._classifiers[key] = ZeroShotClassifier(
                self.model, self.models.tokenizer, t.classnames, t.templates, normalize=normalize,
                text_key=repr(self._text_key))
        return self._classifiers[key]

    def attack_model(self, task: str, normalize: str | None = None) -> AttackTwin | None:
        """The classifier's attack twin (None: attack the classifier itself)."""
        if not self.fast_attack:
            return None
        key = (task, normalize or self.manifest.get(self.base).normalize)
        if key not in self._twins:
            self._twins[key] = make_twin(self.classifier(*key))
        return self._twins[key]

    def eval_data(self, ev: EvalSpec) -> tuple[torch.Tensor, torch.Tensor]:
        key = (ev.task, ev.split, ev.n, ev.seed)
        if key not in self._data:
            x, y = get_task(ev.task, preprocess=self.preprocess_cfg()).load(ev.split, ev.n, ev.seed)
            self._data[key] = (x.to(self.device), y.to(self.device))
        return self._data[key]

    def preprocess_cfg(self) -> dict:
        """The model's open_clip eval preprocessing (input size, resize mode, interpolation)."""
        from open_clip import get_model_preprocess_cfg
        return dict(get_model_preprocess_cfg(self.model))

    def batch_plan(self, ev: EvalSpec, normalize: str | None = None, attacked: bool = True) -> BatchPlan:
        """The batch for ``ev``'s images: measured once per (task, normalize, attacked, image
        shape) on the network the attack differentiates (``activation.plan_batch``)."""
        normalize = normalize or self.manifest.get(self.base).normalize
        x = self.eval_data(ev)[0]
        key = (ev.task, normalize, attacked, tuple(x.shape[1:]))
        if key not in self._plans:
            net = (self.attack_model(ev.task, normalize) if attacked else None) or self.classifier(ev.task, normalize)
            self._plans[key] = plan_batch(net, x, self.activation_budget, self.batch_size)
        return self._plans[key]

    def bank(self, ev: EvalSpec, attack: AttackSpec) -> AdversarialBank:
        """Adversarial examples found so far on this eval set under this norm (all radii)."""
        key = (ev.task, ev.split, ev.n, ev.seed, attack.norm)
        if key not in self._banks:
            self._banks[key] = AdversarialBank(self.eval_data(ev)[0], attack.norm)
        return self._banks[key]
