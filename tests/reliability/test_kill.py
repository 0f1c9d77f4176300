"""kill -9 during training, during a checkpoint write and during indexing: what was committed survives,
every file on disk is the old or the new complete version, and the next run finishes the job with the
same result as a run that was never interrupted. See kill_harness.py for how the kills are made."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.kill_harness import (
    KILL_POINTS,
    assert_same_runs,
    check_index_resumed,
    checkpoint_at,
    coembed_cmd,
    file_exists,
    committed_vectors,
    index_args,
    inspect_training_run,
    kill_after,
    kill_at_point,
    metrics_started,
    random_delay,
    run,
    store_holds,
    work_window,
    training_args,
)

STEPS = 10


@pytest.fixture(scope="module")
def reference_run(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """An uninterrupted run of the killed runs' settings, and its seconds from the first metrics line to the last checkpoint."""
    out = tmp_path_factory.mktemp("kill") / "ref"
    window = work_window(coembed_cmd(*training_args(shapes_data, STEPS), "--out", str(out)), metrics_started(out),
                         checkpoint_at(out, STEPS))
    return out, window


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_killed_at_a_random_moment_resumes_exactly(seed: int, shapes_data: Path, reference_run, tmp_path: Path) -> None:
    ref, duration = reference_run
    out = tmp_path / "run"
    args = training_args(shapes_data, STEPS)
    # The clock starts at the first metrics line, so the kill lands among the steps and checkpoint writes.
    killed = kill_after(coembed_cmd(*args, "--out", str(out)), random_delay(seed, 0.0, duration), metrics_started(out))
    state = inspect_training_run(out)  # raises if anything published is incomplete
    if killed.was_killed:
        assert state.logged_steps, "killed before training began: the test did not test a kill during training"
    run(coembed_cmd(*args, "--out", str(out), "--resume", "auto"))
    assert_same_runs(ref, out)
    assert not (out / ".staging-checkpoint").exists() and not (out / "checkpoint.old").exists()


# Which checkpoint must be found after a kill at each point of the 3rd save (step 3): the old one
# (step 2) until the new one is in place.
EXPECTED_STEP = {"model_staged": 2, "state_torn": 2, "old_aside": 2, "new_in_place": 3, "metrics_torn": None}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_training_killed_inside_a_checkpoint_write_keeps_one_whole_checkpoint(point: str, shapes_data: Path, reference_run,
                                                                              tmp_path: Path) -> None:
    ref, _ = reference_run
    out = tmp_path / "run"
    args = training_args(shapes_data, STEPS)
    killed = kill_at_point(point, 3, *args, "--out", str(out))
    assert killed.was_killed, killed.stderr[-2000:]
    state = inspect_training_run(out)
    if EXPECTED_STEP[point] is not None:
        assert state.step == EXPECTED_STEP[point]
    if point == "old_aside":
        assert state.checkpoint is not None and state.checkpoint.name == "checkpoint.old"
    if point == "metrics_torn":  # killed while logging step 3, after step 2's checkpoint
        assert state.logged_steps == [1, 2] and state.step == 2
    run(coembed_cmd(*args, "--out", str(out), "--resume", "auto"))
    assert_same_runs(ref, out)


@pytest.fixture(scope="module")
def index_reference(shapes_data: Path, reference_run, tmp_path_factory: pytest.TempPathFactory):
    import shutil

    ref, _ = reference_run
    tmp = tmp_path_factory.mktemp("kill-index")
    photos = tmp / "photos"
    photos.mkdir()
    for src in sorted((shapes_data / "test" / "images").glob("*.png"))[:40]:
        shutil.copy(src, photos / src.name)
    db = tmp / "ref.db"
    indexing = work_window(coembed_cmd(*index_args(photos, db, ref / "checkpoint")), file_exists(db), store_holds(db, 40))
    return photos, ref / "checkpoint", committed_vectors(db, photos), indexing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_indexing_killed_at_a_random_moment_loses_nothing(seed: int, index_reference, tmp_path: Path) -> None:
    photos, checkpoint, reference, duration = index_reference
    db = tmp_path / "index.db"
    kill_after(coembed_cmd(*index_args(photos, db, checkpoint)), random_delay(100 + seed, 0.0, duration), file_exists(db))
    before = committed_vectors(db, photos)  # the store opens; what it holds is what was committed
    run(coembed_cmd(*index_args(photos, db, checkpoint)))
    check_index_resumed(db, photos, before, reference)
    done = run(coembed_cmd("search", "a red circle", "--db", str(db), "--json"))
    assert done.stdout.strip()
