"""Foundations every layer may use: task vectors, the device, validity checks of numbers, the C heap, the cancel token."""
