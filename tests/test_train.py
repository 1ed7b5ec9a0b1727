import csv
from types import SimpleNamespace

import pytest
import torch

from segtool.config import load_config
from segtool.errors import CheckpointError, ConfigError, SegtoolError
from segtool.models.checkpoint import BUILTIN, load_checkpoint
from segtool.reporting import evaluate as eval_mod
from segtool.reporting.evaluate_torch import evaluate_checkpoint
from segtool.training import loop as train_mod
from segtool.training.ema import WeightAverage
from segtool.training.loop import train
from segtool.training.losses import distill_loss, ohem_cross_entropy, segmentation_loss
from segtool.training.schedule import epoch_seconds, epochs_that_fit, lr_factor, plan_epochs, schedule_progress


def test_learning_on_synthetic_data(tmp_path):
    """A short run must clearly beat chance: predicting all-background scores about 0.2 mIoU."""
    cfg = load_config(
        None,
        [
            "data.synthetic={num_train: 96, num_val: 16}",
            "model.width_mult=0.35",
            "train.epochs=5",
            "train.batch_size=4",  # enough steps for BatchNorm's running statistics to settle
            "train.lr=0.003",
            "train.workers=0",
            "augment.train=[HorizontalFlip]",
        ],
    )
    result = train(cfg, tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_miou > 0.6, rows
    first, best = float(rows[0]["val_miou"]), max(float(r["val_miou"]) for r in rows)
    assert best > first + 0.2


def test_run_folder_contents(tmp_cfg_run):
    cfg, out = tmp_cfg_run
    assert (out / "config.yaml").is_file()
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["state"]["epoch"] == 1 and ckpt["config"]["name"] == "tiny"
    assert [c["name"] for c in ckpt["config"]["data"]["classes"]][:2] == ["background", "disc"]
    best = load_checkpoint(out / "best.pt")
    assert "miou" in best["metrics"]
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,lr,val_miou")


@pytest.fixture
def tmp_cfg_run(tiny_cfg, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg, out, progress=False)
    return tiny_cfg, out


def test_existing_run_is_not_overwritten(tmp_cfg_run):
    cfg, out = tmp_cfg_run
    with pytest.raises(SegtoolError, match="already holds a run; pass --resume"):
        train(cfg, out, progress=False)


def test_resume_without_checkpoint(tiny_cfg, tmp_path):
    with pytest.raises(CheckpointError, match="--resume: .*last.pt not found"):
        train(tiny_cfg, tmp_path / "none", resume=True, progress=False)


@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_continues_to_the_same_weights(tiny_cfg, tmp_path, monkeypatch, ema):
    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": 3, "ema": ema})})
    train(cfg, tmp_path / "a", progress=False)

    real_eval, calls = train_mod.score_split, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_mod, "score_split", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["state"]["epoch"] == 1
    monkeypatch.setattr(train_mod, "score_split", real_eval)
    train(cfg, tmp_path / "b", resume=True, progress=False)

    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert b["state"]["epoch"] == 3
    for weights in ["model", "trained_model"] if ema else ["model"]:
        for k in a[weights]:
            assert torch.equal(a[weights][k], b[weights][k]), (weights, k)
    assert len((tmp_path / "b" / "metrics.csv").read_text().splitlines()) == 4


def test_resume_with_more_epochs_extends_the_run(tiny_cfg, tmp_path):
    def epochs(n):
        return tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": n})})

    train(epochs(2), tmp_path / "r", progress=False)
    lr_2 = load_checkpoint(tmp_path / "r" / "last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert train(epochs(4), tmp_path / "r", resume=True, progress=False).epochs == 4
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]
    # The cosine schedule now spans 4 epochs of 2 steps (warmup 1 epoch): the last step is 7 of 8.
    expected = tiny_cfg.train.lr * lr_factor(7, 8, 2, "cosine", 0.9)
    assert float(rows[3].split(",")[2]) == pytest.approx(expected, rel=1e-3) and expected < lr_2
    with pytest.raises(ConfigError, match="already trained 4 epochs"):
        train(epochs(3), tmp_path / "r", resume=True, progress=False)


def test_class_weights_must_match_classes(tiny_config, tmp_path):
    cfg = load_config(tiny_config, ["train.loss.class_weights=[1, 2]"])
    with pytest.raises(SegtoolError, match="class_weights has 2 values but data.classes has 4"):
        train(cfg, tmp_path / "w", progress=False)


def _finite_losses(run_dir) -> list[float]:
    losses = [float(r["train_loss"]) for r in csv.DictReader((run_dir / "metrics.csv").open())]
    assert losses and all(0 < v < 100 for v in losses), losses
    return losses


def test_dice_and_sgd_poly_run(tiny_config, tmp_path):
    cfg = load_config(
        tiny_config, ["train.loss.dice_weight=0.5", "train.optimizer=sgd", "train.scheduler=poly", "model.head=unet"]
    )
    result = train(cfg, tmp_path / "d", progress=False)
    _finite_losses(tmp_path / "d")
    assert 0 <= result.best_miou <= 1 and (tmp_path / "d" / "best.pt").is_file()


def test_dice_term_is_one_minus_the_soft_dice_over_labelled_pixels(tiny_config):
    cfg = load_config(tiny_config)  # the default adds the term at weight 0.5
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]]]])  # 1 image, 2 classes, 1x2 pixels
    target = torch.tensor([[[0, 255]]])  # the second pixel is unlabelled
    k = 1 / (1 + torch.exp(torch.tensor(-2.0)))  # softmax probability of the winning class
    # class 0: intersection k, sums k + 1; class 1: intersection 0, sums (1 - k) + 0; smoothed by 1
    dice = ((2 * k + 1) / (k + 1 + 1) + 1 / (1 - k + 1)) / 2
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert segmentation_loss(logits, target, cfg, None) == pytest.approx(float(ce + 0.5 * (1 - dice)), rel=1e-6)
    off = load_config(tiny_config, ["train.loss.dice_weight=0"])
    assert segmentation_loss(logits, target, off, None) == pytest.approx(float(ce), rel=1e-6)


