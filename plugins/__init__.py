"""anchorcast's built-in plugins, installed under the import name ``anchorcast_plugins``.

Arranged by the journey of a frame: ``sources`` -> ``voices`` -> ``engines`` -> ``outputs``. They register through
the same ``anchorcast`` entry-point group third-party plugins use.
"""
