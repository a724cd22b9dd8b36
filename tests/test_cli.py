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


TINY_CHAR_GPT = ("{'model': {'family': 'transformer', 'n_layer': 1, 'n_head': 2, 'd_model': 32},"
                 " 'data': {'name': 'tiny_shakespeare', 'tokenizer': 'char', 'block_size': 16, 'batch_size': 4},"
                 " 'train': {'steps': 10}, 'eval': {'every': 10, 'batches': 1, 'pictures': False},"
                 " 'checkpoint': {'every': 10}, 'log': {'every': 5, 'progress': False}}")


def test_sampling_needs_only_the_workdir_and_reports_tokens_per_second(tmp_path, capsys, data_dir,
                                                                       monkeypatch):
    text_run, image_run = str(tmp_path / "text"), str(tmp_path / "image")
    assert main(["train", "--config", _tiny_config_file(tmp_path, TINY_CHAR_GPT), "--workdir", text_run]) == 0
    assert main(["train", "--config", _tiny_config_file(tmp_path, TINY_VAE), "--workdir", image_run,
                 "--config.train.steps=10", "--config.checkpoint.every=10"]) == 0
    capsys.readouterr()
    # The datasets are gone: only the workdirs are left.
    monkeypatch.setenv("FLAXGEN_DATA_DIR", str(tmp_path / "no-data-here"))
    assert main(["sample", "--workdir", text_run, "--prompt", "ROMEO:", "--n", "2",
                 "--max-new-tokens", "12", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    # Two greedy samples, each the prompt and 12 characters (which may themselves be newlines).
    length = len("ROMEO:") + 12
    assert len(captured.out) == 2 * (length + 1)
    first, second = captured.out[:length], captured.out[length + 1:-1]
    assert first == second and first.startswith("ROMEO:")
    assert "decoded 24 tokens (2 x 12)" in captured.err and "tokens/s" in captured.err
    out = tmp_path / "vae.png"
    assert main(["sample", "--workdir", image_run, "--n", "4", "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).std() > 0
    # Evaluation does need the data, and says how to get it.
    assert main(["eval", "--workdir", image_run]) == 2
    assert "flaxgen data prepare mnist" in capsys.readouterr().err
