"""The docs site's generated reference (rkbench/reference.py, built into docs/ by the mkdocs hook):
every suite field and every registered thing's parameter is listed with a description, and error
lines about a suite field name the docs section that describes it. (`mkdocs build --strict` itself
runs in .ci/run.)"""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field

from rkbench import reference
from rkbench.cli import main
from rkbench.errors import ConfigError
from rkbench.methods import METHODS
from rkbench.suite import suite_from_dict, suite_sections

from conftest import tiny_suite_dict


def test_every_suite_field_and_registered_parameter_has_a_description():
    assert reference.undescribed() == []


def test_a_field_without_a_description_is_found():
    class Params(BaseModel):
        described: int = Field(1, description="a number")
        bare: int = 2

    assert reference.undescribed([("thing", Params)]) == ["thing: bare"]


def test_the_suite_reference_lists_every_field_of_every_section_under_its_anchor():
    page = reference.suite_reference()
    sections = re.split(r"^### ", page, flags=re.M)[1:]
    by_anchor = {re.search(r"\{#([\w-]+)\}", s.splitlines()[0]).group(1): s for s in sections}
    for path, model in suite_sections():
        anchor = path.replace(".", "-") if path else "top-level"
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in by_anchor[anchor], (path, name)
            assert field.description.split(";")[0][:30].replace("|", "\\|") in by_anchor[anchor], (path, name)
    assert "epochs" in by_anchor["training"] and "lr" in by_anchor["training-optimizer"]


def test_the_parameters_page_lists_every_registered_method_and_its_parameters():
    page = reference.parameters_reference()
    for entry in METHODS:
        anchor = reference.entry_anchor("method", entry.name)
        start = page.index(f"{{#{anchor}}}")
        section = page[start:page.find("\n### ", start)]
        for name, field in entry.obj.Params.model_fields.items():
            assert f"| `{name}` |" in section, (entry.name, name)
    # an attack preset shows its own defaults, not the shared class's
    start = page.index("{#attack-pgd1000}")
    assert "| `steps` | `int` | `1000` |" in page[start:page.find("\n### ", start)]


@pytest.mark.parametrize("change, link", [
    (lambda raw: raw["training"].update(optimizer={"lr": -1}), "(see docs/suites.md#training-optimizer)"),
    (lambda raw: raw["threat"].update(eps=0), "(see docs/suites.md#threat)"),
    (lambda raw: raw.update(evaluation={"cascade": "maybe"}), "(see docs/suites.md#evaluation)"),
    (lambda raw: raw["methods"].update(kd={"t": -4}), "(see docs/parameters.md#method-kd)"),
    (lambda raw: raw["methods"].update(kd={"tt": 4}), "(see docs/parameters.md#method-kd)"),
    (lambda raw: raw["dataset"].update(test_fractoin=0.5), "(see docs/parameters.md#dataset-digits)"),
    (lambda raw: raw["methods"].update(ardd={}), "(see docs/parameters.md#methods)"),
    (lambda raw: raw["students"].append("cnn_tinyy"), "(see docs/parameters.md#models)"),
    (lambda raw: raw["teachers"][0].update(source="zoo"), "(see docs/parameters.md#teacher-sources)"),
])
def test_an_error_about_a_field_ends_with_the_docs_section_that_describes_it(change, link):
    raw = tiny_suite_dict()
    change(raw)
    with pytest.raises(ConfigError) as caught:
        suite_from_dict(raw, "s.yaml")
    message = str(caught.value)
    assert message.endswith(link), message
    anchor = link.split("#")[1].rstrip(")")
    page = reference.suite_reference() if "suites.md" in link else reference.parameters_reference()
    assert f"{{#{anchor}}}" in page  # the anchor exists on the generated page


def test_rkbench_list_output_is_what_the_reference_shows():
    listing = reference.registry_listing("methods")  # the build renders every kind the same way
    for entry in METHODS:
        assert entry.name in listing
