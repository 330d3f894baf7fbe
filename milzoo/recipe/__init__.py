"""Recipes: TOML files that name components by registry name and set their options.

``schema`` holds the recipe's sections and limits, ``_toml`` reads TOML within those limits and applies
overrides, ``_validate`` gives a :class:`Recipe` (``load_recipe`` / ``validate_recipe``); ``book`` holds the
recipes that installed distributions ship by name (``milzoo recipes``).
"""

from milzoo._lazy import attach

_EXPORTS = {
    # schema
    "MAX_EPOCHS": "schema", "MAX_THREADS": "schema", "MAX_WORKERS": "schema", "MAX_REPEATS": "schema",
    "MAX_SEED": "schema", "ComponentTable": "schema", "OptimConfig": "schema", "ScheduleConfig": "schema",
    "EarlyStoppingConfig": "schema", "AverageConfig": "schema", "TrainConfig": "schema", "ProtocolConfig": "schema",
    "RecipeModel": "schema", "ModelRecipeModel": "schema",
    # _toml
    "MAX_RECIPE_BYTES": "_toml", "parse_value": "_toml", "apply_overrides": "_toml", "loads_toml": "_toml",
    "read_toml": "_toml",
    # _validate
    "Recipe": "_validate", "validate_recipe": "_validate", "load_recipe": "_validate",
    # book
    "ShippedRecipe": "book", "list_recipes": "book", "get_recipe": "book",
    # errors
    "UnknownRecipeError": "milzoo.errors", "AmbiguousRecipeError": "milzoo.errors",
    "RecipeRegistrationError": "milzoo.errors",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
