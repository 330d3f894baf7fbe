"""A run's trained models and data, rebuilt from its directory.

The folds come from ``RUN/recipe.toml`` (the resolved recipe) through
:func:`milzoo.datasets.folds_for`, as the run built them, so a fold's ``test``
split is exactly the bags that fold was evaluated on.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from milzoo.errors import CheckpointError, RunDirError, UserError


class RunContext:
    """Lazily loads the recipe, the dataset, the folds and the fold models of a run."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "recipe.toml").exists():
            raise RunDirError(
                f"{self.run_dir} is not a milzoo run directory (no recipe.toml); "
                "pass the --out folder of a `milzoo run`."
            )
        self._models: dict[int, tuple[object, str]] = {}

    @cached_property
    def recipe(self):
        from milzoo.recipe import load_recipe

        return load_recipe(str(self.run_dir / "recipe.toml"))

    @property
    def display_name(self) -> str:
        """The recipe's name, or the directory's when the recipe cannot be read."""
        try:
            return str(self.recipe.root.name)
        except Exception:  # noqa: BLE001 - only a label
            return self.run_dir.name

    @cached_property
    def folds(self):
        from milzoo.datasets import folds_for

        return folds_for(self.recipe)

    def fold_data(self, fold: int):
        folds = self.folds
        if not 0 <= fold < len(folds):
            raise UserError(f"--fold {fold} is out of range; {self.run_dir} has folds 0..{len(folds) - 1}.")
        return folds[fold]

    def split_names(self, fold: int) -> list[str]:
        return ["train", *self.fold_data(fold).evals]

    def dataset(self, fold: int, split: str):
        """The bags of ``split`` (``train``, ``val``, ``test``, ...) in fold ``fold``."""
        data = self.fold_data(fold)
        if split == "train":
            return data.train
        if split in data.evals:
            return data.evals[split]
        raise UserError(
            f"fold {fold} of {self.run_dir} has no split {split!r}; choose one of {self.split_names(fold)} (--split)."
        )

    def model_dir(self, fold: int) -> tuple[Path, str]:
        """The fold's validation-selected model when there is one, else its last model."""
        folder = self.run_dir / f"fold-{fold:02d}"
        for which in ("best", "last"):
            if (folder / which / "config.json").exists():
                return folder / which, which
        have = sorted(p.name for p in self.run_dir.glob("fold-*") if (p / "last" / "config.json").exists())
        raise CheckpointError(
            f"{folder} holds no trained model (no best/ or last/ checkpoint). "
            + (f"Folds with a model: {', '.join(have)}; pick one with --fold." if have else
               "The run has not finished an epoch yet.")
        )

    def model(self, fold: int):
        """``(model in eval mode on the CPU, "best" or "last")``.

        The model decides by the threshold its checkpoint recorded (chosen on validation), else by argmax
        (:mod:`milzoo.model.decision`), as ``milzoo localize`` does.
        """
        if fold not in self._models:
            from milzoo.checkpoint import load_model
            from milzoo.model.decision import apply_recorded_threshold

            path, which = self.model_dir(fold)
            self._models[fold] = (apply_recorded_threshold(load_model(path), path), which)
        return self._models[fold]
