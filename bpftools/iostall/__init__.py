"""Incident 1's wing: the I/O-stall program (slab failures, mempool sleeps, slow writebacks), its plans
and decoders, and the face its four commands share."""
