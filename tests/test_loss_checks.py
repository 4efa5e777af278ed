"""The loss property checks: every preset passes them, and losses with a planted defect fail the right one."""

import math

import pytest
import torch
from typer.testing import CliRunner

from yololab import keys
from yololab.cli import _loss_config_to_check, app
from yololab.config import build_config, save_config
from yololab.loss import PRESETS, LossConfig, YoloLoss, aggregate, preset
from yololab.loss import terms as loss_terms
from yololab.loss.checks import CHECK_NAMES, box_logits, class_logits, run_checks
from yololab.model.coder import BoxCoder

XY_MAX = 2.0  # (sigmoid(tx) - offset)^2 summed over x and y is at most 2 for offsets in [0, 1]


def _failures(results):
    return {r.name: r.detail for r in results if not r.passed}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_passes_every_check(name):
    results = run_checks(preset(name))
    assert [r.name for r in results] == list(CHECK_NAMES)
    assert _failures(results) == {}


@pytest.mark.parametrize("overrides", [
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.1, label_smoothing_form="uniform"),
    dict(cls_loss="softmax_ce", label_smoothing=0.1),
    dict(cls_loss="mse_softmax", label_smoothing=0.1),
    dict(obj_target="iou", reduction="sum"),
    dict(obj_loss="focal", coder="scaled", scale_x_y=1.2),
])
def test_option_variants_reach_their_minimum(overrides):
    results = run_checks(preset("yololab", **overrides), only=["minimum-at-truth", "step-toward-truth"])
    assert _failures(results) == {}


def test_one_class():
    assert _failures(run_checks(preset("keras-yolo3"), num_classes=1, only=["minimum-at-truth"])) == {}


# ------------------------------------------------------------------------------------------- building blocks
def test_box_logits_invert_each_coder_by_its_formula():
    offset = torch.tensor([[0.2, 0.8], [0.5, 0.35]])
    wh = torch.tensor([[10.0, 40.0], [3.0, 3.0]])
    anchors = torch.tensor([[20.0, 20.0], [4.0, 2.0]])

    def logit(p):
        return torch.log(p / (1 - p))

    expected = {
        # yolov3: sigmoid(t) = offset, exp(t) * anchor = wh
        BoxCoder("yolov3"): torch.cat((logit(offset), torch.log(wh / anchors)), -1),
        # ultralytics: 2 sigmoid(t) - 0.5 = offset, (2 sigmoid(t))^2 * anchor = wh
        BoxCoder("ultralytics"): torch.cat((logit((offset + 0.5) / 2), logit(torch.sqrt(wh / anchors) / 2)), -1),
        # scaled 1.2: 1.2 sigmoid(t) - 0.1 = offset
        BoxCoder("scaled", 1.2): torch.cat((logit((offset + 0.1) / 1.2), torch.log(wh / anchors)), -1),
    }
    for coder, want in expected.items():
        raw, reached = box_logits(coder, offset, wh, anchors)
        assert torch.allclose(raw, want, atol=1e-5), coder
        assert reached.all()


def test_box_logits_flag_a_box_the_coder_cannot_reach():
    # ultralytics widths stop at 4 x the anchor.
    _, reached = box_logits(BoxCoder("ultralytics"), torch.tensor([[0.5, 0.5]]), torch.tensor([[50.0, 10.0]]),
                            torch.tensor([[10.0, 10.0]]))
    assert reached.tolist() == [False]


