"""Training code for the SageMaker training image (/opt/ml/code).

Importing the package is cheap and torch-free, so the drivers can read ``metrics`` and
``hyperparameters`` on a laptop. The job itself starts in ``main``.
"""
