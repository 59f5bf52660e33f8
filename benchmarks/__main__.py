"""`python -m benchmarks <name> [options]`: one module per question the docs answer (see docs/benchmarks.md)."""
import importlib
import sys

SUBCOMMANDS = ("dit", "step", "load", "vae", "pipeline", "serving", "cache", "preview", "plots")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        print(f"usage: python -m benchmarks {{{'|'.join(SUBCOMMANDS)}}} [options]", file=sys.stderr)
        return 2
    # Imported by name so that `plots` needs no GPU stack and each benchmark loads only what it uses.
    return importlib.import_module(f"benchmarks.{sys.argv.pop(1)}").main()


if __name__ == "__main__":
    sys.exit(main())
