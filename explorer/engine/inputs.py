"""What a point is evaluated on: classifiers, attack twins, eval images, batch plans, banks.

A mixin of :class:`explorer.engine.frontier.Engine` (the state lives there: ``manifest``, ``base``,
``model``, ``tokenizer``, ``device``, ``fast_attack``, ``batch_size``, ``activation_budget``
and the caches below), split out so each file reads as one concern: ``engine`` merges and
computes points, this module builds and caches their inputs once per setting.
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


class EvalInputs:
    """Cached evaluation inputs of a resident model (see the module docstring)."""

    manifest: Manifest
    base: str
    model: nn.Module
    tokenizer: Any
    device: torch.device
    fast_attack: bool
    batch_size: int
    activation_budget: int
    _text_key: Any
    _classifiers: dict[tuple[str, str], ZeroShotClassifier]
    _twins: dict[tuple[str, str], AttackTwin | None]
    _data: dict[tuple, tuple[torch.Tensor, torch.Tensor]]
    _plans: dict[tuple, BatchPlan]
    _banks: dict[tuple, AdversarialBank]

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
                self.model, self.tokenizer, t.classnames, t.templates, normalize=normalize,
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
