"""``docs/recipes.md`` is generated from ``recipes/`` and lists every recipe."""

from __future__ import annotations

import importlib.util

from tests.recipes.helpers import REPO, recipe_cases

_spec = importlib.util.spec_from_file_location("gen_recipes_doc", REPO / "scripts" / "gen_recipes_doc.py")
gen_recipes_doc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_recipes_doc)


def test_recipes_doc_is_up_to_date():
    assert (REPO / "docs" / "recipes.md").read_text() == gen_recipes_doc.render(), (
        "docs/recipes.md is out of date: run `python scripts/gen_recipes_doc.py`"
    )


def test_recipes_doc_has_a_command_for_every_recipe():
    text = (REPO / "docs" / "recipes.md").read_text()
    for base, delta in recipe_cases():
        name = base.parent.name
        assert f"--config recipes/{name}/base.yaml --config recipes/{name}/{delta.name}" in text
