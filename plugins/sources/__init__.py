"""Sources: what the anchor is to say (a script, an audio file, a microphone)."""
