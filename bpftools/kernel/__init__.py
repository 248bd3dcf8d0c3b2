"""Kernel facts, one home each: symbols, BTF, DWARF, tracefs, cgroups, netns, CPUs, headers, config, the log."""
