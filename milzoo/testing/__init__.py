"""The component contract suite: generic checks every encoder, pooling, loss and augment must pass.

Plugin authors run it in their own pytest suite, in the spirit of
scikit-learn's ``parametrize_with_checks``::

    from milzoo.testing import parametrize_with_checks
    from my_plugin.pooling import MyPooling

    @parametrize_with_checks([MyPooling, (MyPooling, {"gated": True})])
    def test_contract(component, check):
        check(component)

That generates one test per (component, check) with readable ids such as
``pooling:my_pool-check_pooling_padding``.  ``check_pooling(MyPooling)`` (and
``check_encoder``, ``check_loss``, ``check_augment``) runs every check of one
component at once and raises a single :class:`AssertionError` listing the
failures.  Components may be given as classes, ``(class, options)`` pairs or
registry names (``"pooling:abmil"``).

What is checked (small sizes, one CPU thread, the global RNG restored afterwards):

- every kind: the ``Config`` (defaults validate, ``model_dump``/JSON/TOML round
  trips, unknown keys are rejected), a ``state_dict`` round trip through
  safetensors into a fresh instance (identical outputs), seeded determinism;
- poolings: ``MILOutput`` shapes and types, a padded batch equals the bags one
  at a time, permutation invariance (unless ``permutation_invariant = False``),
  bags of one instance, gradients to every trainable parameter and to the
  instance features under the pooling's default loss, and the class's own
  default options (not ``contract_options``) on 1-d features;
- encoders: output shape, batch independence, a single instance, gradients;
- losses (bound to a model around a compatible pooling): the ``LossResult``,
  gradients, extra padding does not change the loss, state round trip;
- augments: ``[V, M, *s]`` views, also through :class:`~milzoo.model.mil.MILModel`;
- every kind: float64 (``train.precision = "fp64"``): outputs, losses and gradients stay float64.

Optional class attributes read by the suite (none is needed by milzoo itself):

``contract_options``      options (dict) the suite uses by default, e.g. small sizes for a slow model
``contract_in_shape``     encoders/augments: the instance shape to test with, e.g. ``(1, 28, 28)``;
                          without it ``(16,)``, ``(1, 28, 28)`` and ``(3, 32, 32)`` are tried in turn
``attention_normalized``  poolings: ``False`` when ``MILOutput.attention`` is not normalised to sum
                          to 1 over a bag's real instances (default ``True``)
``contract_pooling``      losses: the pooling (registry name or class) to pair the loss with; by
                          default a pooling whose ``default_loss`` is this loss, else ``mean``
``contract_needs_views``  losses: ``True`` (3 views) or a number of augmented views the model must make

Beyond the contract, :mod:`milzoo.testing.sanity` has training sanity helpers for pooling tests:
:func:`assert_memory_linear` (no n x n tensor in a training step), :func:`assert_learns_toy_problem` and
:func:`assert_trains_regression` (a short regression run through the Trainer).  :mod:`milzoo.testing.dispatch`
counts a training step's operators and host synchronisations (:class:`StepCounter`, :func:`count_per_step`):
a test can require that a component's step reads nothing back to the host, as benchmarks/step_ops.py does.
:func:`registered_plugins` registers plugin objects or modules for the length of a ``with`` block, as if they
were installed (a plugin's own hooks tested without packaging it).
"""

from __future__ import annotations

# check modules register their checks on import, in this order (it is the order of the test ids)
from milzoo.testing import config, pooling, encoder, loss, precision, task  # noqa: F401  isort: skip
from milzoo.testing._core import (
    ATOL, ComponentSpec, ContractFailure, IN_SHAPE_CANDIDATES, KIND_BASES, POOLING_SETTINGS, RTOL,
    all_registered_components, checks_for, resolve,
)
from milzoo.testing.config import check_config
from milzoo.testing.pooling import (
    check_pooling_defaults, check_pooling_determinism, check_pooling_gradients, check_pooling_lengths,
    check_pooling_output, check_pooling_padding, check_pooling_permutation, check_pooling_single_instance,
    check_pooling_state_dict,
)
from milzoo.testing.encoder import (
    check_augment_output, check_encoder_batch_independence, check_encoder_gradients, check_encoder_output,
    check_encoder_single_instance, check_seeded_determinism, check_state_dict_roundtrip,
)
from milzoo.testing.loss import (
    LOSS_DIM, LOSS_LENGTHS, check_loss_determinism, check_loss_gradients, check_loss_output,
    check_loss_padding, check_loss_state_dict,
)
from milzoo.testing.precision import (
    check_augment_float64, check_encoder_float64, check_loss_float64, check_pooling_float64,
)
from milzoo.testing.run import (
    check_augment, check_component, check_encoder, check_loss, check_pooling, check_task, parametrize_with_checks,
)
from milzoo.testing.sanity import (
    ShapeRecorder, assert_learns_toy_problem, assert_memory_linear, assert_trains_regression,
)
from milzoo.testing.dispatch import StepCount, StepCounter, count_per_step
from milzoo.testing.capture import check_step_capture, check_step_syncs
from milzoo.testing.plugins import registered_plugins

__all__ = [
    "ComponentSpec",
    "ShapeRecorder",
    "StepCount",
    "StepCounter",
    "all_registered_components",
    "assert_learns_toy_problem",
    "assert_memory_linear",
    "assert_trains_regression",
    "check_augment",
    "check_component",
    "check_encoder",
    "check_loss",
    "check_pooling",
    "check_step_capture",
    "check_step_syncs",
    "check_task",
    "checks_for",
    "count_per_step",
    "parametrize_with_checks",
    "registered_plugins",
    "resolve",
]
