"""Run a script as N local MultiWorkerMirroredStrategy workers on 127.0.0.1 (one TF_CONFIG each).

Usage:
  python scripts/launch_workers.py --num_workers=2 --log_dir=/tmp/workers -- scripts/train.py \
      --strategy=multi_worker --dataset=synthetic --epochs=1 --batch_size=32

Exits with the largest worker exit code; if one worker fails, the others are stopped.
argparse rather than absl, unlike the other scripts: everything after the first
positional argument is the workers' command, and absl already owns `--log_dir`.
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Run a command as N local MultiWorkerMirroredStrategy workers on 127.0.0.1.",
        usage="%(prog)s [--num_workers N] [--log_dir DIR] -- script.py [flags...]",
    )
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=None, help="seconds; kill all after")
    parser.add_argument("--log_dir", default=None, help="write worker_i.log files here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if command[0].endswith(".py"):
        command = [sys.executable] + command
    from mbakt_tf.cli.quiet_start import start_tensorflow

    start_tensorflow()
    from mbakt_tf import distribute  # after parsing: --help and usage errors come before TensorFlow

    codes = distribute.launch_local_workers(command, args.num_workers, host=args.host,
                                            timeout=args.timeout, log_dir=args.log_dir)
    for index, code in enumerate(codes):
        print(f"worker {index}: exit code {code}", file=sys.stderr)
    return max((abs(c) for c in codes), default=0)


if __name__ == "__main__":
    sys.exit(main())
