"""Command-line options shared by the subcommands of several stages (model loading, sampling)."""

from __future__ import annotations


def sampling_config(args):
    from memprune.sampling import SamplingConfig

    return SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
                          height=getattr(args, "height", None), width=getattr(args, "width", None),
                          compile=getattr(args, "compile", "auto"))


def add_model_args(p, sampling: bool = True) -> None:
    p.add_argument("--model", required=True, help="diffusers pipeline directory or hub id")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--scheduler", default=None, help="diffusers scheduler class name (default: the model's)")
    if sampling:  # through `sampling_config`: `sampling.generate` compiles the UNet
        p.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                       help="torch.compile the UNet (channels_last); auto: on CUDA only")
        p.add_argument("--steps", type=int, default=50)
        p.add_argument("--guidance", type=float, default=7.5)
        p.add_argument("--batch-size", type=int, default=8)
        add_size_args(p)


def add_size_args(p) -> None:
    """--height / --width of a stage that generates or probes (config `sampling` through `Plan.image_size`)."""
    for side in ("height", "width"):
        p.add_argument(f"--{side}", type=int, default=None,
                       help=f"image {side} in pixels (default: the model's resolution)")
