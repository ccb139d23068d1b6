"""Model versions recorded in the database of each kind: keep, activate (with when and by whom),
adopt a hand-written checkpoint, and a state folder from before version records."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.errors import ModelObjectCorrupt, VersionNotFound
from app.records.database import Database, database_url
from app.records.model_store import LocalModelStore
from app.records.versions import Adopt, ModelVersions
from models.checkpoint import load_checkpoint, metadata_path
from tests.checkpoints import another_version, copied, flipped


def opened(url: str, state: Path, model_path: Path) -> ModelVersions:
    database = Database(database_url(url, state))
    database.migrate()
    return ModelVersions(database, LocalModelStore(state / "models"), state, model_path)


def test_keep_activate_and_list(records_url: str, tmp_path: Path, small_checkpoint: Path) -> None:
    state, served = tmp_path / "state", tmp_path / "served" / "mnist_cnn.pt"
    versions = opened(records_url, state, served)
    first = versions.keep(copied(small_checkpoint, versions.incoming_path("a")))
    second = versions.keep(another_version(small_checkpoint, versions.incoming_path("b")))
    assert versions.keep(versions.incoming_path("b")) == second  # a retry after an outage: no change
    versions.activate(first, "training job a")
    assert load_checkpoint(served).version == first
    versions.activate(second, "POST /model/versions/x/activate from 10.0.0.7")
    assert load_checkpoint(served).version == second

    listed = {entry["model_version"]: entry for entry in versions.list()}
    assert set(listed) == {first, second}
    assert listed[second]["active"] and not listed[first]["active"]
    assert listed[second]["activated_by"] == "POST /model/versions/x/activate from 10.0.0.7"
    assert listed[second]["activated_at"] and listed[second]["test_accuracy"] == 12.5
    assert "activated_by" not in listed[first]
    # Another process of the deployment sees the same records.
    assert opened(records_url, state, served).active() == second


def test_unknown_versions_are_refused(records_url: str, tmp_path: Path) -> None:
    versions = opened(records_url, tmp_path / "state", tmp_path / "mnist_cnn.pt")
    for version in ("0123456789ab", "../../etc/passwd", ""):
        with pytest.raises(VersionNotFound):
            versions.activate(version, "test")
    assert versions.active() is None


def test_a_checkpoint_written_by_hand_is_adopted_once(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    served = copied(small_checkpoint, tmp_path / "served" / "mnist_cnn.pt")
    versions = opened(records_url, tmp_path / "state", served)
    version = load_checkpoint(served).version
    versions.adopt(served, "startup", Adopt.FIRST)
    versions.adopt(served, "a second process starting", Adopt.NEW)  # known: recorded once, unchanged
    [entry] = versions.list()
    assert entry["model_version"] == version and entry["active"] and entry["activated_by"] == "startup"
    assert load_checkpoint(versions.local_copy(entry)).version == version  # kept, to roll back to


def test_the_active_version_wins_over_a_file_unless_it_is_new_and_taken_over(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    served = copied(small_checkpoint, tmp_path / "served" / "mnist_cnn.pt")
    versions = opened(records_url, tmp_path / "state", served)
    first = versions.adopt(served, "replica a", Adopt.FIRST)
    another_version(small_checkpoint, tmp_path / "other.pt")
    replica_file = copied(tmp_path / "other.pt", tmp_path / "replica-b" / "mnist_cnn.pt")
    second = versions.adopt(replica_file, "replica b", Adopt.FIRST)  # shared records: a wins
    assert versions.active() == first and second != first
    assert {entry["model_version"] for entry in versions.list()} == {first, second}  # but it is kept
    newest = copied(tmp_path / "other.pt", tmp_path / "by-hand" / "mnist_cnn.pt")
    versions.adopt(newest, "by hand", Adopt.NEW)  # known already: not a new model, no take-over
    assert versions.active() == first
    third = another_version(tmp_path / "other.pt", tmp_path / "third" / "mnist_cnn.pt")
    assert versions.adopt(third, "by hand", Adopt.NEW) == versions.active() != first
    versions.adopt(served, "one machine restarting with this file", Adopt.ALWAYS)
    assert versions.active() == first


def test_a_state_folder_from_before_version_records_is_recorded(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    state = tmp_path / "state"
    kept = state / "models"
    kept.mkdir(parents=True)
    old = load_checkpoint(small_checkpoint).version
    copied(small_checkpoint, kept / f"{old}.pt")
    newer = load_checkpoint(another_version(small_checkpoint, tmp_path / "new.pt")).version
    copied(tmp_path / "new.pt", kept / f"{newer}.pt")
    versions = opened(f"sqlite:///{state / 'jobs.sqlite3'}", state, tmp_path / "mnist_cnn.pt")
    versions.record_kept_files()
    versions.record_kept_files()  # every process does it at startup: once is recorded once
    assert {entry["model_version"] for entry in versions.list()} == {old, newer}
    versions.activate(old, "rollback")
    assert load_checkpoint(tmp_path / "mnist_cnn.pt").version == old


def test_stale_metadata_and_broken_kept_files(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    """Weights replaced before their JSON: the weights' own version is recorded. A kept file that
    does not load is left out with a warning; startup goes on."""
    served = copied(small_checkpoint, tmp_path / "served" / "mnist_cnn.pt")
    another_version(small_checkpoint, tmp_path / "other.pt")
    shutil.copy(tmp_path / "other.pt", served)  # new weights, old JSON beside them
    versions = opened(records_url, tmp_path / "state", served)
    (tmp_path / "state" / "models").mkdir(parents=True, exist_ok=True)  # kept by an earlier server
    (tmp_path / "state" / "models" / "0123456789ab.pt").write_bytes(b"not a checkpoint")
    versions.record_kept_files()
    truth = load_checkpoint(served).version
    versions.adopt(served, "startup", Adopt.ALWAYS)
    [entry] = versions.list()
    assert entry["model_version"] == truth == versions.active()


def test_a_version_whose_weights_went_bad_is_not_activated(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    served = copied(small_checkpoint, tmp_path / "served" / "mnist_cnn.pt")
    versions = opened(records_url, tmp_path / "state", served)
    good = versions.adopt(served, "startup", Adopt.FIRST)
    bad = versions.keep(another_version(small_checkpoint, versions.incoming_path("b")))
    kept = tmp_path / "state" / "models" / f"{bad}.pt"
    kept.write_bytes(flipped(kept.read_bytes()))
    with pytest.raises(ModelObjectCorrupt, match="do not match their recorded sha256"):
        versions.activate(bad, "rollback")
    assert versions.active() == good and load_checkpoint(served).version == good


def test_a_version_whose_kept_metadata_names_another_network_is_not_activated_saying_why(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    """The weights still match their hash; the JSON beside them was edited to another arch."""
    served = copied(small_checkpoint, tmp_path / "served" / "mnist_cnn.pt")
    versions = opened(records_url, tmp_path / "state", served)
    good = versions.adopt(served, "startup", Adopt.FIRST)
    edited = versions.keep(another_version(small_checkpoint, versions.incoming_path("b")))
    kept = metadata_path(tmp_path / "state" / "models" / f"{edited}.pt")
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "arch": "lenet5"}))
    with pytest.raises(ModelObjectCorrupt) as refused:
        versions.activate(edited, "rollback")
    assert refused.value.detail == (
        f"version {edited} cannot be served: {edited}.json says arch 'lenet5', but {edited}.pt "
        "holds the weights of 'net'"
    )
    assert versions.active() == good and load_checkpoint(served).version == good


def test_activating_where_the_model_file_cannot_be_written_still_activates(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    """An api replica whose MNIST_MODEL_PATH is on a read-only seed volume: the database is what
    every replica follows, so the copy onto the file is skipped, not an error."""
    (tmp_path / "a-file").write_text("not a folder")
    versions = opened(records_url, tmp_path / "state", tmp_path / "a-file" / "mnist_cnn.pt")
    version = versions.keep(copied(small_checkpoint, versions.incoming_path("a")))
    versions.activate(version, "rollback")
    assert versions.active() == version


def test_promote_only_replaces_the_model_it_was_judged_against(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    versions = opened(records_url, tmp_path / "state", tmp_path / "served" / "mnist_cnn.pt")
    first = versions.keep(copied(small_checkpoint, versions.incoming_path("a")))
    second = versions.keep(another_version(small_checkpoint, versions.incoming_path("b")))
    assert versions.promote(first, "training job a", replacing=None)  # nothing was active
    assert versions.active() == first
    # Judged against a model that no longer serves: refused, and nothing changes.
    assert not versions.promote(second, "training job b", replacing="0123456789ab")
    assert versions.active() == first
    assert versions.promote(second, "training job b", replacing=first)
    assert versions.active() == second


def test_measured_figures_are_added_to_the_record(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    versions = opened(records_url, tmp_path / "state", tmp_path / "served" / "mnist_cnn.pt")
    version = versions.keep(another_version(small_checkpoint, versions.incoming_path("b")))
    figures = {
        "version": version,
        "test_accuracy": 70.5,
        "test_loss": 1.25,
        "data": {"dataset": "MNIST", "test_samples": 10000, "test_sha256": "ab" * 32},
        "per_class_accuracy": [70.5] * 10,
    }
    recorded = versions.record_evaluation(version, figures, "measured to compare with training job j")
    assert recorded == versions.metadata_of(version)
    assert recorded["test_accuracy"] == 70.5 and recorded["per_class_accuracy"] == [70.5] * 10
    assert recorded["data"]["test_sha256"] == "ab" * 32 and recorded["arch"] == "net"
    assert recorded["evaluated"]["by"] == "measured to compare with training job j"
    listed = next(entry for entry in versions.list() if entry["model_version"] == version)
    assert listed["test_accuracy"] == 70.5
    with pytest.raises(VersionNotFound):
        versions.record_evaluation("0123456789ab", figures, "nobody")


def test_concurrent_activations_and_adoptions_end_on_the_last_one_and_keep_who_asked(
    records_url: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    """Two activations at once copy their weights onto MNIST_MODEL_PATH; a follower adopting that
    file meanwhile must not take an earlier copy for a new model. Whatever the interleaving, the
    file holds the active version, and the record says which activation made it."""
    served = copied(small_checkpoint, tmp_path / "served" / "mnist_cnn.pt")
    versions = opened(records_url, tmp_path / "state", served)
    first = versions.adopt(served, "startup", Adopt.ALWAYS)
    second = versions.keep(another_version(small_checkpoint, versions.incoming_path("b")))
    for round_ in range(20):
        with ThreadPoolExecutor(3) as pool:
            done = [
                pool.submit(versions.activate, first, f"rollback {round_}"),
                pool.submit(versions.activate, second, f"roll forward {round_}"),
                pool.submit(versions.adopt, served, "mnist_cnn.pt changed", Adopt.ALWAYS),
            ]
            for future in done:
                future.result()
        active = versions.active()
        [record] = [entry for entry in versions.list() if entry["model_version"] == active]
        assert load_checkpoint(served).version == active, round_
        assert record["activated_by"] in (f"rollback {round_}", f"roll forward {round_}"), record
