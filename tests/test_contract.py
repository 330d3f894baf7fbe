"""The contract suite (milzoo.testing) over every registered component, and tests that it catches breakage."""

from __future__ import annotations

import pytest
import torch
from pydantic import ConfigDict, Field
from torch import nn

from milzoo import registry
from milzoo.components.base import ComponentConfig, DatasetSource, Encoder, Loss, Pooling
from milzoo.layers.masking import masked_mean, masked_softmax
from milzoo.components.output import LossResult, MILOutput
from milzoo.testing import (
    all_registered_components,
    check_component,
    check_config,
    check_encoder_batch_independence,
    check_loss,
    check_loss_output,
    check_loss_padding,
    check_pooling,
    check_pooling_determinism,
    check_pooling_float64,
    check_pooling_gradients,
    check_pooling_output,
    check_pooling_padding,
    check_pooling_permutation,
    check_pooling_state_dict,
    checks_for,
    parametrize_with_checks,
    resolve,
)

# Real failures of first-party components stay visible as strict xfails (fix the component, then
# remove the entry: a strict xfail that passes fails the suite).
EXPECTED_FAILURES = {
    "encoder:resnet18": {
        "check_encoder_single_instance": (
            "BatchNorm in training mode needs more than one value per channel: at 32x32 (or 28x28) "
            "without `small_input` layer4 is 1x1, so a training batch holding a single instance "
            "(batch_size = 1 and a bag of one image) raises ValueError"
        ),
    },
}

# Non-default options of first-party components, checked too (when their plugin is installed).
VARIANTS = [
    ("pooling:abmil", {"gated": True, "attn_hidden": 16, "dropout": 0.25}),
    ("pooling:dsmil", {"mode": "multiclass", "score_mode": "mean", "query": "linear", "value": "linear_relu",
                       "patch_dropout": 0.3, "init": "default"}),
    ("pooling:dtfd", {"reduced_dim": 16, "num_res_blocks": 1, "attn_hidden": 8, "num_groups": 3,
                      "distill": "MaxMinS", "rank_class": "pred", "eval_split": "stratified"}),
    ("pooling:dtfd", {"reduced_dim": 16, "attn_hidden": 8, "eval_draws": 2, "instance_tier": "tier1"}),
    ("pooling:dtfd", {"reduced_dim": 16, "attn_hidden": 8, "split_generator": "device"}),
    # the PSMIL paper's own baselines (official 'dta', 'fsa', 'mha' poolings of LMBDA-design/PSAMIL)
    ("pooling:dtfd", {"split": "chunks", "num_groups": 10, "reduce": False, "tier1_classifier": "kaiming_nobias",
                      "detach_distilled": False, "instance_tier": "tier1", "attn_hidden": 8}),
    ("pooling:abmil", {"attention": "linear", "classifier": "kaiming_nobias"}),
    ("pooling:demil", {"head": "linear", "classifier": "kaiming_nobias", "detach_normaliser": True}),
    ("loss:dtfd", {"tier1_ce_input": "probabilities"}),
    ("pooling:psatt", {"proto_update": "all", "onehot_mix": True, "tau_p": 0.5}),
    ("pooling:psatt", {"onehot_mix": True, "classifier": "kaiming_nobias"}),  # the official code's form
    ("pooling:rgmil", {"train_regressor": True, "init": "kaiming_normal"}),
    ("pooling:demil", {"head": "linear", "share_uv": True}),
    ("pooling:transmil", {"hidden_dim": 32, "heads": 2, "dim_head": 8, "num_landmarks": 4,
                          "duplicates": "add", "attention_layer": 1, "residual_kernel": 0}),
    ("loss:dsmil", {"pos_weight": "auto"}),
    ("loss:demil", {"disambiguate": False, "entropy_weight": 0.0}),
    ("loss:psali", {"schedule": "constant", "lam": 0.1}),
    ("loss:psali", {"ce_input": "probabilities"}),
    ("encoder:mlp", {"dims": [16, 8], "dropout": 0.2}),
    ("augment:mil_views", {"num_views": 2, "pad_mode": "reflect"}),
    ("augment:mil_views", {"num_views": 3, "view0": "plain"}),
]


def _installed(ref: str) -> bool:
    kind, name = ref.split(":")
    return name in registry.names(kind)


COMPONENTS = all_registered_components() + [v for v in VARIANTS if _installed(v[0])]


