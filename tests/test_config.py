import pytest

from tests.conftest import cli
from trainerd.config import DEFAULT_TOML, ConfigError, load_config


def test_default_toml_is_valid_and_documents_every_section(tmp_path):
    p = tmp_path / "trainerd.toml"
    p.write_text(DEFAULT_TOML.format(base_model="some/model", learning_rate="2e-4"))
    cfg = load_config(p)
    assert cfg.base_model == "some/model"
    assert cfg.train.method == "lora" and cfg.queue.max_attempts == 3


def test_every_error_is_listed_at_once(tmp_path):
    p = tmp_path / "trainerd.toml"
    p.write_text(
        'base_model = "m"\n'
        "[train]\nmethod = \"qlora\"\nlearning_rate = -1\nmicro_batch = 3\n"
        "[queue]\nmax_attempts = 0\nbackoff_seconds = [-5]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    for key in ("train.method", "train.learning_rate", "train.micro_batch", "queue.max_attempts",
                "queue.backoff_seconds"):
        assert key in msg, (key, msg)
    assert "'lora' or 'full'" in msg  # what is allowed
    assert "unknown key" in msg  # a typo is named as such
    assert len(e.value.problems) == 5


def test_missing_base_model_and_toml_syntax(tmp_path):
    p = tmp_path / "trainerd.toml"
    p.write_text("[train]\n")
    with pytest.raises(ConfigError, match="base_model: required"):
        load_config(p)
    p.write_text("base_model = \n")
    with pytest.raises(ConfigError, match="TOML syntax.*line 1"):
        load_config(p)


def test_run_refuses_to_start_on_a_bad_config(tmp_path):
    from trainerd.paths import Layout

    Layout.at(tmp_path).ensure()
    (tmp_path / "trainerd.toml").write_text('base_model = "m"\n[train]\nmethod = "x"\nwarmup_steps = -1\n')
    p = cli("run", "--base-dir", tmp_path, "--once", check=False)
    assert p.returncode == 2
    assert "train.method" in p.stderr and "train.warmup_steps" in p.stderr
    assert "2 problem(s)" in p.stderr
