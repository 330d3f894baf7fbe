"""Every registered pooling's training step as a GPU runs it: captured whole by ``train.compile = "step"`` /
``"reduce-overhead"`` with the eager step's numbers (``milzoo.testing.check_step_capture``), and no host
synchronisation in the eager step (``check_step_syncs``); bag lengths known on the host end to end."""

from __future__ import annotations

import pytest
import torch

from milzoo import registry
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.layers import bag_lengths, is_padded
from milzoo.testing import check_step_capture, check_step_syncs
from milzoo.testing.capture import cpu_compiler

# Poolings whose step is not captured yet, and why; strict: one that starts passing fails the suite, so the
# table (and docs/performance.md's) stays true.
NOT_CAPTURED = {
    "dtfd": "the training split draws a permutation per bag from torch's CPU generator (as the official code): a "
            "compiled region draws other permutations than the eager step, and a CUDA graph cannot replay CPU work; "
            "split = \"chunks\" (no randomness) and split_generator = \"device\" are captured",
}


def _marked(names):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=NOT_CAPTURED[n]))
            if n in NOT_CAPTURED else n for n in names]



POOLINGS = _marked(registry.names("pooling"))


@pytest.mark.parametrize("name", POOLINGS)
def test_the_step_is_captured_with_the_eager_numbers(name):
    check_step_capture(f"pooling:{name}")


@pytest.mark.parametrize("padded", [False, True], ids=["one-size", "padded"])
@pytest.mark.parametrize("name", registry.names("pooling"))
def test_the_eager_step_reads_nothing_back(name, padded):
    check_step_syncs(f"pooling:{name}", padded=padded)


#: poolings whose step is also lowered by inductor here, one per mechanism a GPU's compiler must handle:
#: attention with a convolution (TransMIL's PPEG), top-k instance selection (CLAM), a loss updating its state in
#: place (DEMIL), random draws on the device (DTFD's device split); a pooling buffer updated in place (PSAtt) is
#: lowered in plugins/milzoo-vision/tests/test_step_syncs.py.  Every pooling passes (about 130 s for all
#: sixteen with a cold cache, 2026-12-07, docs/performance.md); four keep the suite's time.
INDUCTOR = {"transmil": ({}, False), "clam_sb": ({}, False), "demil": ({}, False),
            "dtfd": ({"split_generator": "device"}, True)}


@pytest.mark.skipif(cpu_compiler() is None, reason="inductor builds C++ kernels on a CPU: no compiler found")
@pytest.mark.parametrize("name", list(INDUCTOR))
def test_the_step_is_lowered_by_inductor_with_the_eager_numbers(name):
    """The step compiled by inductor, the backend a GPU's "reduce-overhead" compiles with (less the CUDA graphs):
    generated kernels give the eager numbers (float64, relative 1e-9)."""
    if name not in registry.names("pooling"):
        pytest.skip(f"the {name} plugin is not installed")
    options, draws = INDUCTOR[name]
    check_step_capture(f"pooling:{name}", options, backend="inductor", draws=draws)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="aot_eager"):
        check_step_capture("pooling:mean", backend="eager")


@pytest.mark.cuda
def test_a_loss_that_updates_its_state_is_one_cuda_graph_on_a_gpu():
    """Inductor and CUDA graphs (train.compile = "reduce-overhead"): DEMIL's loss updates its soft labels inside
    the graph (its buffers are marked static), no graph is skipped, and the numbers are the eager step's to
    float32 tolerance.  One model only: the GPU call has minutes, and each compilation takes about one."""
    check_step_capture("pooling:demil", device="cuda")


def test_dtfd_with_contiguous_chunks_is_captured():
    """The PSMIL paper's DTFD baseline split (no randomness) is captured whole."""
    if "dtfd" not in registry.names("pooling"):
        pytest.skip("the dtfd plugin is not installed")
    check_step_capture("pooling:dtfd", {"split": "chunks", "num_groups": 2})


@pytest.mark.parametrize("padded", [False, True], ids=["one-size", "padded"])
def test_dtfd_with_its_split_drawn_on_the_device_reads_nothing_back_and_is_captured(padded):
    """split_generator = "device": the random split with no host work; captured whole (its draws differ from the
    eager step's, as any random draw in a compiled region: only the capture is compared)."""
    if "dtfd" not in registry.names("pooling"):
        pytest.skip("the dtfd plugin is not installed")
    check_step_syncs("pooling:dtfd", {"split_generator": "device"}, padded=padded)
    if not padded:
        check_step_capture("pooling:dtfd", {"split_generator": "device"}, draws=True)


