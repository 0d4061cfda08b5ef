"""Each command-line option reaches the engine function it is documented to set (the engine is
replaced by a recorder, so these run in milliseconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from realnet.cli.main import main


def test_test_passes_device_batch_size_panels_and_skip_bad_to_evaluate(tmp_path, monkeypatch, capsys):
    import realnet.engine.evaluate as evaluate_module

    calls = []

    def recording_evaluate(run, **kwargs):
        calls.append((run, kwargs))
        return {"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0, "image_f1_max": 1.0,
                "n_images": 2, "n_anomalous": 1}

    monkeypatch.setattr(evaluate_module, "evaluate", recording_evaluate)
    run = tmp_path / "run"
    assert main(["test", "--run", str(run), "--device", "cpu", "--batch-size", "3", "--panels", "2",
                 "--skip-bad"]) == 0
    (given_run, kwargs), = calls
    assert Path(given_run) == run
    assert kwargs["device"] == "cpu" and kwargs["batch_size"] == 3 and kwargs["panels"] == 2
    assert kwargs["skip_bad"] is True
    calls.clear()
    assert main(["test", "--run", str(run)]) == 0  # the documented defaults
    (_, kwargs), = calls
    assert kwargs["device"] == "auto" and kwargs["batch_size"] is None and kwargs["panels"] == 6
    assert kwargs["skip_bad"] is False


def test_predict_passes_device_and_batch_size_to_predict(tmp_path, monkeypatch):
    import realnet.engine.predict as predict_module

    calls = []
    monkeypatch.setattr(predict_module, "predict", lambda run, inputs, **kwargs: calls.append(kwargs) or [])
    assert main(["predict", "--run", str(tmp_path), "x.png", "--device", "cpu", "--batch-size", "3"]) == 0
    assert calls[-1]["device"] == "cpu" and calls[-1]["batch_size"] == 3
    assert main(["predict", "--run", str(tmp_path), "x.png"]) == 0
    assert calls[-1]["device"] == "auto" and calls[-1]["batch_size"] == 8  # documented default 8
    monkeypatch.setattr(predict_module, "predict", lambda run, inputs, **kwargs: ["x.png"])
    assert main(["predict", "--run", str(tmp_path), "x.png"]) == 1  # a failed input: exit 1, not 2


@pytest.fixture
def recorded_fit(monkeypatch):
    import realnet.engine.fit as fit_module

    requests = []

    def recording_fit(request):
        requests.append(request)
        return {"threshold": 0.5, "fit": {"validation": {}, "wall_s": 0.0}}

    monkeypatch.setattr(fit_module, "fit", recording_fit)
    return requests


def test_fit_passes_device_skip_bad_seed_steps_and_weights_to_the_fit(tmp_path, recorded_fit, capsys):
    weights = tmp_path / "w.safetensors"
    base = ["fit", "--data", str(tmp_path), "--category", "widget", "--preset", "tiny", "--out", str(tmp_path / "run")]
    assert main(base + ["--device", "cpu", "--skip-bad", "--seed", "123", "--steps", "7",
                        "--backbone-weights", str(weights), "--bf16"]) == 0
    request, = recorded_fit
    assert request.config.train.bf16 is True
    assert request.device == "cpu" and request.skip_bad is True and request.resume is False
    assert request.config.train.seed == 123 and request.config.train.steps == 7
    assert Path(request.config.backbone.weights) == weights.resolve()
    assert request.data_root == tmp_path and request.category == "widget" and request.dataset == "mvtec"
    recorded_fit.clear()
    assert main(base) == 0
    request, = recorded_fit
    assert request.device == "auto" and request.skip_bad is False and request.config.train.bf16 is False
    from realnet.config import load_config
    assert request.config.train.seed == load_config("tiny", None, []).train.seed


def test_fit_set_overrides_apply_in_order_and_the_config_file_under_them(tmp_path, recorded_fit, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  seed: 11\n")
    base = ["fit", "--data", str(tmp_path), "--category", "widget", "--preset", "tiny", "--out", str(tmp_path / "run")]
    assert main(base + ["--config", str(config)]) == 0
    assert recorded_fit[-1].config.train.seed == 11
    assert main(base + ["--config", str(config), "--set", "train.seed=12"]) == 0  # --set over the file
    assert recorded_fit[-1].config.train.seed == 12
    assert main(base + ["--config", str(config), "--seed", "14"]) == 0  # the flag over the file
    assert recorded_fit[-1].config.train.seed == 14
    n = len(recorded_fit)
    assert main(base + ["--seed", "14", "--set", "train.seed=12"]) == 2  # one setting given twice
    assert "--seed and --set train.seed" in capsys.readouterr().err and len(recorded_fit) == n


def test_fit_refuses_eval_every_without_select_on_test_and_resume_with_nothing_to_resume(tmp_path, recorded_fit,
                                                                                       capsys):
    base = ["fit", "--data", str(tmp_path), "--category", "widget", "--preset", "tiny", "--out", str(tmp_path / "run")]
    assert main(base + ["--eval-every", "5"]) == 2
    assert "--eval-every" in capsys.readouterr().err
    assert main(base + ["--resume"]) == 2
    captured = capsys.readouterr()
    assert "nothing to resume" in captured.err and captured.out == ""  # errors go to stderr only
    assert not recorded_fit
    assert main(base + ["--select-on-test", "--eval-every", "5"]) == 0
    assert recorded_fit[-1].select_on_test is True and recorded_fit[-1].eval_every == 5


def test_folder_options_reach_the_fit_and_are_refused_for_other_layouts(tmp_path, recorded_fit, capsys):
    base = ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "tiny"]
    assert main(base + ["--dataset", "folder", "--normal-dir", "n", "--split-seed", "4", "--test-ratio", "0.3"]) == 0
    request, = recorded_fit
    assert request.dataset == "folder" and request.category == "custom"
    assert request.folder_options == {"normal_dir": Path("n"), "seed": 4, "test_ratio": 0.3}
    assert main(base + ["--category", "widget", "--split-seed", "4"]) == 2
    assert "--split-seed only apply to --dataset folder" in capsys.readouterr().err
    assert main(base + ["--dataset", "btad", "--category", "01"]) == 0
    assert recorded_fit[-1].dataset == "btad"


def test_sdas_train_passes_every_option_to_its_request(tmp_path, monkeypatch, capsys):
    import realnet.diffusion.train as train_module

    requests = []
    monkeypatch.setattr(train_module, "train", lambda request: requests.append(request) or {"rank": 0})
    assert main(["sdas", "train", "--data", str(tmp_path), "--categories", "a,b", "--out", str(tmp_path / "m"),
                 "--dataset", "visa", "--preset", "tiny", "--image-size", "24", "--channels", "1", "--steps", "3",
                 "--batch", "5", "--lr", "0.002", "--grad-clip", "0.5", "--ema", "0.75", "--schedule", "cosine",
                 "--sample-every", "11", "--sample-count", "2", "--sample-steps", "4", "--save-every", "13",
                 "--log-every", "17", "--seed", "9", "--init", str(tmp_path / "init"), "--device", "cpu",
                 "--no-progress"]) == 0
    r, = requests
    assert (r.categories, r.dataset, r.preset, r.image_size, r.channels) == (["a", "b"], "visa", "tiny", 24, "1")
    assert (r.steps, r.batch_size, r.lr, r.grad_clip, r.ema_decay, r.schedule) == (3, 5, 0.002, 0.5, 0.75, "cosine")
    assert (r.sample_every, r.sample_count, r.sample_steps, r.save_every, r.log_every) == (11, 2, 4, 13, 17)
    assert (r.seed, r.init, r.device, r.progress, r.resume, r.bf16) == (9, tmp_path / "init", "cpu", False, False, False)
    requests.clear()
    assert main(["sdas", "train", "--data", str(tmp_path), "--categories", "a", "--out", str(tmp_path / "m")]) == 0
    r, = requests  # the defaults the help text states
    assert (r.preset, r.dataset, r.steps, r.batch_size, r.lr, r.grad_clip, r.ema_decay, r.schedule) == (
        "cpu", "mvtec", 2000, 8, 1e-4, 1.0, None, "linear")
    assert (r.sample_every, r.sample_count, r.sample_steps, r.save_every, r.log_every, r.seed) == (
        500, 8, 20, 500, 50, 0)


def test_export_passes_opset_and_dynamic_batch(tmp_path, monkeypatch, capsys):
    import realnet.export.onnx as onnx_module

    calls = []

    class Parity:
        n_images, image_source, batch_sizes = 1, "test images", [1]
        max_abs_map_difference = max_abs_score_difference = 0.0
        map_tolerance = score_tolerance = 1e-3

    class Report:
        path, files, parity = tmp_path / "m.onnx", [], Parity()
        metadata = {"threshold": "0.5", "image_size": "32"}

    def recording_export(run, out, *, opset, dynamic_batch):
        calls.append((opset, dynamic_batch))
        Report.opset, Report.dynamic_batch = opset, dynamic_batch
        return Report()

    monkeypatch.setattr(onnx_module, "export_run", recording_export)
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "m.onnx"), "--opset", "18",
                 "--batch-size-dynamic"]) == 0
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "m.onnx")]) == 0
    assert calls == [(18, True), (onnx_module.DEFAULT_OPSET, False)]


def test_bench_passes_device_and_roots_to_the_suite_run(tmp_path, monkeypatch, capsys):
    import realnet.bench.runner as runner

    requests = []

    def recording_run_suite(request, report):
        requests.append(request)
        return {}, {"plots": []}

    monkeypatch.setattr(runner, "run_suite", recording_run_suite)
    assert main(["bench", "--suite", "tiny", "--out", str(tmp_path), "--device", "cpu", "--data", str(tmp_path),
                 "--data-root", f"mvtec={tmp_path / 'm'}", "--only", "mvtec/*"]) == 0
    request, = requests
    assert request.device == "cpu" and request.data == tmp_path and request.only == ["mvtec/*"]
    assert request.data_roots == {"mvtec": tmp_path / "m"}


def test_sdas_generate_passes_the_ddim_variance_and_batch(tmp_path, monkeypatch, capsys):
    import realnet.diffusion.generate as generate_module

    requests = []
    monkeypatch.setattr(generate_module, "generate", lambda request: requests.append(request) or {})
    base = ["sdas", "generate", "--model", str(tmp_path), "--category", "a", "--count", "2", "--out", str(tmp_path / "o")]
    assert main(base + ["--sampler", "ddim", "--ddim-variance", "beta", "--batch", "3", "--seed", "5",
                        "--device", "cpu"]) == 0
    assert main(base) == 0
    assert [(r.ddim_variance, r.batch_size, r.seed, r.device) for r in requests] == [
        ("beta", 3, 5, "cpu"), ("learned", 8, 0, "auto")]


def test_a_data_root_key_given_twice_is_refused():
    """Regression: the last --data-root of a key silently won."""
    from realnet.cli.bench import parse_data_roots
    from realnet.errors import RealnetError

    assert parse_data_roots(["mvtec=/a", "visa=/b"]) == {"mvtec": Path("/a"), "visa": Path("/b")}
    with pytest.raises(RealnetError, match="--data-root gives 'mvtec' twice"):
        parse_data_roots(["mvtec=/a", "mvtec=/b"])