def _confident(target: torch.Tensor, classes: int, right: torch.Tensor) -> torch.Tensor:
    """Logits that give each pixel's true class probability ~0.99 where `right`, else ~0.01."""
    logits = torch.zeros(*target.shape[:1], classes, *target.shape[1:])
    onehot = torch.nn.functional.one_hot(target.clamp(max=classes - 1), classes).permute(0, 3, 1, 2).float()
    sign = torch.where(right, 1.0, -1.0).unsqueeze(1)
    return logits + 8 * onehot * sign


def test_ohem_averages_over_the_hard_pixels_only():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, 0] = 255  # an ignored row
    right = torch.rand(2, 8, 8) < 0.6
    logits = _confident(target, 3, right)
    weight = torch.tensor([0.5, 1.0, 2.0])
    hard = (target != 255) & ~right
    plain = torch.nn.functional.cross_entropy
    expect = plain(logits.permute(0, 2, 3, 1)[hard], target[hard], weight=weight)
    got = ohem_cross_entropy(logits, target, weight, 255, thresh=0.7, min_kept=0.05)
    assert torch.allclose(got, expect) and got > 2 * plain(logits, target, weight=weight, ignore_index=255)
    # A threshold above every probability keeps every labelled pixel: the plain weighted mean.
    everything = ohem_cross_entropy(logits, target, weight, 255, thresh=0.9999, min_kept=0.05)
    assert torch.allclose(everything, plain(logits, target, weight=weight, ignore_index=255))


def test_ohem_keeps_at_least_the_min_share():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    right = torch.ones(1, 10, 10, dtype=torch.bool)
    right[0, 0, :2] = False  # only 2 of 100 pixels are hard
    logits = _confident(target, 2, right)
    logits[0, 1] += 0.01 * torch.arange(100).view(10, 10)  # easy pixels ranked by confidence
    got = ohem_cross_entropy(logits, target, None, 255, thresh=0.5, min_kept=0.3)
    per_pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none").flatten()
    assert torch.allclose(got, per_pixel.sort(descending=True).values[:30].mean())


