"""The embedded synthetic world: seeded scenes written in the official dataset formats."""
