"""Running the checks: whole-component checks and ``parametrize_with_checks``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from milzoo.testing._core import ComponentSpec, checks_for, resolve


def check_component(component: Any, options: dict[str, Any] | None = None) -> None:
    """Run every check of one component; raise one AssertionError listing all failures."""
    spec = resolve(component, options)
    checks = checks_for(spec.kind)
    failures = []
    for check in checks:
        try:
            check(spec)
        except AssertionError as exc:
            failures.append(f"  - {check.__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a crash is a failure too
            failures.append(f"  - {check.__name__}: raised {type(exc).__name__}: {exc}")
    if failures:
        raise AssertionError(
            f"{spec.id} fails {len(failures)} of {len(checks)} contract checks:\n" + "\n".join(failures)
        )


def _check_kind(kind: str):
    def run(component: Any, options: dict[str, Any] | None = None) -> None:
        spec = resolve(component, options)
        if spec.kind != kind:
            raise TypeError(f"check_{kind} got the {spec.kind} {spec.name!r}; use check_{spec.kind}")
        check_component(spec)

    run.__name__ = f"check_{kind}"
    run.__doc__ = f"Run every contract check of a {kind}; raise one AssertionError listing all failures."
    return run


check_encoder = _check_kind("encoder")
check_pooling = _check_kind("pooling")
check_loss = _check_kind("loss")
check_augment = _check_kind("augment")
check_task = _check_kind("task")


ExpectedFailures = dict[str, dict[str, str]] | Callable[[ComponentSpec, str], str | None] | None


def _expected_reason(expected: ExpectedFailures, spec: ComponentSpec, check: str) -> str | None:
    if expected is None:
        return None
    if callable(expected):
        return expected(spec, check)
    for key in (spec.id, f"{spec.kind}:{spec.name}"):
        reason = (expected.get(key) or {}).get(check)
        if reason:
            return reason
    return None


def parametrize_with_checks(components: Iterable[Any], *, expected_failures: ExpectedFailures = None):
    """A ``pytest.mark.parametrize`` over every (component, check) pair.

    The decorated test takes ``component`` and ``check`` and calls ``check(component)``.
    ``components`` holds classes, ``(class, options)`` pairs or ``"kind:name"`` strings.
    ``expected_failures`` maps a component id (``"pooling:abmil"``) to ``{check name: reason}``
    (or is a callable ``(spec, check_name) -> reason or None``); those cases are marked
    ``xfail(strict=True)`` so they stay visible and flag when fixed.
    """
    import pytest

    params = []
    for component in components:
        spec = resolve(component)
        for check in checks_for(spec.kind):
            marks = []
            reason = _expected_reason(expected_failures, spec, check.__name__)
            if reason:
                marks.append(pytest.mark.xfail(strict=True, reason=reason, raises=AssertionError))
            params.append(pytest.param(spec, check, id=f"{spec.id}-{check.__name__}", marks=marks))
    return pytest.mark.parametrize(("component", "check"), params)
