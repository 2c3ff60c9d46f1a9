"""Statistics (t intervals, paired differences) and diagnostics (alignment angles, orthonormality error,
activation norms) shared by the trainers and the benchmark suites."""
