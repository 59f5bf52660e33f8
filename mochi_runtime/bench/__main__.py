import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("dit",):
        print("usage: python -m mochi_runtime.bench dit [options]", file=sys.stderr)
        return 2
    kind = sys.argv.pop(1)
    from .dit import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
