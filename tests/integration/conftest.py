"""Fixtures shared by integration modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ray_cluster import RayCluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One real two-node Ray cluster (one CPU each) for every Ray test of the run.

    Starting one costs ~15-20 s on the 2-core CI machine. A test that kills the
    second node restarts it (``start_node()``) before it ends.
    """
    with RayCluster(head_cpus=1, node_cpus=1) as cluster:
        yield cluster
