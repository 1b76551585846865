"""WebRTC delivery of a studio-server session: encoded once per session (:mod:`.encoding`), sent to every WHEP
viewer (:mod:`.viewers`) by the session's ``webrtc`` output (:mod:`.output`)."""
