"""absl entry points: each module defines its flags and a `main`; `run()` is the console script."""
