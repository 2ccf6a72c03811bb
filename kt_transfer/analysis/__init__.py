"""Runs to findings: gather results, pool replicates, test contrasts, draw figures, write
the report; similarity measures without training."""
