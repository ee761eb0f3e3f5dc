"""The model artifact contract shared by the training and serving images.

``manifest`` (no torch) and ``preprocess`` (Pillow; torchvision imported lazily) describe and
rebuild the evaluation pipeline; ``network`` (torch) builds the model and loads its weights.
"""