@pytest.mark.parametrize("cls_loss", ["bce", "softmax_ce", "mse_softmax"])
@pytest.mark.parametrize("form", ["half", "uniform"])
def test_class_logits_minimise_the_smoothed_class_term(cls_loss, form):
    # Independent minimiser: L-BFGS with a line search on the class term itself, from zero logits.
    classes = torch.tensor([0, 2])
    cfg = LossConfig(cls_loss=cls_loss, label_smoothing=0.2, label_smoothing_form=form)
    # the smoothed targets as each reference writes them: ultralytics' 1 - eps/2, eps/2 or (1 - eps) + eps/C
    eps_hot, eps_cold = (0.8 + 0.2 / 3, 0.2 / 3) if cfg.class_smoothing_form == "uniform" else (0.9, 0.1)
    target = torch.full((2, 3), eps_cold, dtype=torch.float64)
    target[torch.arange(2), classes] = eps_hot
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([z], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss_terms.class_loss(z, target, cls_loss).sum()
        value.backward()
        return value

    opt.step(closure)
    got = class_logits(cfg, classes, 3).double()
    activate = torch.sigmoid if cls_loss == "bce" else (lambda x: x.softmax(-1))
    assert torch.allclose(activate(got), activate(z.detach()), atol=1e-4)


# ------------------------------------------------------------------------------------------- planted defects
def _planted(edit_terms=None, edit_total=None):
    """A YoloLoss whose breakdown is edited after the fact: terms first (total re-aggregated), then the total."""

    class Planted(YoloLoss):
        def forward(self, raw, targets, step=None):
            out = super().forward(raw, targets, step)
            if edit_terms is not None:
                edit_terms(raw, targets, out)
                out.total = aggregate(out.terms, self.cfg.aggregation)
            if edit_total is not None:
                out.total = edit_total(out.total)
            return out

    return Planted


def test_wrong_sign_xy_is_caught():
    # xy' = K - xy: finite, >= 0 and additive, but largest at the truth and rising toward it.
    def flip(raw, targets, out):
        for key in [k for k in out.terms if k.startswith("xy/")]:
            n_pos = out.stats[keys.key("n_pos", keys.parse(key)[1])]
            out.terms[key] = XY_MAX * n_pos / raw[0].shape[0] - out.terms[key]

    cfg = LossConfig(box_loss="mse", xy_loss="mse_sigmoid", small_box_weight="none", reduction="image_mean")
    failed = _failures(run_checks(cfg, loss_factory=_planted(flip),
                                  only=["finite-terms", "minimum-at-truth", "step-toward-truth"]))
    assert set(failed) == {"minimum-at-truth", "step-toward-truth"}
    assert "xy/s" in failed["step-toward-truth"]


def test_terms_that_do_not_add_up_are_caught():
    failed = _failures(run_checks(preset("yololab"), loss_factory=_planted(edit_total=lambda t: t + 1e-3),
                                  only=["finite-terms"]))
    assert "aggregate" in failed["finite-terms"]


def test_non_finite_term_is_caught():
    def poison(raw, targets, out):
        out.terms["cls/s1"] = out.terms["cls/s1"] + math.inf

    failed = _failures(run_checks(preset("darknet"), loss_factory=_planted(poison), only=["finite-terms"]))
    assert "non-finite cls/s1" in failed["finite-terms"]


def test_non_finite_gradient_is_caught():
    # Adds exactly 0, but through sqrt of negative logits: the classic NaN gradient behind torch.where.
    def hidden_nan(raw, targets, out):
        x = raw[0][..., 4]
        out.terms["noobj/s0"] = out.terms["noobj/s0"] + torch.where(x < -1e6, x.sqrt(), torch.zeros_like(x)).sum()

    failed = _failures(run_checks(preset("yololab"), loss_factory=_planted(hidden_nan),
                                  only=["finite-terms", "finite-gradient"]))
    assert set(failed) == {"finite-gradient"}
    assert "non-finite gradient" in failed["finite-gradient"]


def test_batch_order_dependence_is_caught():
    def first_image_counts_more(raw, targets, out):
        out.terms["noobj/s2"] = out.terms["noobj/s2"] + 0.01 * raw[2][0, ..., 4].sigmoid().mean()

    failed = _failures(run_checks(preset("yololab"), loss_factory=_planted(first_image_counts_more),
                                  only=["batch-order"]))
    assert "noobj/s2" in failed["batch-order"]


def test_empty_batch_defects_are_caught():
    def crash_without_truths(raw, targets, out):
        if not len(targets):
            raise IndexError("no truths")

    def obj_without_truths(raw, targets, out):
        out.terms["obj/s0"] = out.terms["obj/s0"] + 0.1

    crashed = _failures(run_checks(preset("yololab"), loss_factory=_planted(crash_without_truths),
                                   only=["empty-images"]))
    assert "IndexError" in crashed["empty-images"]
    spurious = _failures(run_checks(preset("yololab"), loss_factory=_planted(obj_without_truths),
                                    only=["empty-images"]))
    assert "obj/s0" in spurious["empty-images"]


def test_unknown_check_name_is_an_error():
    with pytest.raises(ValueError, match="unknown check"):
        run_checks(preset("yololab"), only=["nope"])


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_checks_a_preset():
    res = CliRunner().invoke(app, ["check-loss", "--preset", "darknet"])
    assert res.exit_code == 0, res.output
    for name in CHECK_NAMES:
        assert name in res.output
    assert "7 of 7 checks passed" in res.output


def test_cli_unknown_preset_fails_clearly():
    res = CliRunner().invoke(app, ["check-loss", "--preset", "nope"])
    assert res.exit_code != 0
    assert "unknown loss preset 'nope'" in res.output


def test_cli_exit_status_is_one_when_a_check_fails():
    # A 38 x 32 px truth claims the 9 x 19 px anchor at shape IoU 0.14 > 0.05; ultralytics widths stop at 4x.
    res = CliRunner().invoke(app, ["check-loss", "--set", "loss.coder=ultralytics", "--set", "iou_thresh=0.05",
                                   "--check", "minimum-at-truth"])
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output


def test_cli_reads_loss_yaml_and_run_config(tmp_path):
    loss_yaml = tmp_path / "loss.yaml"
    loss_yaml.write_text("box_loss: diou\nlabel_smoothing: 0.05\n")
    res = CliRunner().invoke(app, ["check-loss", "--preset", "tf2-yolov3", "--config", str(loss_yaml),
                                   "--check", "finite-terms"])
    assert res.exit_code == 0, res.output
    assert "1 of 1 checks passed" in res.output

    run_yaml = tmp_path / "config.yaml"
    save_config(build_config({"preset": "paper"}), run_yaml)
    res = CliRunner().invoke(app, ["check-loss", "--config", str(run_yaml), "--check", "finite-terms"])
    assert res.exit_code == 0, res.output
    # A run config with --preset: that preset with the run's loss_overrides, as `yololab train` would train it.
    save_config(build_config({"preset": "paper"}, ["loss.obj_weight=2"]), run_yaml)
    cfg, label = _loss_config_to_check("darknet", run_yaml, ["loss.cls_weight=3"])
    assert cfg == preset("darknet", obj_weight=2.0, cls_weight=3.0)
    assert label == f"preset darknet with the loss_overrides of {run_yaml} with loss.cls_weight=3"

    bad = tmp_path / "bad.yaml"
    bad.write_text("box_los: diou\n")
    res = CliRunner().invoke(app, ["check-loss", "--config", str(bad)])
    assert res.exit_code != 0
    assert str(bad) in res.output
