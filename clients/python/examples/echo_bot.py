#!/usr/bin/env python3
"""An echo bot: answers every incoming text with the same text, resuming after daemon
restarts from the last event it handled (kept in a small state file), so a message is
never answered twice or missed.

    python3 examples/echo_bot.py [--socket PATH] [--state FILE]
"""

import argparse
import json
import os

from letstalk import Client, LetstalkError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="the daemon's socket (default: the CLI's rules)")
    parser.add_argument("--state", default="echo-bot.json", help="where the last seq is kept")
    parser.add_argument("--idle-exit", type=float, help="stop after this many idle seconds")
    args = parser.parse_args()

    with Client(args.socket, client_name="letstalk-echo-bot/0.1") as client:
        me = client.status()["user_id"]
        if os.path.exists(args.state):
            with open(args.state) as f:
                since = json.load(f)["seq"]
        else:
            # First run: answer what arrives from now on, not the whole history.
            since = client.call("events.subscribe", {})["last_seq"]
            save(args.state, since)
        for event in client.events(
            since=since, kinds=["message.received"], idle_timeout=args.idle_exit
        ):
            message = event["message"]
            if message["direction"] == "in" and message["kind"] == "text":
                try:
                    client.send_text(
                        message["conversation"],
                        message["text"],
                        reply_to=message["message_id"],
                        # The same event always makes the same answer: a replay after a
                        # crash between sending and saving the seq does not send twice.
                        client_msg_id=f"echo-{message['message_id']}",
                    )
                except LetstalkError as e:
                    print(f"{me}: cannot answer {message['message_id']}: {e}")
            save(args.state, event["seq"])


def save(path: str, seq: int) -> None:
    """Keeps the last handled seq (written aside, then renamed: never half a file)."""
    with open(path + ".tmp", "w") as f:
        json.dump({"seq": seq}, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
