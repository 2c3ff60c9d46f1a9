"""The reservoir family (docs/science.md S5): FORCE, RMHL and SUPERTREX readouts of a chaotic rate reservoir (``model``)
and the ``reservoir-motor`` suite (``suite``)."""
