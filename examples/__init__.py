"""Worked examples of the --model plug-in contract."""
