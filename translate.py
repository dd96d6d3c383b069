#!/usr/bin/env python3
"""Translate: python translate.py --model models/NAME "A sentence." (or stdin, or --input F)."""

import sys

from translator.cli import translate_main

if __name__ == "__main__":
    sys.exit(translate_main())
