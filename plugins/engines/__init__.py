"""Lip engines: audio to the anchor's frames (viseme, Wav2Lip with its training), and the face helpers they share."""
