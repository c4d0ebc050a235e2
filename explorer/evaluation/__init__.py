"""Evaluation of one model: zero-shot classification in pixel space, clean and robust accuracy with per-image results, the activation-memory batch plan."""
