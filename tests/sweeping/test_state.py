"""sweeping/state.py: the runner trusts neither its state file nor the folders it names."""

import json
import shutil
import subprocess

import pytest

from sparse_transformer.cli.sweep import main
from sparse_transformer.sweeping.runner import run_local
from sparse_transformer.sweeping.spec import SweepError
from sparse_transformer.sweeping.state import remove_trial_folder
from tests.sweeping.helpers import FakeTrain, make_sweep, no_trial


def _edited_state(tmp_path, monkeypatch, edit):
    """A sweep run once (one failed trial), then its trials.json edited by ``edit(trials)``."""
    path = make_sweep(tmp_path, {"optim.lr": {"values": [8e-3, 1e-3]}})
    monkeypatch.setattr(subprocess, "run", FakeTrain(fail_lr=8e-3))
    out = tmp_path / "sweeps" / "s"
    run_local(path, 1, engine="builtin", out=out, quiet=True)
    state = json.loads((out / "trials.json").read_text())
    edit(state["trials"])
    (out / "trials.json").write_text(json.dumps(state))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    monkeypatch.setattr(subprocess, "run", no_trial)
    return path, out, victim


@pytest.mark.parametrize("bad_id", ["../../victim", "../victim", str("/tmp/victim"), "trial-000/../../../victim", "",
                                    "trial-0", "trial-000\n", 7, None])
def test_an_edited_trial_id_never_deletes_outside_the_sweep(tmp_path, monkeypatch, capsys, bad_id):
    """trials.json with an id of ../../victim made the runner rmtree a folder outside the sweep."""
    path, out, victim = _edited_state(tmp_path, monkeypatch, lambda trials: trials[0].update(id=bad_id))
    before = sorted(tmp_path.rglob("*"))
    rc = main(["local", path, "--trials", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {out / 'trials.json'}: trial 0 has id {bad_id!r}; valid: trial-<number>")
    assert (victim / "precious.txt").read_text() == "keep me" and sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.append(dict(t[0])), "trial 1 has id 'trial-000'; valid: trial-<number> (trial-000, trial-001, ...), each once"),
    (lambda t: t[0]["params"].update({"imports": ["os"]}), "trial trial-000 has parameters ['imports', 'optim.lr'], not the sweep's ['optim.lr']"),
    (lambda t: t[0].update(status="done"), "trial trial-000 has status 'done'; valid: running, finished, failed, invalid"),
    (lambda t: t.__setitem__(0, "trial-000"), "trial 0 has id None"),
])
def test_an_edited_state_file_is_refused_in_one_line(tmp_path, monkeypatch, capsys, edit, message):
    path, out, _ = _edited_state(tmp_path, monkeypatch, edit)
    rc = main(["local", path, "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_a_trial_folder_is_deleted_only_inside_the_sweep_folder(tmp_path, monkeypatch, capsys):
    """Even with valid ids: a trial folder that is a link out of the sweep is not followed."""
    path, out, victim = _edited_state(tmp_path, monkeypatch, lambda trials: None)
    shutil.rmtree(out / "trial-000")
    (out / "trial-000").symlink_to(victim, target_is_directory=True)
    rc = main(["local", path, "--trials", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"refusing to delete {out / 'trial-000'}: it resolves to {victim}" in err
    assert (victim / "precious.txt").read_text() == "keep me"
    for target in (victim, out, out / ".." / "victim"):
        with pytest.raises(SweepError, match="refusing to delete"):
            remove_trial_folder(target, out)
    assert (victim / "precious.txt").exists()


def test_temporaries_of_a_runner_killed_while_saving_are_removed(tmp_path, monkeypatch):
    path, out, _ = _edited_state(tmp_path, monkeypatch, lambda trials: None)
    (out / ".trials.json.tmp-abc123").write_text('{"half": ')
    monkeypatch.setattr(subprocess, "run", FakeTrain())
    run_local(path, 1, engine="builtin", out=out, quiet=True)
    assert not list(out.glob(".trials.json.tmp-*"))
