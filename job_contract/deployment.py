"""What the deploy driver tells the serving container, spelled once for both sides.

The driver (drivers/deploy.py) sets these on the SageMaker model; the serving image
(model_artifact.manifest, container_serve) reads them. docs/serving-api.md says what each does.
"""

# The sha256 of manifest.json's bytes, known from outside the archive
# (deploy.py --manifest-sha256): every reader of the artifact refuses any other manifest.
MANIFEST_PIN_ENV = "SERVE_MANIFEST_SHA256"

# "true": the serving image answers SageMaker's multi-model container API (/models);
# deploy.py --multi-model sets it with Mode MultiModel (the inference toolkits read the same name).
MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"
MULTI_MODEL_MODE = "MultiModel"  # the container definition's Mode
