"""torch.optim's SGD, Adam and AdamW without their ``torch.compile`` guards.

Every ``torch.optim.Optimizer`` wraps ``add_param_group``, ``zero_grad``, ``state_dict``,
``load_state_dict`` and ``step`` in ``torch._dynamo.disable`` or dynamo graph breaks, and its
``step`` and ``zero_grad`` in a profiler ``record_function``.  The first call of any of them
imports ``torch._dynamo`` (with sympy, the FX shape machinery and FSDP: 2 to 4 s of every run on a
2-core machine, once per process, so once per ``--jobs`` worker), and the profiler ranges cost a
dispatcher call each per step.  The guards matter only when dynamo traces the optimiser; milzoo
never compiles one (``train.compile`` compiles the encoder).

The classes here subclass torch's and call the *same* functions without those wrappers
(``functools.wraps`` keeps each original as ``__wrapped__``): the same arithmetic, the same
``state_dict`` (plain torch optimisers load it and vice versa), the step pre/post hooks still run,
and the profiler range is still recorded while a ``torch.profiler`` is active.  Should a future torch
drop ``__wrapped__``, the wrapped methods are called as before (slower to start, same results);
``tests/test_optim.py`` notices.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch.autograd import profiler as _profiler
from torch.optim import optimizer as _optimizer


def _bare(fn):
    """``fn`` without its decorators."""
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


_add_param_group = _bare(torch.optim.Optimizer.add_param_group)
_state_dict = _bare(torch.optim.Optimizer.state_dict)
_load_state_dict = _bare(torch.optim.Optimizer.load_state_dict)
_zero_grad = _bare(torch.optim.Optimizer.zero_grad)


class _Unguarded:
    """Mixin for a ``torch.optim`` class: its methods without the dynamo guards (module docstring)."""

    _torch_step = None  # the torch class's undecorated step, set by _unguarded()

    def _patch_step_function(self) -> None:  # torch wraps the class's step in a profiler hook here
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"

    def add_param_group(self, param_group) -> None:
        _add_param_group(self, param_group)

    def state_dict(self):
        return _state_dict(self)

    def load_state_dict(self, state_dict) -> None:
        _load_state_dict(self, state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none or _profiler._is_profiler_enabled:
            return _zero_grad(self, set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self, closure=None):
        pre = (*_optimizer._global_optimizer_pre_hooks.values(), *self._optimizer_step_pre_hooks.values())
        args, kwargs = (self,), ({} if closure is None else {"closure": closure})
        for hook in pre:
            result = hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        if _profiler._is_profiler_enabled:
            with _profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
                out = self._guarded_grad_step(*args[1:], **kwargs)
        else:
            out = self._guarded_grad_step(*args[1:], **kwargs)
        self._optimizer_step_code()
        for hook in chain(_optimizer._global_optimizer_post_hooks.values(),
                          self._optimizer_step_post_hooks.values()):
            hook(self, args, kwargs)
        return out

    def _guarded_grad_step(self, *args, **kwargs):
        # what torch's _use_grad_for_differentiable does, without its graph breaks
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return type(self)._torch_step(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(prev)


def _unguarded(base: type) -> type:
    cls = type(base.__name__, (_Unguarded, base), {
        "__module__": __name__,
        "__doc__": f"``torch.optim.{base.__name__}`` without its torch.compile guards (milzoo.optim).",
        "_torch_step": staticmethod(_bare(base.step)),
    })
    return cls


SGD = _unguarded(torch.optim.SGD)
Adam = _unguarded(torch.optim.Adam)
AdamW = _unguarded(torch.optim.AdamW)
