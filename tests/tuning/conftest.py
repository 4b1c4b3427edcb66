"""A local Ray per test module (2 CPUs), shut down when the module is done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tuning.synthetic import start_ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    start_ray()
    yield
    ray.shutdown()
