import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sparse_transformer.config import CONF_DIR, ROOT, ConfigError, experiments, field_docs, load_config

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_paths_built_from_the_package_file_find_the_repository():
    assert ROOT == REPO and CONF_DIR == REPO / "conf" and (CONF_DIR / "exp" / "default.yaml").is_file()


def test_merge_order_schema_yaml_exp_cli():
    cfg, _ = load_config([])
    exp = OmegaConf.load(CONF_DIR / "exp" / "default.yaml")
    assert cfg.exp == "default"
    assert cfg.model.n_layer == exp.model.n_layer  # experiment over schema
    assert cfg.model.ffn_mult == 4.0  # schema default kept where nobody overrides
    assert cfg.trainer.log_every_n_steps == OmegaConf.load(CONF_DIR / "config.yaml").trainer.log_every_n_steps
    cfg, _ = load_config(["model.n_layer=2", "--attention.stride=8", "exp=default"])
    assert cfg.model.n_layer == 2 and cfg.attention.stride == 8  # command line wins, both spellings


def test_layout_list_override():
    cfg, _ = load_config(["attention.layout=[stride,local,local,local]"])
    assert list(cfg.attention.layout) == ["stride", "local", "local", "local"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["model.n_layr=4"], "did you mean model.n_layer?"),
        (["attention.pattern=stridd"], "attention.pattern=stridd is unknown (did you mean strided?); valid: dense"),
        (["attention.stride=0"], "attention.stride=0 must be an int >= 1"),
        (["data.seq_len=1000", "attention.stride=128"], "data.seq_len=1000 must be a multiple of attention.stride=128"),
        (["model.d_model=abc"], "model.d_model=abc is not a valid int"),
        (["exp=nosuch"], "experiment exp=nosuch does not exist: valid: bach, cifar10, classical_music, default"),
        (["trainer.precision=8"], "trainer.precision=8 is not valid; valid: auto, 32"),
        (["attention.pattern=fixed"], "attention.summary must be set"),
        (["attention.pattern=fixed", "attention.summary=8", "attention.summary_heads=3"], "summary_heads=3 must be in 1..stride/summary=2"),
        (["logger.kind=tensorboard"], "logger.kind=tensorboard is unknown; valid: wandb, csv, none"),
        (["oops"], "is not key=value"),
    ],
)
def test_bad_values_raise_one_line(args, message):
    with pytest.raises(ConfigError) as e:
        load_config(args)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "args",
    [["model.n_layr=4"], ["attention.pattern=stridd"], ["attention.stride=0"], ["data.seq_len=1000", "attention.stride=128"],
     ["model.d_model=abc"], ["exp=nosuch"], ["trainer.precision=8"]],
)
def test_cli_exits_2_with_one_line_and_writes_nothing(args, tmp_path):
    r = subprocess.run([sys.executable, "-m", "sparse_transformer.train", *args], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cfg_prints_resolved_yaml_and_exits_0_without_heavy_imports(tmp_path):
    code = ("import sys\nfrom sparse_transformer.config import main_config\n"
            "try:\n    main_config(['exp=default', 'model.n_layer=4', '--cfg'])\n"
            "except SystemExit as e:\n    print('EXIT', e.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert "EXIT 0 False False" in r.stdout
    cfg = OmegaConf.create(r.stdout.split("EXIT")[0])
    assert cfg.model.n_layer == 4 and cfg.exp == "default" and cfg.attention.pattern == "strided"
    r = subprocess.run([sys.executable, "-m", "sparse_transformer.train", "exp=default", "model.n_layer=4", "--cfg"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "n_layer: 4" in r.stdout and list(tmp_path.iterdir()) == []


def test_help_lists_every_key_with_its_docstring_and_exits_0_without_heavy_imports(tmp_path):
    code = ("import sys\nfrom sparse_transformer.config import main_config\n"
            "try:\n    main_config(['--help', 'model.n_layer=oops'])\n"
            "except SystemExit as e:\n    print('EXIT', e.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert "EXIT 0 False False" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "sparse_transformer.train", "--help"], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m sparse_transformer.train")
    assert f"experiments: {', '.join(experiments())}" in r.stdout and list(tmp_path.iterdir()) == []
    for key, doc in field_docs().items():
        assert f"  {key:32s} {doc}" in r.stdout, key


def test_every_experiment_resolves():
    for exp in experiments():
        cfg, _ = load_config([f"exp={exp}"])
        assert cfg.exp == exp


# ------------------------------------------------------------------------------------------------
# The experiment name stays inside conf/exp/
# ------------------------------------------------------------------------------------------------
ESCAPES = ["../../../x/outside", "../exp/default", "default/../default", "/etc/passwd", "..", ".", "a/b", "a\\b",
           "-rf", "default.yaml/..", ""]


@pytest.mark.parametrize("name", [n for n in ESCAPES if n])
def test_an_experiment_name_cannot_leave_conf_exp(name):
    with pytest.raises(ConfigError) as e:
        load_config([f"exp={name}"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"exp={name} is not an experiment name")
    assert msg.endswith(f"valid: {', '.join(experiments())}")


def test_an_escaping_experiment_exits_2_and_reads_and_writes_nothing_outside(tmp_path):
    """exp=../../../x/outside loaded a YAML outside the repository and wrote its run outside runs/."""
    outside = tmp_path / "x" / "outside.yaml"
    outside.parent.mkdir()
    outside.write_text("trainer:\n  fast_dev_run: true\n")
    rel = os.path.relpath(outside.with_suffix(""), CONF_DIR / "exp")
    assert (CONF_DIR / "exp" / f"{rel}.yaml").resolve() == outside.resolve()  # the name the bug followed
    # deep enough that runs/<rel> (where the bug wrote) lands inside tmp_path, so the check below sees it
    work = tmp_path.joinpath(*["w"] * rel.split("/").count(".."))
    work.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    r = subprocess.run([sys.executable, "-m", "sparse_transformer.train", f"exp={rel}", "logger.kind=none"],
                       cwd=work, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert r.stderr.startswith(f"error: exp={rel} is not an experiment name") and "valid: bach, cifar10" in r.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_an_experiment_file_that_resolves_outside_conf_exp_is_refused(tmp_path, monkeypatch):
    from sparse_transformer.config import load

    conf = tmp_path / "conf"
    (conf / "exp").mkdir(parents=True)
    (conf / "exp" / "good.yaml").write_text("seed: 3\n")
    (tmp_path / "elsewhere.yaml").write_text("seed: 4\n")
    (conf / "exp" / "linked.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    monkeypatch.setattr(load, "CONF_DIR", conf)
    assert load_config(["exp=good"])[0].seed == 3
    with pytest.raises(ConfigError, match=r"^exp=linked: .*linked.yaml resolves outside conf/exp/ .*; valid: good, linked$"):
        load_config(["exp=linked"])
