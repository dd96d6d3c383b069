"""python -m translator train ... | python -m translator translate ..."""

import sys

from translator.cli import train_main, translate_main

COMMANDS = {"train": train_main, "translate": translate_main}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print("usage: python -m translator {train|translate} [options]  (--help for each)",
              file=sys.stderr)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
