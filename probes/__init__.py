"""BPF C programs, one NAME.bpf.c and NAME.h per tool, shipped as package data."""
