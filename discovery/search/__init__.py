"""Open discovery: sparse search over a term library (forward selection, L1 path, screening) and the Pareto front of
rules found (``search``)."""
