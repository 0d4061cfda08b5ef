"""`realnet fit | test | predict | demo`: the detector's commands."""

from __future__ import annotations

from pathlib import Path

from realnet.cli.common import (add_data_arguments, data_selection, finite_float, non_negative_int, path_argument,
                                 path_text, positive_int, print_json_line,
                                 seed_int)

def register(subparsers) -> None:
    fit = subparsers.add_parser("fit", help="train a detector from normal images")
    add_data_arguments(fit)
    fit.add_argument("--out", type=path_argument, required=True, help="run folder to create")
    fit.add_argument("--preset", default="paper", help="paper | cpu | tiny (default paper)")
    fit.add_argument("--config", type=path_argument, help="YAML file overriding the preset")
    fit.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config value, e.g. --set train.steps=500 (repeatable)")
    fit.add_argument("--dtd", type=path_text, help="DTD folder for the dtd source (e.g. DATA/dtd); every image below it is a texture")
    fit.add_argument("--sia", type=path_text, help="SDAS image bank (folder holding <category>/ images)")
    fit.add_argument("--source", action="extend", nargs="+", metavar="NAME[:WEIGHT]",
                     help="synthesis source(s): dtd, sia, cutpaste, nsa, shade, crack, feature_noise, e.g. "
                          "--source dtd shade:0.5 (replaces the preset's)")
    fit.add_argument("--backbone-weights", type=path_text, help="local backbone weights file (.safetensors/.pth)")
    fit.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    fit.add_argument("--steps", type=positive_int, help="number of training steps (overrides epochs)")
    fit.add_argument("--seed", type=seed_int, help="training seed (default: the preset's train.seed)")
    fit.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    fit.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    fit.add_argument("--select-on-test", action="store_true",
                     help="paper protocol: evaluate on the TEST split every --eval-every steps and keep "
                          "the best (test-set model selection; labelled in metrics.json)")
    fit.add_argument("--eval-every", type=positive_int, metavar="STEPS",
                     help="with --select-on-test: steps between test evaluations (default: every 5 epochs, "
                          "as the authors' code, for a schedule in train.epochs; train.checkpoint_every for "
                          "train.steps)")
    fit.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or a CPU with native bf16)")
    fit.set_defaults(func=run_fit)

    test = subparsers.add_parser("test", help="evaluate a run on its test split")
    test.add_argument("--run", type=path_argument, required=True, help="a finished fit's folder")
    add_data_arguments(test, default_dataset=None)
    test.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    test.add_argument("--batch-size", type=positive_int, help="default: the run's train.batch_size")
    test.add_argument("--panels", type=non_negative_int, default=6, help="panels per case kind (worst/best; default 6)")
    test.add_argument("--skip-bad", action="store_true",
                      help="skip unreadable test images (named on stderr and in metrics.json) instead of stopping")
    test.set_defaults(func=run_test)

    predict = subparsers.add_parser("predict", help="score images or folders")
    predict.add_argument("--run", type=path_argument, required=True, help="a finished fit's folder")
    predict.add_argument("inputs", nargs="+", type=path_text, metavar="IMAGE_OR_DIR")
    predict.add_argument("--save-maps", "--out", dest="save_maps", type=path_argument, metavar="DIR",
                         help="write anomaly maps as PNGs into DIR")
    predict.add_argument("--overwrite", action="store_true",
                         help="with --save-maps: use DIR although it holds files, deleting the maps an earlier "
                              "predict wrote there (without it, a DIR that holds files is refused)")
    predict.add_argument("--map-size", choices=("input", "run"), default=None,
                         help="saved maps (and overlays) at each input's own size (default) or at the run's "
                              "square image size")
    predict.add_argument("--overlays", action="store_true",
                         help="with --save-maps: also write the heatmap over each image (<name>_overlay.png)")
    predict.add_argument("--threshold", type=finite_float,
                         help="score above which a part is anomalous (default: the run's threshold, calibrated "
                              "on held-out normal images; heatmaps keep the run's scale)")
    predict.add_argument("--batch-size", type=positive_int, default=8,
                         help="images scored together (default 8; the next batch is read meanwhile)")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    predict.set_defaults(func=run_predict)

    demo = subparsers.add_parser("demo", help="offline end-to-end run on an embedded demo dataset")
    demo.add_argument("--out", type=path_argument, default=Path("demo_run"),
                      help="folder for the demo's data and run (default ./demo_run)")
    demo.add_argument("--category", default="brick", help="brick | gravel | grass")
    demo.add_argument("--steps", type=positive_int, help="training steps (default: the demo's budget)")
    demo.set_defaults(func=run_demo)


def parse_sources(specs: list[str]) -> dict[str, float]:
    from realnet.errors import RealnetError

    sources = {}
    for spec in specs:
        name, _, weight = spec.partition(":")
        if name in sources:
            raise RealnetError(f"--source {name} is given twice; give each source once")
        try:
            sources[name] = float(weight) if weight else 1.0
        except ValueError:
            raise RealnetError(f"--source {spec!r}: weight must be a number") from None
        if not sources[name] > 0:
            raise RealnetError(f"--source {spec!r}: a weight must be > 0 (leave the source out instead)")
    return sources


# the setting each of fit's flags gives: the same setting given with --set too, one value would be dropped
FLAG_SETTINGS = {"steps": "train.steps", "seed": "train.seed", "dtd": "synthesis.dtd_root",
                 "sia": "synthesis.sia_root", "source": "synthesis.sources", "backbone_weights": "backbone.weights"}


