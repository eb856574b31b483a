"""``recsys-mtl tune`` resumes a study only with the settings and data it was run with: a
changed fixed setting or another log is refused before any data stage or trial, a changed
trial count, timeout, worker or thread count, or a copy of the log elsewhere resumes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.tune import command as tune_module
from pipelines.tune import tune_command
from tests.pipelines.test_tune import load, study_config

DATA_STAGES = ("ingest", "features", "split")


def csv_log(path: Path, seed: int = 0, n: int = 2000) -> Path:
    """A small rating log as a CSV file (user_id, item_id, rating, ts)."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(120 * 90, size=n, replace=False)
    rows = zip(
        pairs // 90, pairs % 90, rng.integers(1, 6, n), rng.integers(0, 10**6, n), strict=True
    )
    lines = ["user_id,item_id,rating,ts", *(f"{u},{i},{r},{t}" for u, i, r, t in rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def log_config(tmp_path: Path, log: Path) -> Path:
    """The tune tests' study (one trial) on the log file ``log``."""
    cfg = study_config(tmp_path, trials=1)
    doc = yaml.safe_load(cfg.read_text())
    doc["data"] = {"path": str(log)}
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def refusal(code: int, err: str) -> str:
    """The one error line of a refused command (exit 2), after the command's log lines."""
    lines = [line for line in err.splitlines() if line.startswith("recsys-mtl: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def markers(study_dir: Path) -> dict[str, str]:
    """Each data stage's completion record: a stage that runs again writes a new one."""
    return {s: (study_dir / "data" / s / "_stage.json").read_text() for s in DATA_STAGES}


@pytest.fixture
def no_data_stage(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The study folders the tune command ran its data stages in (none, when refused)."""
    ran: list[str] = []
    real = tune_module.run_pipeline

    def spy(pipeline, cfg, run_dir, **kw):
        ran.append(str(run_dir))
        return real(pipeline, cfg, run_dir, **kw)

    monkeypatch.setattr(tune_module, "run_pipeline", spy)
    return ran


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("train.epochs=5", "train.epochs=3, this config has 5"),
        ("model.params.dim=16", "model.params.dim=8, this config has 16"),
        ("split.seed=1", "split.seed=0, this config has 1"),
        ("tasks=[rating]", "tasks=[rating, interaction], this config has [rating]"),
    ],
)
def test_a_changed_fixed_setting_is_refused_before_any_work(
    tmp_path: Path, cli, no_data_stage: list[str], override: str, said: str
) -> None:
    cfg = study_config(tmp_path, trials=1, ratings=2000)
    study_dir = tmp_path / "study"
    tune_command(str(cfg), [], out=str(study_dir))
    before, ran = markers(study_dir), len(no_data_stage)
    code, _, err = cli("tune", cfg, "--out", study_dir, "--trials", "2", "--set", override)
    line = refusal(code, err)
    assert line == (
        f"recsys-mtl: error: tune: study 'tt' was run with {said}: resume with the same "
        "settings, or choose another --study name"
    )
    assert len(load(study_dir).trials) == 1  # no trial added
    assert len(no_data_stage) == ran and markers(study_dir) == before  # no data stage ran


def test_what_may_change_between_commands_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = csv_log(tmp_path / "a" / "ratings.csv")
    cfg = log_config(tmp_path, log)
    study_dir = tmp_path / "study"
    tune_command(str(cfg), [], out=str(study_dir))
    recorded = load(study_dir).user_attrs
    assert recorded["fixed_settings"]["train.epochs"] == 3
    assert "data.path" not in recorded["fixed_settings"] and "tune.trials" not in json.dumps(
        recorded["fixed_settings"]
    )
    assert recorded["data_files"]["data.path"]["path"] == str(log)
    # the same bytes elsewhere under another name, another trial count, timeout, thread
    # count, device, tracking and run name: the same experiment
    copy = tmp_path / "b" / "copy.csv"
    copy.parent.mkdir()
    shutil.copy(log, copy)
    sets = [f"data.path={copy}", "train.threads=2", "train.device=auto", "name=other"]
    sets += ["tracking.experiment=elsewhere", "tune.study=tt"]
    summary = tune_command(str(cfg), sets, trials=2, timeout=600, out=str(study_dir))
    assert summary["counts"]["complete"] == 2 and len(load(study_dir).trials) == 2
    # more workers: the command checks the study, then its workers run what is left
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    summary = tune_command(str(cfg), [], trials=2, workers=2, out=str(study_dir))
    assert summary["counts"]["complete"] == 2 and len(load(study_dir).trials) == 2


def test_another_log_is_refused_naming_the_data_path(
    tmp_path: Path, cli, no_data_stage: list[str]
) -> None:
    log = csv_log(tmp_path / "a" / "ratings.csv")
    other = csv_log(tmp_path / "b" / "ratings.csv", seed=1)
    cfg = log_config(tmp_path, log)
    study_dir = tmp_path / "study"
    code, _, err = cli("tune", cfg, "--out", study_dir)
    assert code == 0, err
    before, ran = markers(study_dir), len(no_data_stage)
    code, _, err = cli(
        "tune", cfg, "--out", study_dir, "--trials", "2", "--set", f"data.path={other}"
    )
    line = refusal(code, err)
    assert f"was run on data.path={log} (content " in line
    assert f"this config's data.path={other} holds other data" in line
    assert len(load(study_dir).trials) == 1
    assert len(no_data_stage) == ran and markers(study_dir) == before


def test_a_study_made_before_the_record_is_accepted_and_gets_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cli
) -> None:
    cfg = log_config(tmp_path, csv_log(tmp_path / "a" / "ratings.csv"))
    study_dir = tmp_path / "study"
    tune_command(str(cfg), [], out=str(study_dir))
    # what an earlier version left: the same journal without the two records
    journal = study_dir / "study.journal"
    lines = journal.read_text().splitlines(keepends=True)
    kept = [
        line
        for line in lines
        if not {"fixed_settings", "data_files"} & set(json.loads(line).get("user_attr", {}))
    ]
    assert len(kept) == len(lines) - 2
    journal.write_text("".join(kept))
    assert "fixed_settings" not in load(study_dir).user_attrs
    logger = logging.getLogger("recsys_mtl.tune")  # the command's logger may not propagate
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="recsys_mtl.tune"):
            summary = tune_command(str(cfg), ["train.epochs=4"], trials=2, out=str(study_dir))
    finally:
        logger.removeHandler(caplog.handler)
    assert "has no record of its fixed settings and data (made by an earlier version)" in (
        caplog.text
    )
    study = load(study_dir)
    assert summary["counts"]["complete"] == 2 and len(study.trials) == 2
    assert study.user_attrs["fixed_settings"]["train.epochs"] == 4
    assert set(study.user_attrs["data_files"]["data.path"]["files"]) == {"ratings"}
    # from now on the record holds
    code, _, err = cli("tune", cfg, "--out", study_dir, "--trials", "3")
    assert "was run with train.epochs=4, this config has 3" in refusal(code, err)
    assert len(load(study_dir).trials) == 2
