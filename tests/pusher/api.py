"""The Python SDK's every HTTP API call against wspush (tests/pusher_clients.rs
runs it through scenarios.js api_python, which listens as user py1 on
presence-py). Usage: python3 api.py PORT"""
import sys

import pusher

port = int(sys.argv[1])
client = pusher.Pusher(app_id="1", key="app-key", secret="app-secret",
                       host="127.0.0.1", port=port, ssl=False)


def eq(a, b, what):
    if a != b:
        raise SystemExit(f"{what}: expected {b!r}, got {a!r}")


eq(client.trigger("presence-py", "from-python", {"n": 1}), {}, "trigger")
eq(client.trigger_batch([{"channel": "news", "name": "a", "data": "1"},
                         {"channel": "news", "name": "b", "data": {"x": 2}}]), {}, "trigger_batch")
eq(client.channels_info(prefix_filter="presence-", attributes=["user_count"]),
   {"channels": {"presence-py": {"user_count": 1}}}, "channels_info")
eq(client.channel_info("presence-py", ["user_count", "subscription_count"]),
   {"occupied": True, "subscription_count": 1, "user_count": 1}, "channel_info")
eq(client.users_info("presence-py"), {"users": [{"id": "py1"}]}, "users_info")
eq(client.send_to_user("py1", "py-note", {"hi": "py"}), {}, "send_to_user")
forged = pusher.Pusher(app_id="1", key="app-key", secret="wrong", host="127.0.0.1", port=port, ssl=False)
try:
    forged.trigger("news", "x", "y")
    raise SystemExit("a forged signature was accepted")
except pusher.errors.PusherBadAuth:
    pass
eq(client.terminate_user_connections("py1"), {}, "terminate_user_connections")
print("python sdk: every call ok")
