"""Pure analyses: events in, results out. No I/O, no bcc, click or rich."""
