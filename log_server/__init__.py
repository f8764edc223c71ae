"""The EMShield transparency log server (Flask app factory, storage, sequencer)."""
