"""Command functions of the `yololab` command line, registered in yololab.cli."""
