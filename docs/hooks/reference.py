"""mkdocs hook: fills the generated parts of the docs from the code at build time (mkdocs.yml: hooks).

`<!-- rkbench:suite-reference -->` (docs/suites.md): every field of a suite, from the pydantic models;
`<!-- rkbench:parameters -->` (docs/parameters.md): every registered thing's parameters;
`<!-- rkbench:list -->` (docs/parameters.md): what `rkbench list KIND` prints.
The rendering lives in rkbench/reference.py, which the tests import too."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # build from a checkout without installing it
    sys.path.insert(0, str(ROOT))

MARKERS = {
    "<!-- rkbench:suite-reference -->": "suite_reference",
    "<!-- rkbench:parameters -->": "parameters_reference",
    "<!-- rkbench:list -->": "registries_listing",
}


def on_page_markdown(markdown, page, config, files):
    if "<!-- rkbench:" not in markdown:
        return markdown
    from rkbench import reference

    for marker, function in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, getattr(reference, function)())
    return markdown
