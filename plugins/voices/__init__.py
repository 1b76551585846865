"""Voices: text to speech with timings (piper, eSpeak NG)."""
