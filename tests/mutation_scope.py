"""A pytest plugin for `make mutants` only ([tool.mutmut] in pyproject.toml loads it):
each mutant runs only the tests aimed at its module, not every selected test that happens
to call the mutated function. A caller token is verified and a key ring built by nearly
every API test; running all of them for each surviving mutant of the verifier took the
run from minutes to most of an hour (docs/mutation.md).

mutmut names the mutant under test in MUTANT_UNDER_TEST, e.g.
`service.security.callers.xǁTokenVerifierǁverify__mutmut_3`. Its stats, clean and
forced-fail runs use names that are no module's, and then nothing is deselected."""

from __future__ import annotations

import os
import re

import pytest

# Module -> the test files that target it. The union is [tool.mutmut]'s test selection;
# tests/unit/test_mutation_scope.py keeps the two in step.
SCOPES: dict[str, tuple[str, ...]] = {
    "service.security.callers": (
        "tests/unit/test_callers.py",
        "tests/hostile/test_caller_tokens.py",
        "tests/api/test_credentials.py",
    ),
    "service.security.crypto": (
        "tests/unit/test_crypto.py",
        "tests/unit/test_keys.py",
        "tests/hostile/test_sealed_binding.py",
    ),
    "service.security.egress": (
        "tests/unit/test_egress.py",
        "tests/api/test_egress.py",
    ),
    "service.security.domains": (
        "tests/unit/test_domains.py",
        "tests/hostile/test_stored_data.py",
    ),
    "service.installs.sealing": (
        "tests/hostile/test_sealed_binding.py",
        "tests/hostile/test_stored_data.py",
        "tests/unit/test_keys.py",
        "tests/unit/test_install_service.py",
        "tests/api/test_credentials.py",
    ),
    "service.neto.actions": (
        "tests/unit/test_callers.py",
        "tests/api/test_invoke.py",
    ),
    "service.neto.upstream": (
        "tests/unit/test_upstream_rules.py",
        "tests/api/test_invoke.py",
        "tests/api/test_egress.py",
    ),
    "service.neto.urls": (
        "tests/unit/test_api_urls.py",
        "tests/unit/test_upstream_rules.py",
        "tests/api/test_egress.py",
    ),
    "service.oauth.pending": (
        "tests/api/test_oauth_flow.py",
        "tests/api/test_app_state.py",
        "tests/api/test_install_bounds.py",
    ),
}

# `module.x_function__mutmut_N` or `module.xǁClassǁmethod__mutmut_N`
_MUTANT = re.compile(r"^(?P<module>[\w.]+?)\.x[_ǁ]")


def scope_of(mutant: str) -> tuple[str, ...] | None:
    """The test files a mutant runs, or None when `mutant` names no scoped module."""
    match = _MUTANT.match(mutant)
    return SCOPES.get(match["module"]) if match else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scope = scope_of(os.environ.get("MUTANT_UNDER_TEST", ""))
    if scope is None:
        return
    kept = [item for item in items if item.nodeid.split("::", 1)[0] in scope]
    dropped = [item for item in items if item.nodeid.split("::", 1)[0] not in scope]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
