"""xenray's experiment layer: the Cluster API, the toolstack CLI, xl.cfg parsing.

Ray reads some settings when it is first imported, so the environment every xenray process
must share is set here, before anything imports ray (ray-notes.md): authentication mode set
explicitly, and no per-worker re-packaging of this project when the driver runs under
``uv run``. Values a user has already exported win.
"""

import os

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_worker_maximum_startup_concurrency": "64",
    "RAY_DEDUP_LOGS": "0",
}

for _key, _value in RAY_ENV.items():
    os.environ.setdefault(_key, _value)
