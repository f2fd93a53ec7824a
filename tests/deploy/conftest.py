"""Fixtures for the deployment tests: each chart rendering is done once per session."""

from __future__ import annotations

import pytest

from .helmchart import Rendered, dev_values, production_values, render


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render(None)


@pytest.fixture(scope="session")
def production_render() -> Rendered:
    return render(production_values())


@pytest.fixture(scope="session")
def dev_render() -> Rendered:
    return render(dev_values())
