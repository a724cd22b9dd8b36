import json

import numpy as np
from PIL import Image

from flaxgen.cli import main
from helpers import REPO


def _tiny_config_file(tmp_path, kind_dict: str) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(f"def get_config():\n    return {kind_dict}\n")
    return str(path)


TINY_VAE = ("{'model': {'family': 'vae', 'encoder_hidden': [32], 'decoder_hidden': [32], 'latent_dim': 2},"
            " 'data': {'name': 'mnist', 'binarize': 'dynamic', 'batch_size': 32, 'eval_batch_size': 100},"
            " 'train': {'steps': 30}, 'eval': {'every': 30, 'batches': 2, 'iw_samples': 16, 'iw_batch': 8},"
            " 'checkpoint': {'every': 30}, 'log': {'every': 10, 'progress': False}}")


def test_mistyped_override_fails_in_one_line_before_anything_runs(tmp_path, capsys):
    code = main(["train", "--config", str(REPO / "configs/vae_mnist.py"), "--workdir", str(tmp_path / "w"),
                 "--config.model.latnet_dim=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert "unknown config key 'model.latnet_dim': did you mean 'model.latent_dim'?" in err
    assert not (tmp_path / "w").exists()


def test_train_eval_sample_round_trip(tmp_path, capsys, data_dir):
    workdir = str(tmp_path / "run")
    assert main(["train", "--config", _tiny_config_file(tmp_path, TINY_VAE), "--workdir", workdir]) == 0
    assert main(["eval", "--workdir", workdir]) == 0
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["step"] == 30 and metrics["iw_samples"] == 16
    # The importance-weighted bound is tighter than the ELBO (up to Monte Carlo noise).
    assert metrics["iw_nll"] < metrics["neg_elbo"] + 1.0
    out = tmp_path / "samples.png"
    assert main(["sample", "--workdir", workdir, "--n", "16", "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape[0] == picture.shape[1] and picture.std() > 0
    pictures = {p.name for p in (tmp_path / "run" / "pictures").iterdir()}
    assert {"manifold_0000030.png", "latent_means_0000030.png", "samples_0000030.png"} <= pictures


def test_sample_rejects_text_options_for_image_models(tmp_path, capsys, data_dir):
    workdir = str(tmp_path / "run")
    assert main(["train", "--config", _tiny_config_file(tmp_path, TINY_VAE), "--workdir", workdir,
                 "--config.train.steps=10", "--config.checkpoint.every=10"]) == 0
    assert main(["sample", "--workdir", workdir, "--prompt", "hi"]) == 2
    assert "take no --prompt" in capsys.readouterr().err


def test_eval_of_a_missing_workdir_says_what_to_do(tmp_path, capsys):
    assert main(["eval", "--workdir", str(tmp_path / "nothing")]) == 2
    assert "flaxgen train writes it" in capsys.readouterr().err
