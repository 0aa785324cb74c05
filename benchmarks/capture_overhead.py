"""Sampling with the capture hooks on vs off, on the same model, prompts and seeds, interleaved.

The recording hooks stay installed (disarmed when off), as after a capture. Prints the per-run times and the
ratio hooks-on / hooks-off (median of the repeats).

    python -m benchmarks.capture_overhead [--model resources/testbed] [--prompts 16] [--steps 50] [--repeats 5]
"""

import argparse
import statistics
import time

from memprune.capture.hooks import FFNInputRecorder, scheduled_calls
from memprune.models import ffn_layers, load_pipeline
from memprune.sampling import SamplingConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resources/testbed")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", choices=("auto", "true", "false"), default="auto")
    args = ap.parse_args()
    pipe = load_pipeline(args.model, args.device, "auto")
    prompts = [f"velvet harbor and ember falcon by clara {i}" for i in range(args.prompts)]
    cfg = SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=args.prompts, compile=args.compile)
    layers = ffn_layers(pipe.unet)
    # installed once and left on the UNet, as capture does: "off" is the hooks disarmed
    rec = FFNInputRecorder.for_unet(pipe.unet, layers)
    calls = scheduled_calls(pipe.scheduler, args.steps)

    def run(hooks: bool) -> float:
        t = time.perf_counter()
        if hooks:
            with rec.recording(calls, 2 * len(prompts)):
                generate(pipe, prompts, [0] * len(prompts), cfg)
            rec.result()
        else:
            generate(pipe, prompts, [0] * len(prompts), cfg)
        return time.perf_counter() - t

    run(False), run(True)  # warm-up
    off, on = [], []
    for _ in range(args.repeats):
        off.append(run(False))
        on.append(run(True))
    print(f"model {args.model}, {len(layers)} ff.net.2 layers, {args.prompts} prompts x {args.steps} steps (CFG)")
    print("hooks off: " + " ".join(f"{x:.3f}" for x in off))
    print("hooks on:  " + " ".join(f"{x:.3f}" for x in on))
    print(f"ratio on/off (median): {statistics.median(on) / statistics.median(off):.3f}")


if __name__ == "__main__":
    main()
