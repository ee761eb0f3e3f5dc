"""nginx in front of multi-model-server: the public port, and the answers MMS gets wrong.

MMS 1.1.11's Java front end form-decodes ``application/x-www-form-urlencoded`` and
``multipart/*`` bodies before any handler runs, and answers 500 when the bytes are not valid
form encoding (bench/fuzz_serve.py found these). MMS is abandoned, so rather than patch its
jar, nginx listens on the public port and:
- answers 415 for those content types (the handler refuses them anyway), as our error JSON;
- answers oversized bodies (above MMS's own limit) with a JSON 413;
- keeps large bodies on disk, not in memory, cuts off clients that stall, and answers a JSON
  503 beyond MAX_ACTIVE requests in progress (bounded memory under a flood of big bodies);
- answers 503 JSON while MMS is starting or if it is gone, instead of a refused connection;
- answers GET /execution-parameters itself (SageMaker's batch agent asks for it before a
  transform job; MMS answers 404): a fixed JSON object from ServeSettings, computed here;
- sends /ping to container_serve.health, which answers 503 while no worker has the model
  (MMS's own /ping answers 200 even then);
- passes everything else to MMS over a Unix socket in the runtime dir (no second port to pick,
  nothing else on the machine can reach MMS's inference port).
The cost is one local hop per request (bench/serving_speed.py measures the endpoint through it).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import time

from container_serve.env_names import (
    MMS_INFERENCE_ADDRESS_ENV,
    MMS_MANAGEMENT_ADDRESS_ENV,
    MMS_USE_NATIVE_IO_ENV,
)
from container_serve.errors import error_body
from container_serve.health import HEALTH_SOCKET
from container_serve.management import MANAGEMENT_SOCKET
from container_serve.media import FORM_TYPES, unsupported
from container_serve.model_registry import MODEL_HEADER
from container_serve.settings import ServeSettings

MMS_SOCKET = "mms.sock"
MMS_MANAGEMENT_SOCKET = "mms-management.sock"
BATCHED_MODEL = "model"  # the name batching registers (sagemaker_inference's model name)
_FORM_PLACEHOLDER = "@FORM_TYPE@"
# Request bodies up to this size stay in memory; larger ones are spooled to a temp file in the
# runtime dir (unlinked at once, gone when the request ends). Most photos fit; a 6 MiB body no
# longer costs 6 MiB of RAM per connection. client_body_in_file_only would also write the small
# bodies (a file per request) and, "on", keep them: no gain, more disk I/O.
BODY_BUFFER_BYTES = 128 * 1024
# A client that sends nothing for this long while nginx waits for its headers or body is cut
# off (nginx's default is 60 s per read). SageMaker's front end forwards a body at network speed.
CLIENT_TIMEOUT_S = 15
# Requests in progress at once (headers read, body arriving or at MMS); one more gets a JSON
# 503. Bounds nginx's body memory at MAX_ACTIVE x BODY_BUFFER_BYTES (16 MiB) and its temp files
# at MAX_ACTIVE x the payload limit. MMS queues at most 100 jobs (job_queue_size) behind 1-2
# busy workers per CPU: more in flight would only wait for a time-out.
MAX_ACTIVE = 128


class FrontError(RuntimeError):
    """nginx is missing or refused the configuration."""


def _quoted(text: str) -> str:
    """An nginx single-quoted string (variables such as $form_type still expand)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def mms_socket(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, MMS_SOCKET)


def mms_address(runtime_dir: str) -> str:
    """MMS's inference_address: a Unix socket only nginx uses."""
    return f"unix:{mms_socket(runtime_dir)}"


def mms_management_socket(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, MMS_MANAGEMENT_SOCKET)


def mms_env(runtime_dir: str) -> dict[str, str]:
    """MMS's listeners as MMS_* variables (they override its config file): both on Unix
    sockets, so the public port is nginx's alone."""
    management = f"unix:{mms_management_socket(runtime_dir)}"
    return {MMS_INFERENCE_ADDRESS_ENV: mms_address(runtime_dir),
            MMS_MANAGEMENT_ADDRESS_ENV: management,
            MMS_USE_NATIVE_IO_ENV: "true"}


