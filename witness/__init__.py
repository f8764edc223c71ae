"""The C2SP tlog-witness: key files, the cosigning state machine, its HTTP front and CLI."""