def test_the_table_names_registered_poolings():
    assert set(NOT_CAPTURED) <= set(registry.names("pooling"))


def test_a_step_that_reads_a_value_back_is_named_with_its_line(monkeypatch):
    """The checks fail, naming the code, for a pooling that branches on a tensor."""
    from milzoo.builtin.poolings import MeanPooling

    forward = MeanPooling.forward

    def branching(self, h, mask):
        out = forward(self, h, mask)
        if bool(out.bag_logits.sum() > 1e9):
            out.bag_logits = out.bag_logits * 0
        return out

    monkeypatch.setattr(MeanPooling, "forward", branching)
    with pytest.raises(AssertionError, match=r"pooling:mean: the step cannot be captured: .*test_step_capture\.py"):
        check_step_capture("pooling:mean")
    with pytest.raises(AssertionError,
                       match=r"host synchronisations per training step \(bags of one size\): .*_local_scalar_dense"):
        check_step_syncs("pooling:mean")


def test_a_compiled_step_with_other_numbers_fails(monkeypatch):
    """A region that computes something else than the eager step (here: a different constant when traced)."""
    from milzoo.builtin.poolings import MeanPooling

    forward = MeanPooling.forward

    def traced_differently(self, h, mask):
        out = forward(self, h, mask)
        if torch.compiler.is_compiling():
            out.bag_logits = out.bag_logits * 1.5
        return out

    monkeypatch.setattr(MeanPooling, "forward", traced_differently)
    with pytest.raises(AssertionError, match="compiled and"):
        check_step_capture("pooling:mean")


def test_collated_batches_know_their_lengths_on_the_host():
    bags = [Bag(torch.randn(n, 3), 0, index=i) for i, n in enumerate([4, 2, 4])]
    batch = collate_bags(bags)
    assert batch.host_lengths() == [4, 2, 4] and batch.unpadded is False
    assert batch.select(1).host_lengths() == [2]
    full = collate_bags([bags[0], bags[2]])
    assert full.host_lengths() == [4, 4] and full.unpadded
    assert full.to("cpu").host_lengths() == [4, 4]
    from dataclasses import replace

    assert replace(batch, known_lengths=None, unpadded=None).host_lengths() is None


def test_lengths_helpers_read_the_mask_only_when_not_told():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert bag_lengths(mask) == [2, 3] and is_padded(mask)
    assert bag_lengths(mask, (2, 3)) == [2, 3]
    full = torch.ones(2, 3, dtype=torch.bool)
    assert not is_padded(full) and not is_padded(full, [3, 3]) and is_padded(full, [3, 2])


def test_the_model_passes_lengths_only_to_poolings_that_take_them(monkeypatch):
    from milzoo.builtin.encoders import IdentityEncoder
    from milzoo.builtin.poolings import MeanPooling
    from milzoo.model.mil import MILModel

    seen = []
    forward = MeanPooling.forward

    def spy(self, h, mask, **kwargs):
        seen.append(kwargs)
        return forward(self, h, mask)

    monkeypatch.setattr(MeanPooling, "forward", spy)
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), MeanPooling(MeanPooling.Config(), 3, 2))
    batch = collate_bags([Bag(torch.randn(n, 3), 0, index=i) for i, n in enumerate([4, 2])])
    model(batch)
    monkeypatch.setattr(MeanPooling, "takes_lengths", True, raising=False)
    model(batch)
    assert seen == [{}, {"lengths": [4, 2]}]


def test_the_gpu_form_of_the_check_builds_a_float32_run(tmp_path):
    """What check_step_capture(device="cuda") trains, minus the GPU: a float32 run of the pooling whose step is
    compiled in "reduce-overhead" mode (on a CPU: "step", without CUDA graphs)."""
    from milzoo.testing._core import resolve
    from milzoo.testing.capture import _trainer

    tr, ds = _trainer(resolve("pooling:mean"), tmp_path, "reduce-overhead", 3, 5, 6, precision="fp32")
    assert ds[0].x.dtype == torch.float32
    assert tr.compiled_step is not None and tr.compiled_step.mode == "reduce-overhead"
    tr.compiled_step.compiled = tr.compiled_step._eager  # the region's code, without compiling it here
    assert tr.train_epoch(0)["loss"] > 0
