"""anchorcast's built-in plugins, installed under the import name ``anchorcast_plugins``.

They register through the same ``anchorcast`` entry-point group third-party plugins use.
"""