def test_ohem_trains_and_its_settings_are_checked(tiny_config, tmp_path):
    cfg = load_config(tiny_config, ["train.loss.ohem_thresh=0.7", "train.loss.ohem_min_kept=0.25", "train.epochs=2"])
    result = train(cfg, tmp_path / "o", progress=False)
    assert len(_finite_losses(tmp_path / "o")) == 2 and 0 <= result.best_miou <= 1
    with pytest.raises(ConfigError, match="train.loss.ohem_thresh"):
        load_config(tiny_config, ["train.loss.ohem_thresh=1.5"])


def test_lr_schedule_shapes():
    assert lr_factor(0, 100, 10, "cosine", 0.9) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.9) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.9) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine", 0.9) == pytest.approx(0.0)
    assert lr_factor(55, 100, 10, "poly", 1.0) == pytest.approx(0.5)
    assert lr_factor(55, 100, 0, "constant", 1.0) == 1.0


def test_a_refitted_schedule_goes_on_from_where_it_stood():
    """A time-limited run refits its length as it learns what epochs cost. At the refit the
    decay neither jumps up (a longer plan) nor down (a shorter one), and it still ends at 0."""
    before = schedule_progress(55, 100, 10)
    assert before == pytest.approx(0.5)
    for total in (80, 100, 160):  # shorter, same, longer
        anchor = (55, before)
        assert schedule_progress(55, total, 10, anchor) == pytest.approx(before)
        steps = [schedule_progress(s, total, 10, anchor) for s in range(55, total + 1)]
        assert steps == sorted(steps) and steps[-1] == pytest.approx(1.0)
    assert schedule_progress(130, 160, 10, (55, before)) == pytest.approx(0.5 + 0.5 * 75 / 105)
    assert schedule_progress(5, 100, 10, (3, 0.0)) == 0.0  # a refit inside warmup: decay starts after it
    assert lr_factor(55, 160, 10, "cosine", 0.9, (55, before)) == pytest.approx(lr_factor(55, 100, 10, "cosine", 0.9))


def test_worker_count_does_not_change_the_result(tiny_config, tmp_path):
    """Order and augmentation depend on (seed, epoch, index) only, not on who loads them."""
    results = []
    for workers in (0, 2):
        cfg = load_config(tiny_config, [f"train.workers={workers}", "augment.train=[HorizontalFlip, ColorJitter]"])
        train(cfg, tmp_path / f"w{workers}", progress=False)
        results.append(load_checkpoint(tmp_path / f"w{workers}" / "last.pt")["model"])
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_augmentations_draw_independently():
    """Each transform gets its own random stream: two flips with p=0.5 must not always agree."""
    import albumentations as A
    import numpy as np

    from segtool.data.transforms import seed_transform

    t = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    img = np.arange(4, dtype=np.uint8).reshape(2, 2, 1).repeat(3, 2)
    outcomes = set()
    for i in range(40):
        seed_transform(t, [0, 0, i])
        out = t(image=img)["image"][..., 0]
        outcomes.add((bool(out[0, 0] in (1, 3)), bool(out[0, 0] in (2, 3))))
    assert len(outcomes) == 4


class FakeClock:
    """time.time() for the training loop, in which seconds pass only where a test says:
    each training step costs `step_s` (plus `extra[n]` at step n, from 1, as if another job
    had the machine) and each validation batch `eval_s`. A time-limit test then checks the
    planner's arithmetic, not how busy the machine running the tests is."""

    def __init__(self, monkeypatch, step_s: float, eval_s: float, extra: dict[int, float] | None = None):
        self.now, self.steps = 1e6, 0
        self.step_s, self.eval_s, self.extra = step_s, eval_s, extra or {}
        monkeypatch.setattr(train_mod, "time", SimpleNamespace(time=lambda: self.now))
        monkeypatch.setattr(train_mod, "fault_point", self.tick)
        monkeypatch.setattr(eval_mod, "fault_point", self.tick)

    def tick(self, name: str) -> None:
        if name == "step":
            self.steps += 1
            self.now += self.step_s + self.extra.get(self.steps, 0.0)
        elif name == "eval":
            self.now += self.eval_s


