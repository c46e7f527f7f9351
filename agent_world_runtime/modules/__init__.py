"""WebAssembly modules: manifests, the metered sandbox and the module registry."""
