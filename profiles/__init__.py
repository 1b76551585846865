"""Ready-made profiles shipped with anchorcast (``anchorcast run default``)."""
