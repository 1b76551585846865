"""The studio server driving real OBS: run inside a private network namespace (obs-websocket listens on every
interface), as tests/test_server_obs.py does:

    unshare --net --pid --fork --kill-child --mount-proc bash -c "ip link set lo up && python -m tests.obs_serve_scenario OUT.json"

A session whose profile has an ``obs`` output (with ``browser_source = true``) is cued over the API; the scenario
records the overlay address and what OBS made of it (a Browser Source showing it where OBS has that kind of source;
Debian's build has none, and the server says so), how long OBS took to show the cued scene and the lower third,
and what OBS shows after the session is deleted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tests.obs_scenario import Observer, wait_until
from tests.obs_studio import ObsStudio, scenario_main
from tests.studio_server import SMALL_PROFILE, StudioServer

PASSWORD = "obs-test-password-1234"
PASSWORD_ENV = "ANCHORCAST_TEST_OBS_PASSWORD"


def run(work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with ObsStudio(work / "obs", password=PASSWORD) as obs:
        observer = Observer(obs)
        observer.req("CreateScene", {"sceneName": "Weather"})
        profile = SMALL_PROFILE + f"""
[outputs.obs]
use = "obs"
port = {obs.port}
password_env = "{PASSWORD_ENV}"
required = true
browser_source = true
"""
        server = StudioServer(work / "studio", "--no-session", profiles={"obs": profile}, env={PASSWORD_ENV: PASSWORD})
        with server, server.client() as client:
            session = client.create_session("obs")
            time.sleep(1.0)
            overlay = client._http.get(f"/v1/sessions/{session}/overlay").json()
            result["overlay_url"] = overlay["url"]
            result["overlay_page_status"] = client._http.get(overlay["path"]).status_code
            kinds = observer.req("GetInputKindList", {"unversioned": True}).get("inputKinds", [])
            result["obs_has_browser_source"] = "browser_source" in kinds
            if result["obs_has_browser_source"]:
                shown = observer.req("GetInputSettings", {"inputName": "anchorcast overlay"})["inputSettings"]
                result["browser_source_url"] = shown.get("url")
            result["scene_items"] = observer.scene_items("anchorcast")
            result["server_log"] = " ".join(line.strip() for line in server.lines)  # Rich wraps long lines
            result["scene_before"] = observer.program()
            sent = time.monotonic()
            client.cue(session, scene="Weather", lower_third="Anna Anchor, weather desk")
            shown = wait_until(lambda: observer.program() == "Weather", 10)
            result["cue_to_scene_ms"] = None if shown is None else round(1000 * (time.monotonic() - sent))
            third = wait_until(lambda: observer.text("anchorcast lower third") == "Anna Anchor, weather desk", 10)
            result["lower_third"] = observer.text("anchorcast lower third")
            result["lower_third_shown"] = third is not None
            said = client.say(session, "Here is the weather.")
            result["caption"] = None
            if wait_until(lambda: "weather" in (observer.text("anchorcast captions") or "").lower(), 20):
                result["caption"] = observer.text("anchorcast captions")
            result["utterance"] = said
            result["deleted"] = client.delete_session(session)
        observer.close()
    return result


def main() -> int:
    return scenario_main(run, "anchorcast-obs-serve-")

if __name__ == "__main__":
    sys.exit(main())
