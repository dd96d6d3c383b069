"""python -m translator train ... | translate ... | evaluate ... | export ... | info"""

import sys

from translator.cli import train_main, translate_main
from translator.evaluate import main as evaluate_main
from translator.export import main as export_main
from translator.info import main as info_main

COMMANDS = {"train": train_main, "translate": translate_main, "evaluate": evaluate_main,
            "export": export_main, "info": info_main}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print("usage: python -m translator {train|translate|evaluate|export|info} [options]  "
              "(--help for each)", file=sys.stderr)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
