"""Plotly figure builders (pure: data in, figure out)."""
