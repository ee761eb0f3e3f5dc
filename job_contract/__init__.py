"""What the drivers (laptop side) and the training image agree on, torch-free: the
hyperparameters table, the metric definitions and the paths of a SageMaker job.

``model_artifact`` plays the same part between training and serving (docs/ARCHITECTURE.md).
"""
