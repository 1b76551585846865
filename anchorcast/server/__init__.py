"""The studio server (``anchorcast serve``): sessions that stay on air, driven over HTTP and WebSocket.

- :mod:`~anchorcast.server.session`: one session, a profile's host and scheduler fed by a
  :class:`~anchorcast.server.control.ControlSource` that the API fills;
- :mod:`~anchorcast.server.studio`: the sessions of one server, their limits and the folders they may use;
- :mod:`~anchorcast.server.api`: the FastAPI application (``/v1``), with :mod:`~anchorcast.server.auth` (the
  bearer token) and :mod:`~anchorcast.server.models` (request and response bodies);
- :mod:`~anchorcast.server.fanout` and :mod:`~anchorcast.server.preview`: events and preview frames handed from
  the playout thread to WebSocket and HTTP clients;
- :mod:`~anchorcast.server.coefficients` and :mod:`~anchorcast.server.avatar3d`: each frame's expression
  coefficients (with its sound) over a WebSocket, and the ``/avatar3d`` page that renders a 3D head from them.

The API is a thin layer over the host's own methods (say, post audio, interrupt, post an event): nothing it does
is out of reach of a plugin or a test.
"""
