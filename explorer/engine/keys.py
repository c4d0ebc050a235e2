"""Store keys of points: a hash of what a point's numbers depend on, and nothing else.

A point's key hashes (code version, the base's and the vectors' weight digests, merge spec,
attack spec, eval spec, the reuse marker, the input normalisation where it is not CLIP's, the
method's version where above 1). The per-image rows of a point (``Store.images``) are keyed the
same way with the eval set's ``n`` left out: image i is the same image at every n (nested sets).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from explorer.config import CODE_VERSION, AttackSpec, EvalSpec, MergeSpec
from explorer.merging import method_version


def key_parts(base_digest: str, digests: Sequence[str], spec: MergeSpec, attack: AttackSpec, ev_part: str,
              use_bank: bool, normalize: str) -> list[str]:
    """The strings a key hashes, in order (``ev_part``: the eval spec's JSON, or the images' form)."""
    parts = [CODE_VERSION, base_digest, *digests, spec.to_json(), attack.to_json(), ev_part]
    # History-free numbers and reuse-tightened ones are stored apart ("fresh" is the marker
    # history-free points always had; rows stored without a marker came from the old default).
    parts.append("reuse" if use_bank else "fresh")
    if normalize != "clip":   # CLIP's is what every point was evaluated with before it was named
        parts.append(f"normalize={normalize}")
    if method_version(spec.method) > 1:
        parts.append(f"{spec.method}@{method_version(spec.method)}")
    return parts


def point_key(base_digest: str, digests: Sequence[str], spec: MergeSpec, attack: AttackSpec, ev: EvalSpec,
              use_bank: bool, normalize: str) -> str:
    """Store key of a point (sha256 hex of ``key_parts``)."""
    return _hash(key_parts(base_digest, digests, spec, attack, ev.to_json(), use_bank, normalize))


def image_key(base_digest: str, digests: Sequence[str], spec: MergeSpec, attack: AttackSpec, ev: EvalSpec,
              normalize: str) -> str:
    """Key of a point's per-image rows: the point key's parts without the eval set's ``n``."""
    ev_part = {k: v for k, v in ev.to_dict().items() if k != "n"}
    return _hash(key_parts(base_digest, digests, spec, attack, "images:" + json.dumps(ev_part, sort_keys=True),
                           False, normalize))


def _hash(parts: Sequence[str]) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