def refuse_settings_given_twice(args, config) -> None:
    """One line when a flag and a --set override give the same setting (a --set of one entry of
    synthesis.sources included): without it the flag silently won."""
    from realnet.config import parse_override, setting_covers
    from realnet.errors import RealnetError

    overridden = [parse_override(override)[0] for override in args.overrides]
    for flag, setting in FLAG_SETTINGS.items():
        given = [key for key in overridden if setting_covers(setting, key)]
        if getattr(args, flag) is not None and given:
            raise RealnetError(f"--{flag.replace('_', '-')} and --set {given[0]} both set {setting}; give one of them")
    if args.bf16 and "train.bf16" in overridden and not config.train.bf16:
        raise RealnetError("--bf16 and --set train.bf16=false contradict each other; give one of them")


def config_from_args(args):
    from realnet.config import load_config, refuse_lost_overrides, validate_config
    from realnet.model.backbone import KEYWORDS

    refuse_lost_overrides(args.overrides)
    config = load_config(args.preset, args.config, args.overrides)
    refuse_settings_given_twice(args, config)
    if args.steps is not None:
        config.train.steps = args.steps
    if args.seed is not None:
        config.train.seed = args.seed
    if args.dtd:
        config.synthesis.dtd_root = args.dtd
    if args.sia:
        config.synthesis.sia_root = args.sia
    if args.source:
        config.synthesis.sources = parse_sources(args.source)
    if args.backbone_weights:
        config.backbone.weights = args.backbone_weights
    # files and folders (from a flag, --set or --config; relative to the working directory) are recorded
    # absolute, so that test, predict and export find the weights file, and a resume from another folder
    # reads the same image banks (or is refused) instead of others of the same relative name
    if config.backbone.weights not in KEYWORDS:
        config.backbone.weights = str(Path(config.backbone.weights).resolve())
    synthesis = config.synthesis
    synthesis.dtd_root, synthesis.sia_root = (None if root is None else str(Path(root).resolve())
                                              for root in (synthesis.dtd_root, synthesis.sia_root))
    if args.bf16:
        config.train.bf16 = True
    refuse_unread_settings(args, config)
    validate_config(config)
    return config


def refuse_unread_settings(args, config) -> None:
    """A texture folder no drawn source reads, and epochs under a step budget, would be recorded in
    model.json as if they had shaped the run, while it trained without them."""
    from realnet.config import load_config
    from realnet.errors import RealnetError

    for source, flag in (("sia", "--sia"), ("dtd", "--dtd")):  # the flags have set the roots by now
        if getattr(config.synthesis, f"{source}_root") is not None and config.synthesis.sources.get(source, 0) <= 0:
            how = flag if getattr(args, source) else f"synthesis.{source}_root"
            raise RealnetError(f"{how} is read by the {source} source only, which this run does not draw (sources: "
                               f"{', '.join(name for name, w in config.synthesis.sources.items() if w > 0)}); add "
                               f"--source {source} (with the others it should draw) or leave {how} out")
    train = config.train
    if train.steps is not None and train.epochs != load_config(args.preset).train.epochs:
        raise RealnetError(f"train.epochs={train.epochs} has no effect while train.steps={train.steps} sets the "
                           "budget; add --set train.steps=null to train by epochs")


def run_fit(args) -> int:
    from realnet.engine import checkpoint
    from realnet.engine.distributed import launched_rank
    from realnet.engine.fit import FitRequest, fit
    from realnet.errors import RealnetError

    root, category, dataset, folder_options = data_selection(args)
    if args.eval_every is not None and not args.select_on_test:
        raise RealnetError("--eval-every only applies with --select-on-test")
    if args.resume and not any((Path(args.out) / name).exists()  # the weights alone: killed while saving them
                               for name in (checkpoint.RESUME_STATE, checkpoint.MODEL_META, checkpoint.MODEL_WEIGHTS)):
        raise RealnetError(f"{args.out}: nothing to resume (no {checkpoint.RESUME_STATE}); leave out --resume to "
                           "start a run there")
    meta = fit(FitRequest(
        config=config_from_args(args), data_root=root, category=category, out=args.out,
        dataset=dataset, resume=args.resume, device=args.device, skip_bad=args.skip_bad,
        select_on_test=args.select_on_test, eval_every=args.eval_every, folder_options=folder_options,
    ))
    summary = {"run": str(args.out), "threshold": meta["threshold"], **meta["fit"]["validation"],
               "wall_s": meta["fit"]["wall_s"]}
    if launched_rank() == 0:  # under torchrun, one summary for the one run rank 0 wrote
        print_json_line(summary)
    return 0


def run_test(args) -> int:
    from realnet.engine.evaluate import evaluate

    root, category, dataset, folder_options = data_selection(args, required=False)
    metrics = evaluate(args.run, data_root=root, category=category, dataset=dataset,
                       folder_options=folder_options or None, device=args.device, batch_size=args.batch_size, panels=args.panels,
                       skip_bad=args.skip_bad)
    shown = {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "n_images", "n_anomalous")}
    print_json_line(shown)
    print(f"metrics: {args.run / 'metrics.json'}  panels: {args.run / 'panels'}")
    return 0


def run_predict(args) -> int:
    from realnet.engine.predict import predict

    failures = predict(args.run, args.inputs, save_maps=args.save_maps, map_size=args.map_size,
                       overlays=args.overlays, overwrite=args.overwrite, batch_size=args.batch_size,
                       device=args.device, threshold=args.threshold)
    return 1 if failures else 0


def run_demo(args) -> int:
    from realnet.engine.demo import run_demo as demo

    return demo(args.out, args.category, steps=args.steps)