def _timed_run(tiny_config, tmp_path, monkeypatch, limit, extra=None, val_every=4):
    """A run of the tiny data (2 steps of 0.1 s an epoch, a validation of 0.05 s) under
    `limit` seconds: its result, saved state and the clock."""
    clock = FakeClock(monkeypatch, step_s=0.1, eval_s=0.05, extra=extra)
    cfg = load_config(tiny_config, ["train.epochs=1000", f"train.time_limit={limit}s", f"train.val_every={val_every}"])
    result = train(cfg, tmp_path / "t", progress=False)
    return result, load_checkpoint(tmp_path / "t" / "last.pt")["state"], clock


def test_time_limit_fits_the_epochs_to_the_budget(tiny_config, tmp_path, monkeypatch):
    result, state, clock = _timed_run(tiny_config, tmp_path, monkeypatch, 4, val_every=1)
    assert 1 < result.epochs < 1000 and state["planned_epochs"] == result.epochs
    # Epochs of 0.2 s, each validated (0.05 s): the plan fills 4 s to within one of them.
    assert 4 - 0.25 <= state["train_s"] <= 4 + 1e-6, state["train_s"]
    assert result.epochs == state["vals"] and clock.steps == 2 * result.epochs
    assert (tmp_path / "t" / "best.pt").is_file() and "val_miou" in state["history"][-1]


def test_time_limit_charges_validation_where_it_falls():
    """100 s left, 10 s an epoch, 20 s a validation every 5 epochs and after the last: six
    epochs (5 x 10 + 20 + 10 + the closing 20) fit. Charging every epoch a validation
    would plan three and leave a third of the budget unused."""
    assert epochs_that_fit(0, 100, 10, 20, 5, 1000) == 6
    assert epochs_that_fit(0, 100, 10, 20, 1, 1000) == 3
    assert epochs_that_fit(0, 1e9, 10, 20, 5, 50) == 50  # never past train.epochs
    assert epochs_that_fit(4, 5, 10, 20, 5, 1000) == 4  # nothing more fits


def test_time_limit_uses_the_budget_with_sparse_validation(tiny_config, tmp_path, monkeypatch):
    result, state, _ = _timed_run(tiny_config, tmp_path, monkeypatch, 6)
    assert state["vals"] < result.epochs and "val_miou" in state["history"][-1]
    assert 6 - 0.25 <= state["train_s"] <= 6 + 1e-6, state["train_s"]


def test_an_epoch_costs_the_median_epoch_plus_its_share_of_the_saves():
    assert epoch_seconds([], 0.0, 3.0) == 3.0  # only the first epoch (which filled the cache) so far
    assert epoch_seconds([1.0, 1.0, 5.0], 7.0 + 0.3, 3.0) == pytest.approx(1.0 + 0.1)  # 0.3 s of saves in all
    assert plan_epochs(2, 10.0, 1.0, 0.0, 1, 1000) == (12, False)
    assert plan_epochs(2, 10.0, 1.0, 0.0, 1, 8) == (8, True)  # train.epochs caps the plan
    assert plan_epochs(5, 0.5, 1.0, 0.0, 1, 1000) == (5, False)  # never fewer than already done


def test_time_limit_outlasts_a_burst_of_other_work(tiny_config, tmp_path, monkeypatch):
    """Another job takes the machine for 6 s during epoch 4 of a 9 s budget. A plan from
    the mean epoch time (2.2 s after it) would see no room for another epoch and stop at
    about 7 s; from the median (0.2 s), the run loses the burst and no more."""
    result, state, _ = _timed_run(tiny_config, tmp_path, monkeypatch, 9, extra={7: 6.0})  # the first step of epoch 4
    assert 9 - 0.25 <= state["train_s"] <= 9 + 1e-6, (state["train_s"], state["planned_epochs"])


