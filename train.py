#!/usr/bin/env python3
"""Train a translator: python train.py --preset demo --corpus multi30k --src en --tgt de."""

import sys

from translator.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
