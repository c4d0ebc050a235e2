"""Statistics of results: Wilson intervals, paired bootstrap, Pareto fronts and hypervolume."""
