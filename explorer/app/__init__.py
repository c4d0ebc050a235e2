"""The served application: the service facade, page users' policy, bounded jobs, background sweeps, flags, image IO, added checkpoints."""
