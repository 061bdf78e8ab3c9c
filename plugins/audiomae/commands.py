"""The commands the AudioMAE plugin adds to ``ssl-bench``: ``bench`` and ``reconstruct``."""

from __future__ import annotations

import argparse

from ssl_bench.commands import Command


class BenchCommand(Command):
    help = "speed benchmark: frontend, pretraining step, data loading, memory"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--preset", default="tiny", help="model preset to time (tiny or base)")
        parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
        parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
        parser.add_argument("--out", "-o", default="bench.json", help="JSON file to write (default bench.json)")

    def run(self, args: argparse.Namespace) -> int:
        from .bench import run_bench

        run_bench(preset=args.preset, device=args.device, quick=args.quick, out=args.out)
        return 0


class ReconstructCommand(Command):
    help = "PNG of original / masked input / reconstruction for an audio file"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("audio", help="audio file (any rate; resampled)")
        parser.add_argument("--model", "-m", help="model name (default: the one an ssl-bench checkpoint names, "
                                                  "else audiomae)")
        parser.add_argument("--preset", "-p")
        parser.add_argument("--checkpoint", help="pretrained checkpoint with a decoder (official pretrained.pth or ours)")
        parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--mask-ratio", type=float, help="override the masker's ratio")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--output", "-o", default="reconstruction.png")

    def run(self, args: argparse.Namespace) -> int:
        from ssl_bench.config import ConfigError, parse_overrides
        from ssl_bench.model import create_model

        from .reconstruct import reconstruct

        sweeps = parse_overrides(args.overrides)
        if len(sweeps) != 1:
            raise ConfigError("reconstruct takes single values in --set, not comma lists")
        name = args.model
        if name is None and args.checkpoint is None:
            name = "audiomae"
        elif name is None:
            from ssl_bench.model import checkpoint_model

            name = checkpoint_model(args.checkpoint)[0] or "audiomae"  # an official file names no model
        model = create_model(name, preset=args.preset, checkpoint=args.checkpoint, **sweeps[0])
        out = reconstruct(model, args.audio, args.output, seed=args.seed, mask_ratio=args.mask_ratio)
        print(f"wrote {out}")
        return 0
