"""Recipes: TOML files that name components by registry name and set their options.

``load_recipe`` / ``validate_recipe`` give a :class:`Recipe`; ``book`` holds the recipes that installed
distributions ship by name (``milzoo recipes``).
"""

from milzoo._lazy import attach

_EXPORTS = {
    # _recipe
    "MAX_EPOCHS": "_recipe", "MAX_THREADS": "_recipe", "MAX_WORKERS": "_recipe", "MAX_REPEATS": "_recipe",
    "MAX_SEED": "_recipe", "MAX_RECIPE_BYTES": "_recipe", "ComponentTable": "_recipe", "OptimConfig": "_recipe",
    "ScheduleConfig": "_recipe", "EarlyStoppingConfig": "_recipe", "AverageConfig": "_recipe",
    "TrainConfig": "_recipe", "ProtocolConfig": "_recipe", "RecipeModel": "_recipe", "Recipe": "_recipe",
    "parse_value": "_recipe", "apply_overrides": "_recipe", "loads_toml": "_recipe", "read_toml": "_recipe",
    "validate_recipe": "_recipe", "load_recipe": "_recipe",
    # book
    "ShippedRecipe": "book", "UnknownRecipeError": "book", "AmbiguousRecipeError": "book",
    "RecipeRegistrationError": "book", "list_recipes": "book", "get_recipe": "book",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
