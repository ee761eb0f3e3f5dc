"""The ``serve`` command: run multi-model-server through the toolkit, and open the port (nginx,
container_serve/front.py) once the first worker has loaded the artifact and passed its
self-test; a worker's refusal stops serve with its reason.

SageMaker runs ``docker run IMAGE serve`` with the artifact in /opt/ml/model; for development
``python -m container_serve --model-dir DIR --port N`` does the same outside Docker. MMS's
config, pid file, sockets and logs, nginx's config and the /ping socket live in a private
runtime directory ($SERVE_RUNTIME_DIR or a new temporary one), so several servers can run on
one machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from container_serve import batching, front, health, management, privileges, toolkit_patches
from container_serve.env_names import (
    ARTIFACT_GATE_ENV,
    INSTANCE_ENV,
    MMS_LOG_LOCATION_ENV,
    MMS_MAX_REQUEST_SIZE_ENV,
    MMS_METRICS_LOCATION_ENV,
    MODEL_DIR_ENV,
    PORT_ENV,
    RUNTIME_DIR_ENV,
)
from container_serve.lifecycle import (
    SELF_TEST_REFUSAL_FILE,
    Lifecycle,
    ServeState,
    read_refusal,
)
from container_serve.model_registry import Registry
from container_serve.settings import ServeSettings, ServeSettingsError

HANDLER_SERVICE = "container_serve.handler_service"
SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)  # holds container_serve, model_artifact
MMS_NAMESPACE = "com.amazonaws.ml.mms.ModelServer"
MMS_REQUEST_SLACK = 1 << 20  # MMS's own limit sits above ours: the handler answers 413 as JSON


def log(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "check"))
    parser.add_argument("--model-dir", help="artifact directory (default: /opt/ml/model)")
    parser.add_argument("--port", type=int, help=f"listen port (default: ${PORT_ENV} or 8080)")
    return parser.parse_args(argv)


def check(model_dir: str) -> int:
    """Load the artifact as a worker would, with its self-test; 0 if it can serve. For users
    (``serve`` itself lets its first worker's load be the check)."""
    from container_serve import inference
    from container_serve.startup_check import load_failure_reason

    try:
        served = inference.model_fn(model_dir)
    except Exception as exc:  # the line a worker's refusal gives under serve
        log(f"cannot serve {model_dir}: {load_failure_reason(exc)}")
        return 1
    manifest = served.manifest
    log(f"artifact OK: {manifest.architecture}, {manifest.num_classes} classes, {model_dir}")
    return 0


def _pin_refusal(model_dir: str) -> str | None:
    """Why the deployer's pinned manifest hash (SERVE_MANIFEST_SHA256) refuses this artifact,
    or None. Checked before anything starts; every later reader checks it again."""
    from model_artifact.manifest import (
        ArtifactError,
        expected_manifest_sha256,
        pinned_manifest_bytes,
    )

    try:
        if expected_manifest_sha256() is not None:
            pinned_manifest_bytes(model_dir)
    except ArtifactError as exc:
        return f"cannot serve {model_dir}: {exc}"
    return None


def mms_model_dir(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, "mms-model")  # empty: toolkit_patches says why


def mms_max_request_bytes(settings: ServeSettings) -> int:
    return settings.max_request_bytes + MMS_REQUEST_SLACK


def _prepare_environment(settings: ServeSettings, model_dir: str, runtime_dir: str) -> None:
    """Exported values reach MMS (java) and its Python workers."""
    os.environ.update(settings.worker_env())
    os.environ[MODEL_DIR_ENV] = model_dir
    gate = os.path.join(runtime_dir, "artifact-checked")
    if os.path.exists(gate):  # a reused runtime dir: this start has checked nothing yet
        os.unlink(gate)
    os.environ[ARTIFACT_GATE_ENV] = gate
    refusal = os.path.join(runtime_dir, SELF_TEST_REFUSAL_FILE)
    if os.path.exists(refusal):  # an earlier start's workers refused; this one's have not yet
        os.unlink(refusal)
    os.environ[RUNTIME_DIR_ENV] = runtime_dir
    os.environ[INSTANCE_ENV] = uuid.uuid4().hex
    os.environ[MMS_MAX_REQUEST_SIZE_ENV] = str(mms_max_request_bytes(settings))
    # nginx (container_serve.front) owns the public port; MMS listens on Unix sockets in the
    # runtime dir (MMS reads MMS_* variables over its config file: enable_envvars_config).
    os.environ.update(front.mms_env(runtime_dir))
    os.environ.update(batching.mms_env(settings))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p
    )
    if not shutil.which("multi-model-server"):  # a venv run without activation
        os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ["PATH"]))
    os.makedirs(os.path.join(runtime_dir, "logs"), exist_ok=True)
    # MMS's pid file (TMPDIR) and worker sockets (TEMP): one set per server, not per machine.
    os.environ["TMPDIR"] = os.environ["TEMP"] = runtime_dir
    os.environ[MMS_LOG_LOCATION_ENV] = os.environ[MMS_METRICS_LOCATION_ENV] = f"{runtime_dir}/logs"


