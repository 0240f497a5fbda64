//! The modules of the daemon and of the relay form layers: each uses only modules on
//! layers below its own, so there is no import cycle. Adding a module means placing it in
//! [`DAEMON`] or [`RELAY`]. The checker is `letstalk_tests::layering`.

use std::path::Path;

use letstalk_tests::layering;

/// Top first: a module may use only modules on a lower line, never one on its own line
/// or above. The path of the data: the relay pushes an envelope to `inbox`, whose
/// `receive` opens it (`e2e`) and hands its content to the handler of its kind (`texts`,
/// `groups`, `files`, `calls`, `typing`); handlers take a transaction and the parsed
/// content and return `Effects`, queueing what goes back in the `outbox`, which `sender`
/// drains. `methods` (the IPC) call the domain modules, never the reverse.
const DAEMON: layering::Layers<'static> = &[
    ("composition root: Daemon built, tasks started", &[""]),
    ("relay adapter (the QUIC client)", &["relay::link"]),
    ("relay pushes applied", &["inbox"]),
    ("IPC socket", &["server"]),
    ("IPC methods", &["methods"]),
    ("receive (route by content kind) and send (drain the outbox)", &["inbox::receive", "sender"]),
    ("resume from suspend: the relay path probed", &["suspend"]),
    ("background tasks", &["erase", "prekeys", "netwatch"]),
    ("domain: calls", &["calls"]),
    ("domain: files, typing", &["files", "typing"]),
    ("domain: contacts and account settings kept in step on our devices", &["sync"]),
    ("domain: trust", &["trust"]),
    ("domain: groups", &["groups"]),
    ("domain: texts and receipts, file rows", &["texts", "files::rows"]),
    ("domain: contacts, the account state a linked device takes over", &["contacts", "linking"]),
    ("identity keys known", &["identities"]),
    ("daemon state", &["state"]),
    ("end-to-end sessions", &["e2e"]),
    ("outbox", &["outbox"]),
    ("records", &["account", "messages", "notify", "diagnostics", "device"]),
    ("shared state", &["events", "settings", "files::transfers", "calls::live"]),
    ("store", &["store"]),
    (
        "leaves",
        &[
            "bus", "client", "clock", "config", "content", "keys", "localid", "relay", "systemd",
            "validate", "version",
        ],
    ),
];

/// The relay, top first, along the path of a request: a connection (`conn`) reads a
/// frame and hands the request to the router (`handlers`), which sends it to the handler
/// of its area; the handlers act through the session (which connection acts for which
/// account), the shared `State` and the storage below it. The handlers of one area never
/// use another's. What crosses nodes (`cluster::follow` applying signals from the bus)
/// sits below the session that starts it and above what it changes.
const RELAY: layering::Layers<'static> = &[
    ("composition root: modules and the public API", &[""]),
    ("an in-process relay and nats-server processes for tests", &["testing"]),
    ("lifecycle: bind, accept, expiry timer, shutdown", &["server"]),
    ("the QUIC endpoint", &["endpoint"]),
    ("the TLS identity", &["tls"]),
    ("one connection: streams, frames", &["conn"]),
    ("request router", &["handlers"]),
    (
        "handlers per area",
        &[
            "handlers::account",
            "handlers::blobs",
            "handlers::calls",
            "handlers::devices",
            "handlers::directory",
            "handlers::messages",
            "handlers::presence",
            "handlers::reports",
        ],
    ),
    ("session: authentication made current, pushes, delivery, presence", &["session"]),
    ("cluster follower: bus signals applied to a device connected here", &["cluster::follow"]),
    ("call media forwarding", &["media"]),
    ("what every connection shares", &["state"]),
    (
        "per-node registries: devices, blobs, call routes; rate limits, password hashing",
        &["hub", "blobs", "calls", "ratelimit", "password"],
    ),
    ("the bus between nodes", &["cluster"]),
    ("refusals and errors", &["fail", "error"]),
    ("configuration", &["config"]),
    ("storage back ends", &["storage::nats", "storage::sqlite"]),
    ("the storage trait and its values", &["storage"]),
    ("leaves", &["clock", "close", "ctx", "userid"]),
];

#[test]
fn daemon_modules_are_layered() {
    check("daemon", DAEMON);
}

#[test]
fn relay_modules_are_layered() {
    check("relay", RELAY);
}

/// Reads `<crate>/src` of the workspace and fails on every problem against `layers`,
/// with the graph found.
fn check(krate: &str, layers: layering::Layers<'_>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate).join("src");
    let graph = layering::scan_dir(&src);
    let problems = layering::check(&graph, layers);
    let dump: String = graph.iter().map(|(m, to)| format!("  {m} -> {to:?}\n")).collect();
    assert!(problems.is_empty(), "{}\n\ngraph of {krate}:\n{dump}", problems.join("\n"));
}