@parametrize_with_checks(COMPONENTS, expected_failures=EXPECTED_FAILURES)
def test_contract(component, check):
    check(component)


# --------------------------------------------------------------------------- the suite itself


def test_all_registered_components_covers_every_kind_but_datasets():
    comps = all_registered_components()
    names = {(resolve(c).kind, c.name) for c in comps}
    assert {("encoder", "identity"), ("encoder", "mlp"), ("pooling", "mean"), ("pooling", "max"),
            ("loss", "bag_ce")} <= names
    for kind in ("pooling", "loss", "encoder", "augment"):
        assert {n for k, n in names if k == kind} == set(registry.names(kind))
    assert not any(issubclass(c, DatasetSource) for c in comps)


def test_resolve_accepts_classes_pairs_and_names():
    mean = registry.get_component("pooling", "mean")
    assert resolve("pooling:mean").cls is mean
    assert resolve("mean").cls is mean
    assert resolve(mean).id == "pooling:mean"
    spec = resolve((registry.get_component("encoder", "mlp"), {"dims": [4]}))
    assert spec.id == "encoder:mlp(dims=[4])" and spec.options == {"dims": [4]}
    with pytest.raises(TypeError, match="dataset"):
        resolve(registry.get_component("dataset", "classic"))
    with pytest.raises(TypeError, match="not a milzoo component"):
        resolve(int)


def test_contract_options_are_the_default_options():
    if not _installed("pooling:transmil"):
        pytest.skip("milzoo-transmil is not installed")
    spec = resolve("pooling:transmil")
    assert spec.options == spec.cls.contract_options and not spec.explicit
    assert "pooling:transmil-check_pooling_padding" in _ids([spec.cls])  # no options in the id


def _ids(components, **kw):
    mark = parametrize_with_checks(components, **kw)
    return [p.id for p in mark.args[1]]


def test_parametrize_ids_and_expected_failures():
    mean = registry.get_component("pooling", "mean")
    mark = parametrize_with_checks([mean, (mean, {})], expected_failures={"pooling:mean": {"check_pooling_padding": "x"}})
    assert mark.args[0] == ("component", "check")
    ids = [p.id for p in mark.args[1]]
    assert ids[:2] == ["pooling:mean-check_config", "pooling:mean-check_pooling_output"]
    assert len(ids) == 2 * len(checks_for("pooling"))
    xfails = [p.id for p in mark.args[1] if p.marks]
    assert xfails == ["pooling:mean-check_pooling_padding"] * 2
    assert all(m.kwargs["strict"] for p in mark.args[1] for m in p.marks)


def test_checks_restore_threads_and_rng():
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    check_pooling_determinism("pooling:mean")
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == 1


def test_whole_component_checks_pass_for_builtins():
    check_pooling("pooling:max")
    check_loss("loss:bag_ce")
    check_component("encoder:mlp", {"dims": [8]})
    with pytest.raises(TypeError, match="check_pooling"):
        check_loss("pooling:mean")


# --------------------------------------------------------------------------- broken components are caught


class _Base(Pooling):
    """A test pooling: mean over instances, linear head."""

    name = "test_base"

    class Config(ComponentConfig):
        pass

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.classifier = nn.Linear(in_dim, num_classes)

    def forward(self, h, mask):
        return MILOutput(bag_logits=self.classifier(masked_mean(h, mask)), mask=mask)


class IgnoresMask(_Base):
    """Averages over padded positions too."""

    name = "test_ignores_mask"

    def forward(self, h, mask):
        return MILOutput(bag_logits=self.classifier(h.mean(1)), mask=mask)


class UnusedParameter(_Base):
    """Has a layer the forward never uses."""

    name = "test_unused"

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.unused = nn.Linear(in_dim, 1)


class FirstInstance(_Base):
    """Uses the first instance only: order-dependent."""

    name = "test_first"

    def forward(self, h, mask):
        return MILOutput(bag_logits=self.classifier(h[:, 0]), mask=mask)


class FirstInstanceDeclared(FirstInstance):
    """Order-dependent and says so."""

    name = "test_first_declared"
    permutation_invariant = False


class LeakyAttention(_Base):
    """Softmax attention without the mask."""

    name = "test_leaky"

    def forward(self, h, mask):
        a = torch.softmax(h.sum(-1), dim=1)
        return MILOutput(bag_logits=self.classifier(masked_mean(h, mask)), mask=mask, attention=a)


