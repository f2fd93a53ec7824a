"""The store API URL is built from parts: the validated domain goes into the host (as in
production) or into one whole path segment (tests and the demo), never spliced as text."""

from __future__ import annotations

import pytest

from service.neto.urls import ApiUrlBuilder


@pytest.mark.parametrize(
    ("template", "url"),
    [
        ("https://{store_domain}/do/WS/NetoAPI", "https://shop.example.com/do/WS/NetoAPI"),
        ("http://{store_domain}:8443/do/WS/NetoAPI", "http://shop.example.com:8443/do/WS/NetoAPI"),
        ("http://127.0.0.1:9000/{store_domain}/do/WS/NetoAPI",
         "http://127.0.0.1:9000/shop.example.com/do/WS/NetoAPI"),
    ],
)  # fmt: skip
def test_the_domain_goes_into_its_part_of_the_template(template, url):
    builder = ApiUrlBuilder(template)
    assert builder.url_for("shop.example.com") == url
    assert str(builder.build("shop.example.com")) == url


def test_a_domain_in_a_path_segment_cannot_add_segments_or_a_query():
    builder = ApiUrlBuilder("http://127.0.0.1:9000/{store_domain}/do/WS/NetoAPI")
    assert builder.url_for("a/../b?x#y") == "http://127.0.0.1:9000/a%2F..%2Fb%3Fx%23y/do/WS/NetoAPI"


@pytest.mark.parametrize(
    "template",
    [
        "ftp://{store_domain}/do/WS/NetoAPI",
        "{store_domain}/do/WS/NetoAPI",
        "https:///do/WS/NetoAPI",
        "https://api.example.com/x{store_domain}/NetoAPI",
        "https://api.example.com/do/WS/NetoAPI",
    ],
)
def test_a_template_without_a_whole_placeholder_part_is_refused(template):
    with pytest.raises(ValueError, match=r"store_domain|http"):
        ApiUrlBuilder(template)
