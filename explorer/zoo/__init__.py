"""Model zoo: the manifest of named checkpoints and safe checkpoint reading.

``manifest`` holds the TOML manifest (entries, defaults); ``checkpoints`` reads weight files
safely (local files, hf-hub); ``architecture`` creates an entry's open_clip model and fits weights
to it (files, open_clip tags: keys mapped, validated); ``layouts`` lists, as data, the key layouts
real releases use (wrappers, prefixes to strip, a tower prefix to add).
"""
from __future__ import annotations

from .architecture import (
    create_model,
    fit_weights,
    load_weights,
    normalize_keys,
    register_arch,
    validate_state_dict,
)
from .checkpoints import CheckpointError, convert, read_checkpoint, unwrap_state_dict
from .files import CheckpointRefused, read_checkpoint_file, refused_message, resolve_in_folder
from .manifest import (
    LOCAL_SUFFIXES,
    ROLES,
    Manifest,
    ModelEntry,
    Role,
    default_manifest_path,
    entry_from_path,
    load_manifest,
)

__all__ = [
    "LOCAL_SUFFIXES", "ROLES", "CheckpointError", "CheckpointRefused", "Manifest", "ModelEntry", "Role", "convert",
    "create_model", "default_manifest_path", "fit_weights", "read_checkpoint_file", "refused_message",
    "resolve_in_folder", "entry_from_path", "load_manifest", "load_weights",
    "normalize_keys", "read_checkpoint", "register_arch", "unwrap_state_dict", "validate_state_dict",
]
