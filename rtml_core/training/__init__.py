"""Training: point-in-time training sets, models, purged tuning, walk-forward evaluation, plots.

Pure steps, no I/O: ``datasets.build_training_set`` -> ``pipeline.train_model`` /
``pipeline.evaluate_baseline``; the registry (``rtml_core.registry``) stores the result.
"""
