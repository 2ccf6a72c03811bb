"""The network: shape arithmetic, its layers, and the transfer builder that copies
and freezes them by name."""
