"""Pure unit tests: the core and the manifest, with no event loop and no processes."""
