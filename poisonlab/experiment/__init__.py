"""Experiments: typed configs, the run folder, and the runners that chain the pipeline stages."""
