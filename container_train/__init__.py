"""Training code for the SageMaker training image: the job starts in ``main``.

What the drivers share with training (hyperparameters, metric definitions) lives in the
torch-free ``job_contract`` package; this package may import torch anywhere.
"""
