"""Code inside the serving image: an MMS handler on the sagemaker-inference toolkit and the
``serve`` entry point (``python -m container_serve [serve] [--model-dir DIR] [--port N]``).

It reads only the artifact the training code writes (``model_artifact``). API: docs/serving-api.md.
"""
