"""Outputs: where the frames and their audio go (files, RTMP, virtual camera, OBS control, captions)."""
