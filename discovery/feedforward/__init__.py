"""The feedforward family: the functional MLP and its feedback modes (``network``), the online inner loop that
applies a compiled rule sample by sample (``inner``), the meta-trainer of θ (``meta``), checkpoints
(``checkpoint``) and the fused CPU kernels (``kernels``)."""
