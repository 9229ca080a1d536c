"""Jobs: typed specs, the one runner, workers, the run store, progress, cancellation,
estimates, and the study and reproduce orchestrations."""
