"""The Python client against real daemons: the method table matches the daemon's schema,
errors carry their kind, events resume across a daemon restart without a gap or a
repeat, the asyncio client keeps many calls in flight, and the echo bot answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import letstalk
from letstalk import AsyncClient, Client, InvalidParams, MethodNotFound, NotFound

from conftest import eventually

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_method_table_is_the_daemons(pair):
    alice, _ = pair
    with alice.client() as c:
        described = [m["name"] for m in c.schema()["methods"]]
        assert list(letstalk.METHODS) == described
        assert c.hello("pytest/1")["methods"] == described


def test_socket_path_rules(monkeypatch):
    monkeypatch.delenv("LETSTALK_SOCKET", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert letstalk.default_socket_path() == "/run/letstalk/letstalkd.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert letstalk.default_socket_path() == "/run/user/1000/letstalk/letstalkd.sock"
    monkeypatch.setenv("LETSTALK_SOCKET", "/tmp/x.sock")
    assert letstalk.default_socket_path() == "/tmp/x.sock"
    assert letstalk.default_socket_path("/given.sock") == "/given.sock"


def test_errors_carry_the_protocol_kind(pair):
    alice, _ = pair
    with alice.client() as c:
        with pytest.raises(NotFound) as e:
            c.message("0190a000-0000-7000-8000-000000000000")
        assert (e.value.code, e.value.kind) == (-32002, "not_found")
        with pytest.raises(InvalidParams) as e:
            c.call("messages.send", {"to": "user:bob"})
        assert e.value.field == "text"
        with pytest.raises(MethodNotFound):
            c.call("no.such_method")
        # The connection stays usable after errors.
        assert c.status()["user_id"] == "alice"


def texts_in(events):
    return [e["message"]["text"] for e in events]


def test_events_resume_after_a_daemon_restart_without_gaps_or_repeats(pair):
    alice, bob = pair
    with alice.client() as a, bob.client() as b:
        received = []
        stream = b.events(kinds=["message.received"], idle_timeout=30)
        a.send_text("user:bob", "one")
        received.append(next(stream))
        # bob's daemon goes away; alice keeps sending; it comes back a little later
        # while the iterator is trying to reconnect.
        bob.stop()
        a.send_text("user:bob", "two")
        a.send_text("user:bob", "three")
        restart = threading.Timer(0.5, bob.start)
        restart.start()
        received.append(next(stream))
        received.append(next(stream))
        restart.join()
        assert texts_in(received) == ["one", "two", "three"]
        seqs = [e["seq"] for e in received]
        assert seqs == sorted(set(seqs))
        # A fresh iterator from `since` replays exactly what followed.
        again = list(b.events(since=seqs[0], kinds=["message.received"], idle_timeout=1))
        assert texts_in(again) == ["two", "three"]


def test_the_asyncio_client_keeps_many_calls_in_flight_and_streams_events(pair):
    alice, bob = pair

    async def run():
        a = await AsyncClient.connect(alice.socket)
        b = await AsyncClient.connect(bob.socket, client_name="pytest-async/1")
        try:
            statuses = await asyncio.gather(*(a.status() for _ in range(50)))
            assert {s["user_id"] for s in statuses} == {"alice"}
            with pytest.raises(NotFound):
                await a.message("0190a000-0000-7000-8000-000000000000")
            got = []

            async def listen():
                async for event in b.events(kinds=["message.received"], idle_timeout=30):
                    got.append(event["message"]["text"])
                    if len(got) == 3:
                        return

            listener = asyncio.create_task(listen())
            await asyncio.sleep(0.2)
            for text in ["a", "b", "c"]:
                await a.send_text("user:bob", text)
            await asyncio.wait_for(listener, 30)
            assert got == ["a", "b", "c"]
            assert len(await b.conversations()) == 1
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(run())


def test_the_echo_bot_answers_each_message_once(pair, world):
    alice, bob = pair
    env = dict(os.environ, PYTHONPATH=str(Path(letstalk.__file__).resolve().parents[1]))
    state = world / "bot-state.json"
    bot = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo_bot.py"), "--socket", bob.socket,
         "--state", str(state), "--idle-exit", "20"],
        env=env,
    )
    try:
        eventually("the bot subscribed", state.exists)
        with alice.client() as a:
            a.send_text("user:bob", "ping")
            a.send_text("user:bob", "pong?")

            def answers():
                msgs = a.messages("user:bob")["messages"]
                got = [m["text"] for m in msgs if m["direction"] == "in"]
                return got if len(got) >= 2 else None

            assert eventually("the bot's answers", answers) == ["ping", "pong?"]
    finally:
        bot.terminate()
        bot.wait(10)
    # Run again from its saved state: nothing is answered twice.
    again = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_bot.py"), "--socket", bob.socket,
         "--state", str(state), "--idle-exit", "1"],
        env=env, timeout=60,
    )
    assert again.returncode == 0
    with alice.client() as a:
        got = [m["text"] for m in a.messages("user:bob")["messages"] if m["direction"] == "in"]
    assert got == ["ping", "pong?"]
