"""`make mutants` narrows each mutant's tests to its module's (tests/mutation_scope.py):
the narrowing must match the modules and tests pyproject.toml's [tool.mutmut] names, or
a module would run no test (every mutant a survivor) or a selected file none."""

from __future__ import annotations

import tomllib

from tests.mutation_scope import SCOPES, scope_of
from tests.support import ROOT

MUTMUT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def test_every_mutated_module_has_a_scope_and_nothing_else_does():
    modules = {path.removesuffix(".py").replace("/", ".") for path in MUTMUT["only_mutate"]}
    assert set(SCOPES) == modules


def test_the_selection_is_the_union_of_the_scopes_and_every_file_exists():
    union = {path for paths in SCOPES.values() for path in paths}
    assert set(MUTMUT["pytest_add_cli_args_test_selection"]) == union
    assert all((ROOT / path).is_file() for path in union), sorted(union)


def test_a_mutant_name_maps_to_its_modules_tests_and_other_runs_to_none():
    callers = SCOPES["service.security.callers"]
    assert scope_of("service.security.callers.xǁTokenVerifierǁverify__mutmut_3") == callers
    assert scope_of("service.security.callers.x_mint__mutmut_12") == callers
    for not_a_mutant in ("", "stats", "fail", "list_all_tests", "service.web.x_f__mutmut_1"):
        assert scope_of(not_a_mutant) is None
