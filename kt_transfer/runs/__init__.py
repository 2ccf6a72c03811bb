"""Runs on disk: the run store (run directories, a treatment and its base first), the grid,
its workers, and the learning-rate sweep."""
