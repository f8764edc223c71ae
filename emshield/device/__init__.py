"""The device side: install a bundle after checking its proofs, mount the sealed core and run
prompts (`deploy`), and the `emshield device` commands (`cli`). Built on the sealing primitives of
`emshield.tee`, which know nothing of bundles or the log."""
