"""Training: point-in-time training sets, models, purged tuning, walk-forward evaluation, plots.

Pure steps, no I/O: ``datasets.build_training_set`` -> ``pipeline.train_model`` /
``pipeline.evaluate_baseline``; the registry (``rtml_core.registry``) stores the result.
"""

import os

# OpenMP worker threads that spin while waiting starve each other whenever the cores are
# shared (XGBoost with 2 threads ran 7x slower than with 1 on a busy 2-core machine); make them
# yield instead unless the environment says otherwise. It must be set before XGBoost or
# scikit-learn start the OpenMP runtime, hence here, when the training package is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
