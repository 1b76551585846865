"""The Wav2Lip lip engine: checkpoint-compatible models, safe loading, prepared avatars, fast CPU paths."""
