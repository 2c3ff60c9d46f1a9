"""Rules that transfer (docs/transfer.md): cells (one task each: depth or widths, data set, ways and shots,
feedback) with a role (train, select, test), the scoring of a fixed θ on a cell beside BP and FA with their own
meta-tuned θ0, task distributions for meta-training, per-layer (depth-profile) coefficients and the full-budget
refit of a selected support."""
