"""What the deploy driver tells the serving container, spelled once for both sides.

The drivers (drivers/deploy.py, drivers/transform.py) set these on the SageMaker model or job;
the serving image (model_artifact.manifest, container_serve) reads them. docs/serving-api.md
says what each does.
"""

# The sha256 of manifest.json's bytes, known from outside the archive
# (deploy.py --manifest-sha256): every reader of the artifact refuses any other manifest.
MANIFEST_PIN_ENV = "SERVE_MANIFEST_SHA256"

# "true" on an asynchronous endpoint (deploy.py --async-output): the serving image raises its
# request-size and model time-out defaults to what SageMaker asynchronous inference allows
# (container_serve.settings holds the numbers).
ASYNC_ENV = "SERVE_ASYNC"
# JSON Lines batch transform: "true" makes a bad record fail its whole request with a 4xx
# (the job fails) instead of giving an error line in its place (transform.py --strict).
BATCH_STRICT_ENV = "SERVE_BATCH_STRICT"
# "true": the serving image answers SageMaker's multi-model container API (/models);
# deploy.py --multi-model sets it with Mode MultiModel (the inference toolkits read the same name).
MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"
MULTI_MODEL_MODE = "MultiModel"  # the container definition's Mode