def test_time_limit_takes_back_a_slow_start(tiny_config, tmp_path, monkeypatch):
    """Another job slows epochs 2-5 of a 9 s budget, then stops. The plan made while they ran
    is too short; once epochs are fast again the run must grow back into the budget, with
    the lr still only falling after warmup (CI once stopped such a run at 79% of it)."""
    slow = {n: 0.25 for n in range(3, 11)}  # epochs 2-5
    result, state, _ = _timed_run(tiny_config, tmp_path, monkeypatch, 9, extra=slow)
    assert 9 - 0.25 <= state["train_s"] <= 9 + 1e-6, (state["train_s"], state["planned_epochs"])
    lrs = [float(r["lr"]) for r in state["history"]]
    assert state["lr_anchor"][0] > 0  # the plan was refitted after the slow epochs
    assert all(b <= a * (1 + 1e-6) for a, b in zip(lrs[1:], lrs[2:])), lrs


def test_init_from_a_checkpoint_of_another_class_count(tiny_config, tmp_path):
    """Fine-tuning the built-in 11-class road model on a 4-class dataset: every weight but
    the per-class output layers comes from the checkpoint."""
    builtin = load_checkpoint(BUILTIN)["model"]
    # lr ~0: the trained weights stay the ones the run started from (BatchNorm buffers still move).
    cfg = load_config(tiny_config, ["model={width_mult: 0.5}", "train.init_from=builtin", "train.lr=1e-12"])
    model = train(cfg, tmp_path / "ft", progress=False).model
    state = model.state_dict()
    convs = [k for k, v in builtin.items() if v.ndim == 4 and "classifier" not in k]
    assert convs and all(torch.allclose(state[k], builtin[k], atol=1e-6) for k in convs)
    assert state["head.high_classifier.weight"].shape[0] == 4
    assert (tmp_path / "ft" / "config.yaml").read_text().count("init_from: builtin") == 1
    assert "head: lraspp" in (tmp_path / "ft" / "config.yaml").read_text()  # model.head: auto took the checkpoint's


def test_init_from_refuses_weights_that_do_not_fit(tiny_config, tmp_path):
    cfg = load_config(tiny_config, ["train.init_from=builtin"])  # width 0.35, head_channels 16
    with pytest.raises(
        CheckpointError, match=r"train.init_from .*camvid.pt: \d+ weights do not fit .*model.width_mult"
    ):
        train(cfg, tmp_path / "x", progress=False)
    cfg = load_config(tiny_config, [f"train.init_from={tmp_path / 'none.pt'}"])
    with pytest.raises(CheckpointError, match=r"train.init_from: checkpoint .*none.pt not found"):
        train(cfg, tmp_path / "y", progress=False)


def test_distill_loss_measures_the_gap_to_the_teacher_on_labelled_pixels():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    assert distill_loss(teacher, teacher, target, 255, 2.0) == pytest.approx(0.0, abs=1e-6)
    gap = distill_loss(student, teacher, target, 255, 1.0)
    q, log_p = teacher.softmax(1), student.log_softmax(1)
    assert gap == pytest.approx(float((q * (q.log() - log_p)).sum(1).mean()), rel=1e-5)
    # Unlabelled pixels teach nothing: changing the model there leaves the loss as it was.
    target[:, :2] = 255
    moved = student.clone()
    moved[:, :, :2] += 5.0
    assert distill_loss(moved, teacher, target, 255, 1.0) == pytest.approx(
        float(distill_loss(student, teacher, target, 255, 1.0))
    )
    # Temperature t softens both sides and scales by t^2.
    t = 3.0
    soft_q, soft_log_p = (teacher / t).softmax(1), (student / t).log_softmax(1)
    kept = target != 255
    expected = t * t * (soft_q * (soft_q.log() - soft_log_p)).sum(1)[kept].mean()
    assert distill_loss(student, teacher, target, 255, t) == pytest.approx(float(expected), rel=1e-5)


