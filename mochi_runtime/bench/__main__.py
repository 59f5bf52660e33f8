import sys

SUBCOMMANDS = ("dit", "step", "load", "vae", "pipeline", "serving")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        print(f"usage: python -m mochi_runtime.bench {{{'|'.join(SUBCOMMANDS)}}} [options]", file=sys.stderr)
        return 2
    kind = sys.argv.pop(1)
    if kind == "dit":
        from .dit import main as run
    elif kind == "vae":
        from .vae import main as run
    elif kind == "pipeline":
        from .pipeline import main as run
    elif kind == "step":
        from .step import main as run
    elif kind == "serving":
        from .serving import main as run
    else:
        from .load import main as run
    return run()


if __name__ == "__main__":
    sys.exit(main())