class _Supervisor:
    """Runs one start-up: opens the port once a worker has loaded the model, finds *our* MMS
    and stops it (the two toolkit hooks it replaces, toolkit_patches.py), and ends what is
    left. Every event moves ``lifecycle`` (lifecycle.py); the exit code is read from it.

    MMS (java) and its Python workers inherit our instance id in their environment: the
    toolkit's own lookup takes the only MMS on the machine and gives up if there are two
    (tests, or other containers seen from the host), and java leaves its workers behind when
    it stops or fails to bind the port (outside a container nothing else would end them).
    """

    def __init__(self, settings: ServeSettings, runtime_dir: str) -> None:
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.lifecycle = Lifecycle()
        self.marker = os.environ[INSTANCE_ENV]
        self.mms: Any = None
        self.nginx: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _ours(self) -> list[Any]:
        import psutil

        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid != os.getpid() and proc.environ().get(INSTANCE_ENV) == self.marker:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def find_mms(self) -> Any:
        for proc in self._ours():
            if MMS_NAMESPACE in (proc.info["cmdline"] or []):
                with self.lock:
                    self.mms = proc
                    if self.lifecycle.is_final():  # failed before MMS was up
                        proc.terminate()
                return proc
        raise LookupError("multi-model-server has not started")

    def fail(self, reason: str, quiet: bool = False) -> None:
        """Stop MMS from any thread, whether or not it has started yet, unless serve is
        already stopping or has failed (then this event is an effect of that one)."""
        import psutil

        if not self.lifecycle.move(ServeState.FAILED, reason):
            return
        if not quiet:
            log(reason)
        with self.lock:
            if self.mms is not None:
                try:
                    self.mms.terminate()
                except psutil.Error:
                    pass

    def add_stop_handlers(self, mms_process: Any) -> None:
        def stop(signo: int, frame: Any) -> None:
            import psutil

            self.lifecycle.move(ServeState.STOPPING, f"stopping on {signal.Signals(signo).name}")
            try:
                mms_process.terminate()  # java stops its listeners and backend threads
            except psutil.Error:
                pass

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def open_port_once_loaded(self) -> None:
        """Single-model mode: once the first worker has loaded the model (the artifact check;
        a refusal before then stops serve with its reason). Multi-model mode: at once, each
        load checks its own artifact."""
        settings = self.settings
        if settings.batch_size > 1 and not self._register_batched():
            return  # batching's workers, not the start-up model's, load the model
        if not settings.multi_model and not self._first_worker_loaded():
            return
        if not self.lifecycle.move(ServeState.LOADING, "no worker has the model loaded yet"):
            return  # stopped or failed meanwhile: no port
        try:
            health.start(self.runtime_dir, front.mms_socket(self.runtime_dir), self.lifecycle)
            if settings.multi_model:
                management.start(self.runtime_dir, settings)
            self.nginx = front.start(settings, self.runtime_dir, mms_max_request_bytes(settings))
        except (front.FrontError, OSError) as exc:
            self.fail(f"cannot open port {settings.port}: {exc}")
            return
        log(f"nginx listens on port {settings.port}")
        threading.Thread(target=self._watch_front, args=(self.nginx,), name="watch-nginx",
                         daemon=True).start()
        threading.Thread(target=self._watch_refusals, name="watch-self-test",
                         daemon=True).start()

    def _first_worker_loaded(self, interval: float = 0.05) -> bool:
        """True once a worker has loaded the model (transformer.mark_loaded); False when a
        worker refused it (serve fails with the reason) or serve stopped meanwhile."""
        gate = os.environ[ARTIFACT_GATE_ENV]
        while not self.lifecycle.is_final():
            if os.path.exists(gate):
                return True
            if (reason := read_refusal(self.runtime_dir)) is not None:
                self.fail(f"cannot serve {os.environ[MODEL_DIR_ENV]}: {reason}")
                return False
            time.sleep(interval)
        return False

    def _register_batched(self) -> bool:
        """MMS batching (container_serve/batching.py): False (and serve fails) if MMS refused."""
        settings = self.settings
        try:
            answer = batching.register(front.mms_management_socket(self.runtime_dir), settings,
                                       mms_model_dir(self.runtime_dir))
        except (batching.BatchingError, OSError) as exc:
            self.fail(f"cannot turn on batching: {exc}")
            return False
        log(f"batching on {settings.device}: up to {settings.batch_size} requests per forward "
            f"pass, waiting up to {settings.batch_delay_ms} ms ({answer})")
        return True

    def _watch_refusals(self, interval: float = 0.5) -> None:
        """A worker whose self-test refused the model (startup_check) would be forked again and
        refuse again, on every worker alike: stop serve with the worker's reason instead, which
        /ping answers (503) until the port closes."""
        while not self.lifecycle.is_final():
            if (reason := read_refusal(self.runtime_dir)) is not None:
                self.fail(f"a worker refused to serve the model: {reason}")
                return
            time.sleep(interval)

    def _watch_front(self, nginx: subprocess.Popen) -> None:
        """If nginx dies, nothing reaches MMS any more: stop MMS so that the container exits
        and SageMaker replaces it, rather than leave a server nobody can reach."""
        code = nginx.wait()
        self.fail(f"nginx exited {code}; stopping multi-model-server")

    def shut_down(self, gate: threading.Thread) -> int:
        """MMS has exited: end the rest and return serve's exit code."""
        self.fail("multi-model-server exited on its own")  # unless stopped or failed before
        gate.join(timeout=30)
        if self.nginx is not None:
            self.nginx.terminate()
        self.end_leftovers()
        if self.lifecycle.state is ServeState.STOPPING:  # SIGTERM, also while loading
            log("stopped")
            return 0
        return 1

    def end_leftovers(self) -> None:
        import psutil

        leftovers = self._ours()
        for proc in leftovers:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass


