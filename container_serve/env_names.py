"""Every environment variable name the serving side reads or sets, in one place.

What a deployer may set is documented in docs/serving-api.md; container_serve.settings parses
those. The rest are set by ``serve`` for the processes it starts. Standard process variables
(PATH, PYTHONPATH, HOME, TMPDIR, ...) keep their plain names at their one use.
"""

from __future__ import annotations

# Set by the deploy driver, read by model_artifact (every reader of the manifest checks it).
from job_contract.deployment import ASYNC_ENV as ASYNC_ENV

# Set by the transform driver (--strict), or by anyone through a transform job's Environment.
from job_contract.deployment import BATCH_STRICT_ENV as BATCH_STRICT_ENV
from job_contract.deployment import MANIFEST_PIN_ENV as MANIFEST_PIN_ENV
from job_contract.deployment import MULTI_MODEL_ENV as MULTI_MODEL_ENV  # the /models API

# Names SageMaker (or the inference toolkit) defines.
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
TIMEOUT_SECONDS_ENV = "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS"
MAX_PAYLOAD_MB_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"

# Ours: the knobs a deployer may set.
THREADS_ENV = "SERVE_THREADS_PER_WORKER"
MAX_REQUEST_BYTES_ENV = "SERVE_MAX_REQUEST_BYTES"
MAX_IMAGES_ENV = "SERVE_MAX_IMAGES"
MAX_PIXELS_ENV = "SERVE_MAX_PIXELS"
MAX_REQUEST_PIXELS_ENV = "SERVE_MAX_REQUEST_PIXELS"
TOP_K_ENV = "SERVE_TOP_K"
TOP_K_MAX_ENV = "SERVE_TOP_K_MAX"
RUNTIME_DIR_ENV = "SERVE_RUNTIME_DIR"
PRECISION_ENV = "SERVE_PRECISION"  # auto (bf16 on AMX if checked) | fp32 | int8
# fp32 graph: auto (the artifact's compiled variant if it loads here, else frozen) | compiled
# (the variant or fail) | frozen (TorchScript trace + freeze, once per worker) | eager
GRAPH_ENV = "SERVE_GRAPH"
# true (default) | false: divide the logits by the artifact's temperature (docs/serving-api.md)
CALIBRATION_ENV = "SERVE_CALIBRATION"
# Multi-model mode: bytes the loaded models may take in all (default: the memory limit of the
# container or machine, less a reserve); a load beyond it answers 507.
MODELS_MEMORY_ENV = "SERVE_MODELS_MEMORY_BYTES"
# auto (default: cuda when torch sees a GPU) | cpu | cuda: where the model runs
DEVICE_ENV = "SERVE_DEVICE"
# Requests MMS may hand a worker at once (one forward pass for all their images), and how long
# it waits for them after the first (ms). Default: 1 (no batching) on cpu, 8 / 5 ms on cuda.
BATCH_SIZE_ENV = "SERVE_BATCH_SIZE"
BATCH_DELAY_MS_ENV = "SERVE_BATCH_DELAY_MS"

# Set by serve for the processes it starts.
MODEL_DIR_ENV = "SERVE_MODEL_DIR"  # the workers: the artifact to load
ARTIFACT_GATE_ENV = "SERVE_ARTIFACT_GATE"  # a file the first worker to load the model creates
INSTANCE_ENV = "SERVE_INSTANCE_ID"  # MMS and its workers: how serve finds *its* processes
OMP_THREADS_ENV = "OMP_NUM_THREADS"  # OpenMP/MKL pools outside torch.set_num_threads

# multi-model-server's own (its java reads MMS_* over its config file: enable_envvars_config).
MMS_MAX_REQUEST_SIZE_ENV = "MMS_MAX_REQUEST_SIZE"
MMS_INFERENCE_ADDRESS_ENV = "MMS_INFERENCE_ADDRESS"
MMS_MANAGEMENT_ADDRESS_ENV = "MMS_MANAGEMENT_ADDRESS"
MMS_USE_NATIVE_IO_ENV = "MMS_USE_NATIVE_IO"
# Batching: the model MMS loads at start (no batching) gets no workers; serve registers it again
# with a batch size (container_serve/batching.py).
MMS_DEFAULT_WORKERS_ENV = "MMS_DEFAULT_WORKERS_PER_MODEL"
MMS_LOG_LOCATION_ENV = "LOG_LOCATION"  # MMS's log4j configuration reads these two
MMS_METRICS_LOCATION_ENV = "METRICS_LOCATION"
