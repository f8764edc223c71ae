"""Public verifier and auditor: need only the public log, the suspect file and the backbone."""
