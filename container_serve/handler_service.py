"""The MMS handler module: ``serve`` names it as ``container_serve.handler_service``.

MMS instantiates the one class defined here (it refuses modules with more than one) in each
worker, calls ``initialize`` once (loads the model) and ``handle`` per request.
"""

from __future__ import annotations

from sagemaker_inference.default_handler_service import DefaultHandlerService

from container_serve.transformer import ServeTransformer


class HandlerService(DefaultHandlerService):
    def __init__(self) -> None:
        super().__init__(transformer=ServeTransformer())
