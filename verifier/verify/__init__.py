"""`emshield-verify`: load a suspect (`suspect`), check what the log says (`log_view`) or what a
bundle proves (`offline`), decide (`decide`), and print (`cli`). spec/verify.md."""
