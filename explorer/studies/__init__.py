"""Studies run from the command line: bench, the real-scale bench, compare, ablation, the zoo report."""
