from __future__ import annotations

import pytest

from astrovader.config import Config, ConfigError


def test_paper_preset_matches_reference_facts():
    c = Config.preset("paper")
    assert (c.model.image_size, c.model.latent_dim, c.model.n_components) == (128, 20, 12)
    assert c.model.encoder_filters == [64, 64, 16] and c.model.encoder_kernels == [3, 5, 5]
    assert c.model.decoder_filters == [16, 64, 64] and c.model.decoder_kernels == [5, 5, 5]
    assert c.loss.gmm_kl_scale == 0.3 and c.loss.l2 == 0.01 and c.loss.minmax_scale == 50 and c.loss.gamma == 5e-4
    t = c.train
    assert (t.gamma_epochs, t.gmm_init_batches, t.anneal_epochs, t.static_epochs, t.periods) == (100, 200, 25, 25, 5)
    assert t.epochs == 350 and t.lr == 3e-4 and t.lr_min == 1e-6 and t.clip_value == 1.0


def test_toml_roundtrip(tmp_path):
    c = Config.resolve("demo", overrides=["train.seed=7", "model.encoder_filters=[4,4,4]", "train.device=cpu"])
    c.save(tmp_path / "c.toml")
    assert Config.from_toml(tmp_path / "c.toml") == c


@pytest.mark.parametrize("override, fragment", [
    ("model.image_size=30", "model.image_size"),
    ("model.n_components=0", "model.n_components"),
    ("train.colour=1", "unknown config key 'train.colour'"),
    ("bogus.x=1", "unknown config section 'bogus'"),
    ("train.batch_size=abc", "train.batch_size: expected int"),
    ("loss.reconstruction='l1'", "loss.reconstruction"),
    ("model.encoder_kernels=[3,4,3]", "odd"),
])
def test_bad_settings_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Config.resolve("demo", overrides=[override])


def test_unknown_key_in_file(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match="c.toml.*train.epochz"):
        Config.from_toml(tmp_path / "c.toml")


def test_presets_are_one_registry_listed_by_the_cli(capsys):
    from astrovader.cli import main
    from astrovader.presets import PRESETS

    assert {"paper", "demo", "simulated", "sdss64-k12", "sdss64-k3", "mnist"} <= set(PRESETS)
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().split("\n\n")[0].splitlines()  # then the pretrained models
    assert [ln.split()[0] for ln in lines] == list(PRESETS)  # one a line, its name first
    assert all(len(ln.split(maxsplit=1)[1]) > 20 for ln in lines)  # each with a description
    for name in PRESETS:
        Config.preset(name).validate()
    k12, k3 = Config.preset("sdss64-k12"), Config.preset("sdss64-k3")
    assert (k12.model.image_size, k12.model.n_components, k12.model.covariance) == (64, 12, "full")
    assert (k3.model.n_components, k3.model.covariance) == (3, "diag")
    assert PRESETS["sdss64-k12"].stamps["crop"] == "3xR90"
    assert PRESETS["gz2-64"].stamps["crop"] == "192/424" and not PRESETS["gz2-64"].stamps["derotate"]
    with pytest.raises(ConfigError, match="unknown preset"):
        Config.preset("nope")


def test_the_old_key_n_clusters_is_read_as_n_components_with_a_warning(tmp_path):
    old = tmp_path / "config.toml"
    old.write_text("[model]\nn_clusters = 5\n")  # as runs written before the rename hold it
    with pytest.warns(FutureWarning, match="model.n_clusters is renamed model.n_components"):
        cfg = Config.from_toml(old)
    assert cfg.model.n_components == 5 and "n_clusters" not in cfg.to_toml()
    with pytest.warns(FutureWarning):
        assert Config().with_overrides(["model.n_clusters=7"]).model.n_components == 7
