"""Test configuration: four host devices for sharding tests, float64, a tiny study context.

XLA_FLAGS must be set before JAX initialises its backends; the default
device stays CPU 0, so single-device tests are unaffected. Tests marked
``devices(n)`` need ``n`` devices of the default backend: always there on the
CPU, skipped (saying so) where the default backend is one GPU.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

from jdl.studies.registry import Context  # noqa: E402


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("devices")
    if marker and jax.device_count() < marker.args[0]:
        pytest.skip(f"needs {marker.args[0]} devices of the default backend; "
                    f"{jax.default_backend()} has {jax.device_count()}")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A tiny-mode study context writing figures to a fresh folder per test module."""
    return Context(mode="tiny", out_dir=tmp_path_factory.mktemp("claims"))
