"""Probes of frozen features: extraction (with a cache), FAISS kNN, the linear probe, the DIM
paper's MLP probe, and the suite that runs them alike for every model of an experiment."""