class SigmoidAttention(_Base):
    """Unnormalised (sigmoid) attention, zero at padding."""

    name = "test_sigmoid"

    def forward(self, h, mask):
        a = torch.sigmoid(h.sum(-1)) * mask
        return MILOutput(bag_logits=self.classifier(masked_mean(h, mask)), mask=mask, attention=a)


class SigmoidAttentionDeclared(SigmoidAttention):
    """Unnormalised attention, declared."""

    name = "test_sigmoid_declared"
    attention_normalized = False


class TiedWeights(_Base):
    """Registers one module twice: its state_dict shares storage."""

    name = "test_tied"

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.alias = self.classifier


class NoisyEval(_Base):
    """Random in evaluation."""

    name = "test_noisy"

    def forward(self, h, mask):
        out = super().forward(h, mask)
        out.bag_logits = out.bag_logits + torch.randn_like(out.bag_logits)
        return out


class WrongShape(_Base):
    """Bag logits of shape [B]."""

    name = "test_wrong_shape"

    def forward(self, h, mask):
        return MILOutput(bag_logits=self.classifier(masked_mean(h, mask))[:, 0], mask=mask)


class RequiredOption(_Base):
    """Its Config has no default."""

    name = "test_required"

    class Config(ComponentConfig):
        width: int = Field(gt=0)


class OpenConfig(_Base):
    """Its Config accepts anything."""

    name = "test_open"

    class Config(ComponentConfig):
        model_config = ConfigDict(extra="allow", frozen=True)


class NoneDefault(_Base):
    """Accepts None for an option whose default is not None (breaks the recipe TOML round trip)."""

    name = "test_none_default"

    class Config(ComponentConfig):
        width: int | None = 4


class ZeroFilledMax(_Base):
    """Max over instances with padding filled with 0 instead of -inf."""

    name = "test_zero_filled_max"

    def forward(self, h, mask):
        z = h.masked_fill(~mask.unsqueeze(-1), 0.0).amax(1)
        return MILOutput(bag_logits=self.classifier(z), mask=mask)


