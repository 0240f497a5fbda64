"""Typed helpers for the common methods, shared by `Client` and `AsyncClient`: each
returns `self.call(...)`, so on the asyncio client it is awaited like `call` itself.
Results are the daemon's JSON objects (dicts) exactly as the protocol describes them."""

from __future__ import annotations

from typing import Any, Iterable, Optional


def _params(**kwargs: Any) -> dict:
    """Params without the optional ones left out (None)."""
    return {k: v for k, v in kwargs.items() if v is not None}


class Helpers:
    """Mixed into the clients; `call(method, params)` is theirs."""

    def call(self, method: str, params: Optional[dict] = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    # system
    def hello(self, client: Optional[str] = None) -> Any:
        """`system.hello`: the daemon's version and its method list."""
        return self.call("system.hello", _params(client=client, protocol=1))

    def status(self) -> Any:
        """`system.status`: version, account and relay connection."""
        return self.call("system.status")

    def schema(self) -> Any:
        """`system.schema`: the OpenRPC document of every method."""
        return self.call("system.schema")

    # account
    def register(
        self,
        user_id: str,
        email: str,
        nickname: str,
        password: str,
        device_name: Optional[str] = None,
    ) -> Any:
        """`account.register` → the account object. Without `device_name` the daemon
        names this device (its host name)."""
        return self.call(
            "account.register",
            _params(
                user_id=user_id,
                email=email,
                nickname=nickname,
                password=password,
                device_name=device_name,
            ),
        )

    def login(self, user_id: str, password: str, device_name: Optional[str] = None) -> Any:
        """`account.login` → the account object."""
        return self.call(
            "account.login",
            _params(user_id=user_id, password=password, device_name=device_name),
        )

    def logout(self) -> Any:
        """`account.logout`."""
        return self.call("account.logout")

    def account(self) -> Any:
        """`account.info` → the account object."""
        return self.call("account.info")

    # contacts
    def add_contact(self, user_id: str, alias: Optional[str] = None) -> Any:
        """`contacts.add` → the contact."""
        return self.call("contacts.add", _params(user_id=user_id, alias=alias))

    def contacts(self) -> list:
        """`contacts.list` → the contacts."""
        return _field(self.call("contacts.list"), "contacts")

    def remove_contact(self, user_id: str) -> Any:
        """`contacts.remove`."""
        return self.call("contacts.remove", {"user_id": user_id})

    def block(self, user_id: str) -> Any:
        """`contacts.block` → the contact."""
        return self.call("contacts.block", {"user_id": user_id})

    def unblock(self, user_id: str) -> Any:
        """`contacts.unblock` → the contact."""
        return self.call("contacts.unblock", {"user_id": user_id})

    def verify(self, user_id: str) -> Any:
        """`contacts.verify` → {safety_number, fingerprint, verified}."""
        return self.call("contacts.verify", {"user_id": user_id})

    # messages
    def send_text(
        self,
        to: str,
        text: str,
        reply_to: Optional[str] = None,
        client_msg_id: Optional[str] = None,
    ) -> Any:
        """`messages.send` to a conversation (`"user:ID"` or `"group:ID"`) → {message}.
        A retry with the same `client_msg_id` never sends twice."""
        return self.call(
            "messages.send",
            _params(to=to, text=text, reply_to=reply_to, client_msg_id=client_msg_id),
        )

    def messages(
        self, conversation: str, before: Optional[str] = None, limit: Optional[int] = None
    ) -> Any:
        """`messages.list` → {messages, has_more}, oldest first."""
        return self.call(
            "messages.list", _params(conversation=conversation, before=before, limit=limit)
        )

    def message(self, message_id: str) -> Any:
        """`messages.get` → {message}."""
        return self.call("messages.get", {"message_id": message_id})

    def mark_read(self, conversation: str, up_to: Optional[str] = None) -> Any:
        """`messages.mark_read` → {marked}."""
        return self.call("messages.mark_read", _params(conversation=conversation, up_to=up_to))

    def delete_message(self, message_id: str) -> Any:
        """`messages.delete` (on this device)."""
        return self.call("messages.delete", {"message_id": message_id})

    def conversations(self) -> list:
        """`conversations.list` → the conversations, most recent first."""
        return _field(self.call("conversations.list"), "conversations")

    # groups
    def create_group(self, name: str, members: Iterable[str]) -> Any:
        """`groups.create` → the group."""
        return self.call("groups.create", {"name": name, "members": list(members)})

    def groups(self) -> list:
        """`groups.list` → the groups."""
        return _field(self.call("groups.list"), "groups")

    # files
    def send_file(self, to: str, path: str, caption: Optional[str] = None) -> Any:
        """`files.send` of an absolute `path` → {message}."""
        return self.call("files.send", _params(to=to, path=path, caption=caption))

    def download(self, message_id: str, dest: Optional[str] = None) -> Any:
        """`files.download` → {path, size, sha256}."""
        return self.call("files.download", _params(message_id=message_id, dest=dest))

    # calls
    def start_call(self, to: str, media: str = "audio") -> Any:
        """`calls.start` → {call, media_socket}."""
        return self.call("calls.start", {"to": to, "media": media})

    def hangup(self, call_id: str) -> Any:
        """`calls.hangup`."""
        return self.call("calls.hangup", {"call_id": call_id})

    # settings and privacy
    def settings(self) -> Any:
        """`settings.get` → the settings."""
        return self.call("settings.get")

    def set_settings(self, **changes: Any) -> Any:
        """`settings.set` with any subset of the settings → the full settings."""
        return self.call("settings.set", changes)

    def device_info(self) -> Any:
        """`device.info`."""
        return self.call("device.info")

    def send_feedback(self, text: str, include_diagnostics: bool = False) -> Any:
        """`feedback.send` → {feedback_id}."""
        return self.call(
            "feedback.send", {"text": text, "include_diagnostics": include_diagnostics}
        )


def _field(result: Any, name: str) -> Any:
    """`result[name]`, awaiting first when `result` is a coroutine (the asyncio client)."""
    if hasattr(result, "__await__"):

        async def pick() -> Any:
            return (await result)[name]

        return pick()
    return result[name]
