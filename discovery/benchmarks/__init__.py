"""Benchmarks: the suite contract (``suite``), the registry and ``run_suite`` (``registry``), the feedforward suites
(``fewshot``), learner scoring and tuning (``evaluate``), diagnostics (``diagnostics``) and the engine throughput
bench (``bench``)."""