def _user_line() -> str:
    """Started as root, nginx's workers would switch to `nobody` and lose access to the
    private runtime dir and MMS's socket: keep them the same user as MMS (root in SageMaker)."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"


def _form_patterns() -> str:
    # A type ending in "/" is a family (multipart/*); $form_type is the matched type's name.
    return "\n".join(
        f'        "~*^\\s*({kind}{"[a-z0-9.+-]*" if kind.endswith("/") else ""})" "$1";'
        for kind in FORM_TYPES)


def _error_pages(settings: ServeSettings, max_body_bytes: int) -> dict[str, str]:
    """The JSON bodies nginx answers itself, quoted for its configuration."""
    return {name: _quoted(body) for name, body in {
        "form_415": error_body(415, unsupported(_FORM_PLACEHOLDER)).replace(
            _FORM_PLACEHOLDER, "$form_type"),
        "too_large": error_body(413, f"request body is more than {max_body_bytes} bytes; the "
                                     f"limit is {settings.max_request_bytes}"),
        "down": error_body(503, "the model server is starting or not running; retry shortly"),
        "bad_query": error_body(400, "the query string has a % not followed by two hex digits"),
        "busy": error_body(503, f"more than {MAX_ACTIVE} requests in progress; retry shortly"),
    }.items()}


def _own_locations(settings: ServeSettings, runtime_dir: str) -> str:
    """The routes MMS does not answer (right): /ping, and /execution-parameters, a fixed
    answer computed now from the settings (SageMaker's batch agent reads it once a job)."""
    return f"""\
        location = /ping {{  # container_serve/health.py: 503 while no worker has the model
            proxy_pass http://unix:{os.path.join(runtime_dir, HEALTH_SOCKET)}:/ping;
            proxy_read_timeout 10s;
        }}
        location = /execution-parameters {{  # ServeSettings.execution_parameters
            return 200 {_quoted(json.dumps(settings.execution_parameters()))};
        }}"""
def _to_mms(settings: ServeSettings, page: dict[str, str], model: str = "", path: str = ""
            ) -> str:
    """A location's body that proxies to MMS; ``model``: the multi-model header's value;
    ``path``: the path MMS gets (after the checks: a rewrite with ``break`` ends them)."""
    rewrite = f"\n            rewrite ^ {path} break;" if path else ""
    return f"""            limit_conn active {MAX_ACTIVE};
            if ($form_type) {{ return 415 {page['form_415']}; }}
            # MMS's Netty decoder answers 500 to a %-escape in the query string that is not two
            # hex digits (bench/fuzz_serve.py found it); nothing reads the query, so refuse it.
            if ($args ~ "%(?![0-9A-Fa-f]{{2}})") {{ return 400 {page['bad_query']}; }}{rewrite}
            proxy_pass http://mms;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header {MODEL_HEADER} "{model}";  # a client's own is never passed on
            proxy_read_timeout {settings.timeout_seconds + 30}s;
            proxy_send_timeout {settings.timeout_seconds + 30}s;"""


def _multi_model_http(settings: ServeSettings, runtime_dir: str) -> str:
    """The model name of /models/<name>/invoke as the client encoded it (the raw URI: nginx's
    decoded $uri could put any byte into a header); the worker decodes it."""
    if not settings.multi_model:
        return ""
    management = os.path.join(runtime_dir, MANAGEMENT_SOCKET)
    return f"""    map $request_uri $invoked_model {{
        default "";
        "~^/models/([^?]+)/invoke(\\?.*)?$" $1;
    }}
    upstream models_api {{ server unix:{management}; }}
"""


def _multi_model_locations(settings: ServeSettings, page: dict[str, str]) -> str:
    """Multi-model mode: load/list/describe/unload go to the serve process
    (container_serve/management.py), invocations to MMS's /invocations with the model's name."""
    if not settings.multi_model:
        return ""
    return f"""        location ~ ^/models/.+/invoke$ {{  # $uri is decoded: %2F is a / here
{_to_mms(settings, page, "$invoked_model", "/invocations")}
        }}
        location ~ ^/models(/.+)?$ {{  # the path goes on as the client sent it
            proxy_pass http://models_api;
            proxy_read_timeout 120s;  # a load hashes the weights
        }}
"""


def _batched_location(settings: ServeSettings, page: dict[str, str]) -> str:
    """Batching (container_serve/batching.py) registers the model again, and MMS's /invocations
    finds only a model registered at start: name it in the path MMS gets."""
    if settings.batch_size <= 1:
        return ""
    return f"""        location = /invocations {{
{_to_mms(settings, page, path=f"/predictions/{BATCHED_MODEL}")}
        }}
"""


def render_config(settings: ServeSettings, runtime_dir: str, max_body_bytes: int) -> str:
    page = _error_pages(settings, max_body_bytes)
    locations = _multi_model_locations(settings, page) + _batched_location(settings, page)
    return f"""# Written by container_serve/front.py for one server; see that module for why.
daemon off;
{_user_line()}worker_processes 1;
pid {runtime_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    default_type application/json;
    client_body_temp_path {runtime_dir}/nginx-body;
    proxy_temp_path {runtime_dir}/nginx-proxy;
    fastcgi_temp_path {runtime_dir}/nginx-fastcgi;
    uwsgi_temp_path {runtime_dir}/nginx-uwsgi;
    scgi_temp_path {runtime_dir}/nginx-scgi;
    client_max_body_size {max_body_bytes};
    client_body_buffer_size {BODY_BUFFER_BYTES};  # larger bodies go to client_body_temp_path
    client_body_timeout {CLIENT_TIMEOUT_S}s;
    client_header_timeout {CLIENT_TIMEOUT_S}s;
    limit_conn_zone $server_name zone=active:1m;
    limit_conn_status 429;  # an internal code, answered as a JSON 503 (@busy)
    keepalive_timeout 75s;
    map $content_type $form_type {{
        default "";
{_form_patterns()}
    }}
{_multi_model_http(settings, runtime_dir)}    upstream mms {{
        server {mms_address(runtime_dir)};
        keepalive 32;
    }}
    server {{
        listen {settings.port} backlog=1024;
        server_name serve;  # the limit_conn key: an empty key would not be counted
{_own_locations(settings, runtime_dir)}
        location / {{  # not /ping: a busy server is not a dead one
{_to_mms(settings, page)}
        }}
{locations}        error_page 413 = @too_large;
        error_page 429 = @busy;
        error_page 502 504 = @down;
        location @too_large {{ return 413 {page['too_large']}; }}
        location @busy {{ return 503 {page['busy']}; }}
        location @down {{ return 503 {page['down']}; }}
    }}
}}
"""


def start(settings: ServeSettings, runtime_dir: str, max_body_bytes: int) -> subprocess.Popen:
    """Write the configuration, check it, start nginx (in the foreground, as our child)."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        raise FrontError("nginx is not installed (apt-get install nginx); serve needs it in "
                         "front of multi-model-server")
    conf = os.path.join(runtime_dir, "nginx.conf")
    with open(conf, "w") as stream:
        stream.write(render_config(settings, runtime_dir, max_body_bytes))
    command = [nginx, "-p", runtime_dir, "-e", "stderr", "-c", conf]
    test = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True, check=False)
    if test.returncode != 0:
        raise FrontError(f"nginx refused {conf}: {' '.join(test.stderr.split())}")
    nginx = subprocess.Popen(command)
    _wait_listening(nginx, settings.port)
    return nginx


def _wait_listening(nginx: subprocess.Popen, port: int, timeout: float = 10.0) -> None:
    """Return once nginx accepts connections; raise if it exited (it printed why: a port in
    use, say) or did not listen in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nginx.poll() is not None:
            raise FrontError(f"nginx exited {nginx.returncode}: it could not listen on port "
                             f"{port} (its message is above)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    nginx.kill()
    raise FrontError(f"nginx did not listen on port {port} within {timeout:g} s")