def test_a_model_learns_from_its_teacher_alone(tmp_path):
    """train.distill with weight 1: the labels play no part in the loss, and the model still
    learns the task (chance, all background, scores about 0.2 mIoU) from the teacher."""
    task = [
        "data.synthetic={num_train: 96, num_val: 16}",
        "model.width_mult=0.35",
        "train.epochs=5",
        "train.batch_size=4",
        "train.lr=0.003",
        "train.workers=0",
        "augment.train=[HorizontalFlip]",
    ]
    teacher = train(load_config(None, task), tmp_path / "teacher", progress=False)
    assert teacher.best_miou > 0.6
    spec = f"train.distill={{teacher: {tmp_path / 'teacher' / 'best.pt'}, weight: 1.0, temperature: 2}}"
    student = train(load_config(None, [*task, "train.seed=1", spec]), tmp_path / "student", progress=False)
    assert student.best_miou > 0.5, student.best_miou
    from conftest import run

    shown = run("info", tmp_path / "student" / "best.pt").output
    assert f"distilled from: {tmp_path / 'teacher' / 'best.pt'} (weight 1.0, temperature 2.0)" in shown, shown


def test_distill_refuses_a_teacher_that_does_not_fit(tiny_config, tmp_path):
    cfg = load_config(tiny_config, ["train.distill.teacher=camvid-large"])  # 11 road classes, not these 4
    with pytest.raises(ConfigError, match=r"train.distill.teacher .*camvid-large.pt predicts 11 classes .*same order"):
        train(cfg, tmp_path / "x", progress=False)
    cfg = load_config(tiny_config, [f"train.distill.teacher={tmp_path / 'none.pt'}"])
    with pytest.raises(CheckpointError, match=r"train.distill.teacher: checkpoint .*none.pt not found"):
        train(cfg, tmp_path / "y", progress=False)
    with pytest.raises(ConfigError, match=r"train.distill.weight"):
        load_config(tiny_config, ["train.distill={teacher: camvid, weight: 0}"])


def test_weight_average_follows_the_formula():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(4, 2))  # moves the BatchNorm statistics and its batch counter
    avg.update()  # step 1: decay min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(avg.model[0].weight, d * start + (1 - d) * model[0].weight)
    assert avg.model[1].num_batches_tracked == 1
    for _ in range(20):
        avg.update()  # decay now 0.5: the average closes in on the weights
    assert torch.allclose(avg.model[0].weight, model[0].weight, atol=1e-5)
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_ema_run_saves_and_validates_the_average(tiny_config, tmp_path):
    """With train.ema the saved model is the average: `segtool evaluate last.pt` scores
    exactly what the last validation scored, and the trained weights ride along for resume."""
    cfg = load_config(tiny_config, ["train.ema=0.9", "train.epochs=2"])
    train(cfg, tmp_path / "e", progress=False)
    last = load_checkpoint(tmp_path / "e" / "last.pt")
    assert last["ema"]["updates"] == 4  # 2 epochs of 2 steps
    assert any(not torch.equal(last["model"][k], last["trained_model"][k]) for k in last["model"])
    rows = list(csv.DictReader((tmp_path / "e" / "metrics.csv").open()))
    report = evaluate_checkpoint(tmp_path / "e" / "last.pt", progress=False)
    assert round(report.miou, 5) == float(rows[-1]["val_miou"])


