"""The recurrent fixed-point family (docs/science.md S2): fixed-point solvers and the published rules (``fixedpoint``),
the batched fixed-point network (``engine``), the recurrent meta-trainer (``trainer``), rule scoring
(``scoring``) and its benchmark suites (``suites``)."""
