"""`sft-lightning report RUN_DIR` on real runs: the PNG, the figure's panels and marks, the summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from helpers.cli import assert_clean_error, run_cli, run_main
from helpers.paths import SMOKE

from sft_lightning.cli.report import PANEL_TITLES, build_figure, load_run, summary_lines, write_report
from sft_lightning.cli.run_files import Mark, read_marks, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The run that trips: a learning rate of 1e30 (set past the CLI's range check by a test-only callback)
# makes the LoRA weights overflow after each update. GradientHealth rolls back twice (skip_budget 2),
# then aborts at the third trip.
TRIP_CONFIG = """
trainer:
  callbacks:
    - class_path: helpers.faults.ForceLearningRate
      init_args: {learning_rate: 1.0e+30}
    - class_path: callbacks.GradientHealth
      init_args: {on_nonfinite: rollback, skip_budget: 2}
"""


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("smoke")
    fit = run_cli("fit", "--config", SMOKE, cwd=cwd)
    assert fit.returncode == 0, fit.stderr[-3000:]
    return cwd / "runs" / "smoke" / "version_0"


@pytest.fixture(scope="module")
def tripped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("tripped")
    (cwd / "trip.yaml").write_text(TRIP_CONFIG)
    fit = run_cli("fit", "--config", SMOKE, "--config", str(cwd / "trip.yaml"), cwd=cwd)
    assert_clean_error(fit, "GradientHealth: parameters became non-finite", "-> abort (skip budget of 2 exhausted)")
    return cwd / "runs" / "smoke" / "version_0"


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def test_run_directory_holds_config_metrics_and_adapter(smoke_run: Path) -> None:
    assert (smoke_run / "config.yaml").is_file() and (smoke_run / "metrics.csv").is_file()
    assert (smoke_run / "adapter" / "adapter_config.json").is_file()
    assert not (smoke_run / "grad_health_report.json").exists()  # nothing tripped
    config = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert config["trainer"]["gradient_clip_val"] == 1.0


def test_report_command_writes_png_and_summary_from_metrics_csv(smoke_run: Path) -> None:
    result = run_cli("report", str(smoke_run), cwd=smoke_run)
    assert result.returncode == 0, result.stderr[-3000:]
    png = smoke_run / "report.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 20_000

    rows = csv_rows(smoke_run)
    loss = column(rows, "train/loss")
    acc = column(rows, "val/accuracy")
    rate = dict(column(rows, "val/answer_rate"))
    best_step, best = max(acc, key=lambda item: (item[1], -item[0]))
    tokens = [v for _, v in column(rows, "train/tokens_per_s")]
    norms = [v for _, v in column(rows, "grad_health/grad_norm")]
    lines = result.stdout.splitlines()
    assert lines[0] == f"==== sft-lightning report: {smoke_run} ===="
    expected = [
        "steps              7",
        f"best val/accuracy  {best:.4f} at step {best_step}, answer rate {rate[best_step]:.4f} (2 validations)",
        f"final train/loss   {loss[-1][1]:.4f} at step {loss[-1][0]}",
        f"grad norm          max {max(norms):.3g}, median {sorted(norms)[len(norms) // 2]:.3g}; clip 1",
        "grad health        0 skipped, 0 rolled back, 0 aborted",
        f"tokens/s           {sum(tokens) / len(tokens):.0f} mean over {len(tokens)} logged intervals",
        f"plot               {png}",
    ]
    for line in expected:
        assert any(row.startswith(line) for row in lines), f"{line!r} not in:\n{result.stdout}"
    assert any(row.startswith("wall time          ") and " s (config.yaml written" in row for row in lines)
    assert len(tokens) == 4 and all(v > 0 for v in tokens)  # logged at every log step (every 2 of 8)


def test_figure_has_the_four_panels_and_the_clip_line(smoke_run: Path, tmp_path: Path) -> None:
    png, figure, _ = write_report(smoke_run, tmp_path / "out" / "r.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == list(PANEL_TITLES) == [
        "Loss",
        "Gradient norm (pre-clip)",
        "Learning rate",
        "Validation accuracy / answer rate",
    ]
    loss, grad, lr, val = axes
    labels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in axes}
    assert labels["Loss"] == ["train/loss", "val/loss"]
    assert labels["Gradient norm (pre-clip)"] == ["grad norm (max per log interval)", "clip threshold 1"]
    assert labels["Learning rate"] == ["lr"]
    assert labels["Validation accuracy / answer rate"] == ["val/accuracy", "val/answer_rate"]
    clip = grad.get_lines()[1]
    assert list(clip.get_ydata()) == [1.0, 1.0]
    # The plotted points are metrics.csv's values.
    rows = csv_rows(smoke_run)
    assert [tuple(p) for p in loss.get_lines()[0].get_xydata()] == [(s, v) for s, v in column(rows, "train/loss")]
    assert list(val.get_lines()[0].get_ydata()) == [v for _, v in column(rows, "val/accuracy")]
    assert [ax.get_xlabel() for ax in axes] == ["", "", "optimizer step", "optimizer step"]


def test_tripped_run_leaves_report_in_run_dir_and_marks_rollbacks(tripped_run: Path) -> None:
    report = json.loads((tripped_run / "grad_health_report.json").read_text())
    trips = [(t["global_step"], t["action"]) for t in report["trips"]]
    assert trips == [(1, "rollback"), (3, "rollback"), (5, "abort")]
    assert (tripped_run / "config.yaml").is_file() and (tripped_run / "metrics.csv").is_file()

    result = run_cli("report", str(tripped_run), cwd=tripped_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grad health        0 skipped, 2 rolled back, 1 aborted" in result.stdout
    assert "step 3: rollback (parameters became non-finite in the optimizer step" in result.stdout
    assert "step 5: abort (" in result.stdout

    figure = build_figure(load_run(tripped_run))
    for ax in figure.get_axes():  # the marks are vertical lines at the trip steps, on every panel
        vertical = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert sorted(line.get_xdata()[0] for line in vertical) == [1, 3, 5]
        assert {line.get_label() for line in vertical} >= {"rolled-back step", "aborted"}


def test_marks_from_counters_when_no_report_file(tmp_path: Path) -> None:
    """A run whose report file is gone still shows skips: the logged counter went up there."""
    (tmp_path / "metrics.csv").write_text(
        "epoch,grad_health/grad_norm,grad_health/skipped_steps,grad_health/rolled_back_steps,lr,step,train/loss\n"
        "0,0.5,0.0,0.0,0.001,9,2.0\n"
        "0,0.4,1.0,0.0,0.001,19,1.5\n"
        "0,0.3,1.0,0.0,0.001,29,1.2\n"
        "0,0.3,3.0,1.0,0.001,39,1.1\n"
    )
    metrics = read_metrics(tmp_path)
    assert read_marks(tmp_path, metrics) == [
        Mark(19, "skip", "1 in the interval ending here"),
        Mark(39, "rollback", "1 in the interval ending here"),
        Mark(39, "skip", "2 in the interval ending here"),
    ]
    lines = summary_lines(load_run(tmp_path))
    assert "grad health        3 skipped, 1 rolled back, 0 aborted" in lines  # the counters' totals
    assert "wall time          unknown (config.yaml or metrics.csv missing)" in lines
    assert "tokens/s           not logged by this run" in lines
    figure = build_figure(load_run(tmp_path))
    assert figure.get_axes()[3].texts[0].get_text() == "not logged in this run"


def test_report_errors_are_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert_clean_error(run_main(["report", str(missing)], capsys), f"run directory {missing} does not exist", "Fix:")
    a_file = tmp_path / "metrics.csv"
    a_file.write_text("epoch,step\n")
    assert_clean_error(run_main(["report", str(a_file)], capsys), f"run directory {a_file} is a file, not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run_main(["report", str(empty)], capsys), f"no metrics.csv (and no TensorBoard event file) in {empty}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.csv").write_text("epoch,step,train/loss\n0,1,2.0\n")
    (broken / "grad_health_report.json").write_text("{not json")
    assert_clean_error(run_main(["report", str(broken)], capsys), "grad_health_report.json: not a GradientHealth report")
    (broken / "grad_health_report.json").unlink()
    (broken / "metrics.csv").write_text("epoch,loss\n0,2.0\n")
    assert_clean_error(run_main(["report", str(broken)], capsys), "metrics.csv: no 'step' column")
    (broken / "metrics.csv").write_text("epoch,step,train/loss\n")
    assert_clean_error(run_main(["report", str(broken)], capsys), "metrics.csv: holds no logged values yet")
    result = run_main(["report"], capsys)
    assert result.returncode == 2 and "the following arguments are required: RUN_DIR" in result.stderr


def test_log_axis_labels_are_plain_numbers() -> None:
    from sft_lightning.cli.report import _log_label

    assert [_log_label(v) for v in (0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 7.0, 50.0, 1000.0)] == [
        "0.1", "0.2", "", "0.5", "1", "2", "", "50", "1000",
    ]
    assert _log_label(0.0) == "" and _log_label(math.inf) == ""
