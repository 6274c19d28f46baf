"""Shared test configuration.

Unit tests (tests/unit) need no Ray. Integration tests share one Ray cluster per
session through the fixtures in tests/integration/conftest.py.
"""

from actors.transport.naming import ray_environment

ray_environment()  # this test process starts Ray nodes: set the shared environment first

from hypothesis import HealthCheck, settings  # noqa: E402

# The machines here are shared and noisy: no hypothesis deadline, bounded examples.
settings.register_profile(
    "xenray",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("xenray")

# Components log through structlog; keep test output to warnings and above.
import logging  # noqa: E402

import structlog  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
