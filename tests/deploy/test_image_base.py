"""scripts/image_base.sh takes the Debian mirror for a local base from DEBIAN_MIRROR or
from the machine's own apt sources, never from a host written in the repository: a build
machine that may only reach its organisation's mirror already names it there. The script
runs for real (`--mirror` prints what debootstrap would be given) against apt folders
laid out in a temporary directory (APT_ETC)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .helmchart import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "image_base.sh"
MIRROR = "http://mirror.corp.test/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def mirror_of(apt: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"}
    return subprocess.run(
        ["bash", str(SCRIPT), "--mirror"],
        env={**environ, "APT_ETC": str(apt), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (apt / name).write_text(text)
    return apt


def found(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_deb822_source_for_bookworm_is_used_not_its_security_suite(tmp_path):
    apt = apt_dir(
        tmp_path,
        {
            "sources.list.d/debian.sources": f"""\
Types: deb
URIs: http://security.corp.test/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}

Types: deb
# a comment inside the stanza
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}
"""
        },
    )
    assert found(mirror_of(apt)) == MIRROR


def test_a_one_line_source_with_options_is_used(tmp_path):
    apt = apt_dir(tmp_path, {
        "sources.list": "# deb http://old.corp.test/debian bookworm main\n"
                        f"deb [arch=amd64 signed-by={KEYRING}] {MIRROR} bookworm main contrib\n"
                        "deb-src http://src.corp.test/debian bookworm main\n",
    })  # fmt: skip
    assert found(mirror_of(apt)) == MIRROR


def test_disabled_stanzas_inline_keys_and_other_repositories_are_passed_over(tmp_path):
    apt = apt_dir(tmp_path, {
        "sources.list.d/nodesource.sources": "Types: deb\nURIs: https://deb.nodesource.test/node\n"
                                             "Suites: nodistro\nComponents: main\n",
        "sources.list.d/a-off.sources": "Types: deb\nURIs: http://off.corp.test/debian\n"
                                        "Suites: bookworm\nEnabled: no\n",
        "sources.list.d/debian.sources": "Types: deb\nURIs: " + MIRROR + "\nSuites: bookworm\n"
                                         "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
                                         " .\n URIs: http://inside.the.key/debian\n"
                                         " -----END PGP PUBLIC KEY BLOCK-----\n",
    })  # fmt: skip
    assert found(mirror_of(apt)) == MIRROR


def test_a_machine_on_another_release_lends_its_debian_mirror(tmp_path):
    # trixie's sources, signed by Debian's archive key: that mirror serves bookworm too.
    apt = apt_dir(
        tmp_path,
        {
            "sources.list.d/debian.sources": f"""\
Types: deb
URIs: {MIRROR}
Suites: trixie trixie-updates
Components: main
Signed-By: {KEYRING}
"""
        },
    )
    assert found(mirror_of(apt)) == MIRROR


def test_without_a_usable_source_it_fails_and_names_the_variable(tmp_path):
    apt = apt_dir(tmp_path, {
        "sources.list.d/vendor.sources": "Types: deb\nURIs: https://vendor.test/apt\n"
                                         "Suites: stable\nComponents: main\n",
    })  # fmt: skip
    result = mirror_of(apt)
    assert result.returncode != 0 and result.stdout == ""
    assert "no Debian mirror for bookworm" in result.stderr
    assert "DEBIAN_MIRROR" in result.stderr


def test_debian_mirror_wins_over_the_machine_sources(tmp_path):
    apt = apt_dir(tmp_path, {"sources.list": f"deb {MIRROR} bookworm main\n"})
    chosen = "file:/srv/mirror/debian"
    assert found(mirror_of(apt, DEBIAN_MIRROR=chosen)) == chosen
    assert found(mirror_of(tmp_path / "empty", DEBIAN_MIRROR=chosen)) == chosen


# Public Debian and Ubuntu archive hosts (deb, ftp.<cc> and the like under debian.org): the
# pattern is spelled in pieces so that this file does not hold one itself.
HOSTS = re.compile(r"\b[\w.-]*" + r"\.debian\." + r"org\b|\barchive\." + r"ubuntu\.com\b")


def test_no_package_mirror_host_is_written_in_the_repository():
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=False
    )
    if listed.returncode != 0:
        pytest.fail(f"git ls-files failed (a git checkout is needed): {listed.stderr!r}")
    offenders = []
    for name in listed.stdout.decode().split("\0"):
        path = REPO_ROOT / name
        if not name or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        offenders += [f"{name}: {m.group(0)}" for m in HOSTS.finditer(text)]
    assert offenders == [], "a mirror host is written in the repository"