class NeedsTwoFeatures(_Base):
    """Splits the features in two halves: fails for in_dim = 1."""

    name = "test_needs_two"

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.classifier = nn.Linear(2 * (in_dim // 2), num_classes)

    def forward(self, h, mask):
        halves = h.reshape(*h.shape[:2], 2, h.shape[-1] // 2)
        return MILOutput(bag_logits=self.classifier(masked_mean(halves.flatten(2), mask)), mask=mask)


class BigDefaults(_Base):
    """Passes with its small contract_options; its defaults split the features into 4 heads, so they do not
    build for in_dim = 1 (what a recipe naming it alone gets)."""

    name = "test_big_defaults"
    contract_options = {"heads": 1}

    class Config(ComponentConfig):
        heads: int = 4

    def __init__(self, config, in_dim, num_classes):
        if in_dim % config.heads:
            raise ValueError(f"in_dim {in_dim} is not a multiple of heads {config.heads}")
        super().__init__(config, in_dim, num_classes)


class Float32Logits(_Base):
    """Casts its logits with .float(): silently float32 in a float64 (train.precision = "fp64") model."""

    name = "test_float32_logits"

    def forward(self, h, mask):
        return MILOutput(bag_logits=self.classifier(masked_mean(h, mask)).float(), mask=mask)


class Float32Buffer(_Base):
    """Makes a float32 tensor and multiplies it with its input: a dtype error in float64."""

    name = "test_float32_buffer"

    def forward(self, h, mask):
        scale = torch.ones(h.shape[-1], h.shape[-1])  # no dtype=h.dtype
        return MILOutput(bag_logits=self.classifier(masked_mean(h @ scale, mask)), mask=mask)


@pytest.mark.parametrize(
    ("cls", "check", "options", "message"),
    [
        (Float32Logits, check_pooling_float64, None, r"bag_logits is torch.float32.*at_least_float32"),
        (Float32Buffer, check_pooling_float64, None, r"training step fails in float64 .*x.new_zeros"),
        (IgnoresMask, check_pooling_padding, None, "batched with padding vs alone"),
        (ZeroFilledMax, check_pooling_padding, None, r"\(in_dim=1, k=2\) all-negative features, bag \d \(n=\d\) batched"),
        (NoneDefault, check_config, None, "option 'width' has the default 4 but accepts None"),
        (UnusedParameter, check_pooling_gradients, None, "got no gradient: unused.weight, unused.bias"),
        (FirstInstance, check_pooling_permutation, None, "instances permuted"),
        (LeakyAttention, check_pooling_output, None, "attention is not zero at padded positions"),
        (SigmoidAttention, check_pooling_output, None, "does not sum to 1"),
        (TiedWeights, check_pooling_state_dict, None, "cannot be saved with safetensors"),
        (NoisyEval, check_pooling_determinism, None, "evaluation must be deterministic"),
        (WrongShape, check_pooling_output, None, r"expected \[B, k\]"),
        (RequiredOption, check_config, {"width": 3}, "default Config does not validate"),
        (OpenConfig, check_config, None, "accepts unknown keys"),
        (NoneDefault, check_config, {"width": None}, "recipe round trip"),
    ],
    ids=lambda v: getattr(v, "__name__", None) if callable(v) else None,
)
def test_broken_pooling_is_caught(cls, check, options, message):
    with pytest.raises(AssertionError, match=message):
        check(cls, options)


def test_in_dim_one_is_checked():
    with pytest.raises(AssertionError, match="check_pooling_output: raised RuntimeError"):
        check_pooling(NeedsTwoFeatures)  # builds and runs with in_dim 8 and 12, not 1


def test_default_options_are_checked_not_only_the_contract_options():
    from milzoo.testing.pooling import check_pooling_defaults

    check_pooling_output(BigDefaults)  # the contract options are fine
    with pytest.raises(AssertionError, match=r"check_pooling_defaults.*default options \(in_dim=1, k=2\).*"
                                             r"not a multiple of heads 4"):
        check_pooling(BigDefaults)
    check_pooling_defaults(BigDefaults, {"heads": 1})  # an option set given by the caller is what is built


def test_declared_exceptions_pass():
    check_pooling_permutation(FirstInstanceDeclared)
    check_pooling_output(SigmoidAttentionDeclared)
    check_pooling(_Base)


def test_whole_pooling_check_lists_every_failure():
    with pytest.raises(AssertionError) as info:
        check_pooling(IgnoresMask)
    text = str(info.value)
    assert text.startswith("pooling:test_ignores_mask fails 1 of")
    assert "check_pooling_padding" in text


class BatchMixingEncoder(Encoder):
    """Subtracts the batch mean: instances influence each other."""

    name = "test_batch_mixing"

    class Config(ComponentConfig):
        pass

    def __init__(self, config, in_shape):
        super().__init__(config, in_shape)
        self.fc = nn.Linear(in_shape[0], 4)
        self.out_dim = 4

    def forward(self, x):
        z = self.fc(x)
        return z - z.mean(0, keepdim=True)


def test_batch_dependent_encoder_is_caught():
    with pytest.raises(AssertionError, match="encoded with others vs alone"):
        check_encoder_batch_independence(BatchMixingEncoder)


class AttachedParts(Loss):
    """Logs a part that still carries the graph."""

    name = "test_attached_parts"

    class Config(ComponentConfig):
        pass

    def forward(self, out, batch, state):
        loss = torch.nn.functional.cross_entropy(out.bag_logits, batch.y)
        return LossResult(total=loss, parts={"ce": loss})


class PaddingSensitiveLoss(AttachedParts):
    """Averages instance logits over padded positions too."""

    name = "test_padding_loss"

    def forward(self, out, batch, state):
        loss = torch.nn.functional.cross_entropy(out.bag_logits, batch.y) + out.inst_logits.mean()
        return LossResult(total=loss, parts={})


def test_broken_losses_are_caught():
    with pytest.raises(AssertionError, match="must be detached"):
        check_loss_output(AttachedParts)
    with pytest.raises(AssertionError, match="extra padded positions"):
        check_loss_padding(PaddingSensitiveLoss)


def test_masked_softmax_pooling_passes_everything():
    class Attention(_Base):
        """Masked softmax attention over a learned score."""

        name = "test_attention"

        def __init__(self, config, in_dim, num_classes):
            super().__init__(config, in_dim, num_classes)
            self.score = nn.Linear(in_dim, 1)

        def forward(self, h, mask):
            a = masked_softmax(self.score(h).squeeze(-1), mask)
            z = torch.bmm(a.unsqueeze(1), h).squeeze(1)
            return MILOutput(bag_logits=self.classifier(z), mask=mask, attention=a,
                             inst_logits=self.classifier(h) * mask.unsqueeze(-1))

    check_pooling(Attention)
