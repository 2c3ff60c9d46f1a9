"""Rule inference from recordings (docs/inference.md): read a recording (npz or NWB) of pre/post activity and
weights, infer a sparse rule over the unsupervised library with its evidence, and simulate recordings to test it."""

from discovery.inference.fit import InferenceResult, InferredFrontPoint, explained_variance, infer_rule
from discovery.inference.recording import (
           Circuit,
           Recording,
           RecordingError,
           read_npz,
           read_nwb,
           read_recording,
           validate,
)
from discovery.inference.simulate import OJA, Simulation, simulate, write_npz, write_nwb

__all__ = ["OJA", "Circuit", "InferenceResult", "InferredFrontPoint", "Recording", "RecordingError", "Simulation",
           "explained_variance", "infer_rule", "read_npz", "read_nwb", "read_recording", "simulate", "validate",
           "write_npz", "write_nwb"]
