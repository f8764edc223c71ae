"""How the log's workers run under load: the bare append handler in front of Flask, the one
sequencer process every worker hands its entries to, and the collector settings of long-running
processes. The API's meaning lives outside this package; everything here may change for speed
without changing an answer."""
