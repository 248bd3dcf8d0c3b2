"""The live tools, by name: each module turns raw BPF events into typed records and renders them."""
