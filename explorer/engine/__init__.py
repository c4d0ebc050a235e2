"""The resident engine: merged weights in a live model, evaluated point by point (resident models, batch plans, attack twin, the rows of a point, the image-wise views)."""
