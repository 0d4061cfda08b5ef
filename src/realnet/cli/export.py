"""`realnet export`: write a finished run as a deployable ONNX model, checked against PyTorch."""

from __future__ import annotations

import argparse

from realnet.cli.common import file_to_write, path_argument, print_json_line

FORMATS = ("onnx",)


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="export a run for deployment (ONNX)",
        description="Exports the whole inference graph: image in [0, 1] (B, 3, S, S) -> anomaly map "
                    "(B, S, S) and image score (B,). The run's threshold is stored in the model's "
                    "metadata. onnxruntime is checked against PyTorch before the file is written.")
    export.add_argument("--run", type=path_argument, required=True, help="finished run folder")
    export.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default onnx)")
    export.add_argument("--out", type=file_to_write, required=True, help="model file to write, e.g. model.onnx")
    export.add_argument("--batch-size-dynamic", action="store_true",
                        help="accept any batch size (default: batch size 1)")
    export.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    export.set_defaults(func=run_export)


def run_export(args) -> int:
    from realnet.export.onnx import DEFAULT_OPSET, export_run

    report = export_run(args.run, args.out, opset=DEFAULT_OPSET if args.opset is None else args.opset,
                        dynamic_batch=args.batch_size_dynamic)
    parity = report.parity
    print(f"parity (onnxruntime CPU vs PyTorch, {parity.n_images} {parity.image_source}, batch sizes "
          f"{', '.join(map(str, parity.batch_sizes))}): max |map difference| {parity.max_abs_map_difference:.2e} "
          f"(tolerance {parity.map_tolerance:g}), max |score difference| {parity.max_abs_score_difference:.2e} "
          f"(tolerance {parity.score_tolerance:g})")
    print_json_line({
        "onnx": str(report.path),
        "files": [str(p) for p in report.files],
        "opset": report.opset,
        "dynamic_batch": report.dynamic_batch,
        "threshold": float(report.metadata["threshold"]),
        "image_size": int(report.metadata["image_size"]),
        "parity_max_abs_map_difference": parity.max_abs_map_difference,
        "parity_max_abs_score_difference": parity.max_abs_score_difference,
    })
    return 0