def _settings(port: int | None) -> ServeSettings:
    env = dict(os.environ)
    if port is not None:
        env[PORT_ENV] = str(port)
    return ServeSettings.from_env(env)


def serve(model_dir: str | None, port: int | None) -> int:
    try:
        settings = _settings(port)
    except ServeSettingsError as exc:
        log(str(exc))
        return 2
    if (refusal := toolkit_patches.version_refusal()) is not None:
        log(refusal)
        return 1
    warnings.filterwarnings("ignore", "pkg_resources is deprecated")  # the toolkit's import
    from sagemaker_inference import environment

    # Multi-model mode: SageMaker unpacks each model under /opt/ml/models (the toolkit's
    # model_dir when SAGEMAKER_MULTI_MODEL=true) and names it in each load request.
    model_dir = os.path.abspath(model_dir or environment.model_dir)
    if not settings.multi_model and (refusal := _pin_refusal(model_dir)) is not None:
        log(refusal)
        return 1
    runtime_dir = os.environ.get(RUNTIME_DIR_ENV) or tempfile.mkdtemp(prefix="serve-")
    os.makedirs(runtime_dir, exist_ok=True)
    # Before anything reads the artifact or a request: MMS, its workers, nginx and the check
    # inherit the user (container_serve/privileges.py says what keeps root, and why).
    log(privileges.drop_root(model_dir, runtime_dir, settings.port))
    _prepare_environment(settings, model_dir, runtime_dir)
    return _run(settings, model_dir, runtime_dir)


def _run(settings: ServeSettings, model_dir: str, runtime_dir: str) -> int:
    from sagemaker_inference import model_server

    # The port opens once the first worker has loaded the model and passed its self-test: a
    # broken artifact stops the container with its reason (a worker's refusal), not workers
    # that fail forever. The workers are the check: a separate one cost a third of the
    # start-up CPU on 2 cores (bench/README.md).
    if settings.multi_model:  # no model at start: each load checks its own artifact
        Registry(runtime_dir).clear()
    os.makedirs(mms_model_dir(runtime_dir), exist_ok=True)
    supervisor = _Supervisor(settings, runtime_dir)
    toolkit_patches.patch_model_server(mms_model_dir(runtime_dir),
                                       os.path.join(runtime_dir, "mms.properties"),
                                       supervisor.find_mms, supervisor.add_stop_handlers)
    log(
        f"starting MMS ({settings.workers} worker(s) x {settings.threads_per_worker} "
        f"thread(s), timeout {settings.timeout_seconds} s); "
        f"model {model_dir}, runtime dir {runtime_dir}"
        + (" (multi-model mode: models come with POST /models)" if settings.multi_model else "")
    )
    gate = threading.Thread(target=supervisor.open_port_once_loaded, name="open-port",
                            daemon=True)
    gate.start()
    try:
        model_server.start_model_server(handler_service=HANDLER_SERVICE)
    finally:
        code = supervisor.shut_down(gate)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "check":
        from sagemaker_inference import environment

        return check(args.model_dir or environment.model_dir)
    return serve(args.model_dir, args.port)