def test_channels_last_is_the_same_computation(tiny_config, tmp_path):
    """NHWC is a memory layout only: the same weights give the same loss and gradients (a
    whole run is no test of that: a randomly initialised net this small is chaotic, 3e-6
    of noise on its weights moves its second-step gradients by 0.1), and a run trained in
    it saves a checkpoint that loads into a plain NCHW model."""
    cfg = load_config(tiny_config, ["train.channels_last=true"])
    torch.manual_seed(0)
    # In float64: in float32 the kernels for the two layouts sum in different orders, and
    # how far apart that leaves the gradients depends on the thread count (0.2% of the
    # largest with one thread); in float64 a layout bug is the only thing that can show.
    x, y = torch.randn(4, 3, 48, 64, dtype=torch.float64), torch.randint(0, 4, (4, 48, 64))
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        model = train_mod.build_model(cfg.model, 4).double().to(memory_format=fmt).train()
        loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
        loss.backward()
        results.append((loss.item(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-9)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga - gb).abs().max() <= 1e-7 * ga.abs().max() + 1e-10
    train(cfg, tmp_path / "cl", progress=False)
    # Saved and reloaded, the channels-last model scores what it scored inside the run.
    last_row = list(csv.DictReader((tmp_path / "cl" / "metrics.csv").open()))[-1]
    assert evaluate_checkpoint(tmp_path / "cl" / "last.pt", progress=False).miou == pytest.approx(
        float(last_row["val_miou"]), abs=1e-5
    )


def test_a_run_folder_holds_its_figures(tiny_cfg, tmp_path):
    from PIL import Image

    from segtool.reporting.plots import FILES

    train(
        tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": 2, "plots": True})}),
        tmp_path / "r",
        progress=False,
    )
    for name in FILES:
        with Image.open(tmp_path / "r" / name) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
    train(
        tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"plots": False})}),
        tmp_path / "none",
        progress=False,
    )
    assert not any((tmp_path / "none" / name).exists() for name in FILES)


def test_help_does_not_import_matplotlib_or_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from segtool.cli import app\n"
        "CliRunner().invoke(app, ['--help'])\n"
        "print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_tensorboard_logs_scalars_and_predictions(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": 2, "tensorboard": True})})
    train(cfg, tmp_path / "r", progress=False)
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "train/lr", "val/miou"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/miou")] == [1, 2]
    assert len([t for t in events.Tags()["images"] if t.startswith("val/prediction_")]) == 4


def test_tensorboard_overlays_decide_as_validation_did(tiny_cfg, monkeypatch, tmp_path):
    """A calibrated run's previews add the offsets its validation chose, so they show the
    decisions that val mIoU scored (and best.pt predicts), not the plain arg-max."""
    from segtool.data.datasets import config_split
    from segtool.data.pairs import find_pairs
    from segtool.reporting import tensorboard as tb_mod

    class Zeros(torch.nn.Module):  # every class ties: the arg-max alone says background
        def forward(self, x):
            return torch.zeros(x.shape[0], 4, *x.shape[-2:])

    shown = []
    monkeypatch.setattr(tb_mod, "overlay_image", lambda image, pred, lut, names: shown.append(pred.copy()) or image)
    writer = SimpleNamespace(add_scalar=lambda *a: None, add_image=lambda *a, **k: None, flush=lambda: None)
    log = tb_mod.TensorBoardLog(tmp_path, writer=writer)
    pairs = find_pairs(config_split(tiny_cfg.data, "val"))
    row, report = (
        {"epoch": 1, "train_loss": 1.0, "lr": 1e-3, "val_miou": 0.5},
        {"miou": 0.5, "pixel_accuracy": 0.9, "per_class": []},
    )
    log.log(row, report, Zeros(), tiny_cfg, pairs, torch.device("cpu"))
    log.log(row, report, Zeros(), tiny_cfg, pairs, torch.device("cpu"), calibration_offsets=[0.0, 0.0, 0.5, 0.0])
    plain, decided = shown[: len(shown) // 2], shown[len(shown) // 2 :]
    assert plain and all((p == 0).all() for p in plain)
    assert all((p == 2).all() for p in decided)


def test_tensorboard_missing_is_one_line(tiny_cfg, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"tensorboard": True})})
    with pytest.raises(
        ConfigError, match=r"train.tensorboard: true needs TensorBoard: pip install 'segtool\[tensorboard\]'"
    ):
        train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing half-written
