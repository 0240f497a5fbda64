//! The protocol's contract, error path by error path, against a real daemon.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use letstalk_tests::{World, error_of};

use crate::Raw;

#[tokio::test]
async fn every_error_path_of_the_spec() {
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();
    let mut raw = Raw::connect(d.socket()).await;

    // Parse error.
    let r = raw.ask("{not json").await;
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(-32700), &Value::Null));
    // Invalid requests, id echoed where there is one.
    let r = raw.ask(r#"{"jsonrpc":"1.0","id":1,"method":"system.status"}"#).await;
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(-32600), &json!(1)));
    let r = raw.ask(r#"{"jsonrpc":"2.0","id":"a","method":7}"#).await;
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(-32600), &json!("a")));
    let r = raw.ask(r#""just a string""#).await;
    assert_eq!(r["error"]["code"].as_i64(), Some(-32600));
    // Unknown method.
    let r = raw.ask(r#"{"jsonrpc":"2.0","id":2,"method":"no.such"}"#).await;
    assert_eq!(r["error"]["code"].as_i64(), Some(-32601));
    // Wrong types name the field, also nested ones.
    for (params, field) in [
        (json!({"typing": "yes"}), "typing"),
        (json!({"auto_download": {"wifi": 1}}), "auto_download.wifi"),
        (json!({"keepalive_s": {"cellular": 2}}), "keepalive_s.cellular"),
    ] {
        let line = json!({"jsonrpc": "2.0", "id": 3, "method": "settings.set", "params": params});
        let r = raw.ask(&line.to_string()).await;
        assert_eq!(r["error"]["code"].as_i64(), Some(-32602), "{r}");
        assert_eq!(r["error"]["data"]["field"], field, "{r}");
    }
    let r = raw
        .ask(r#"{"jsonrpc":"2.0","id":4,"method":"events.subscribe","params":{"since":"x"}}"#)
        .await;
    assert_eq!(r["error"]["data"]["field"], "since");
    let r = raw.ask(r#"{"jsonrpc":"2.0","id":5,"method":"settings.get","params":[1,2]}"#).await;
    assert_eq!(r["error"]["code"].as_i64(), Some(-32602));
    // Unknown fields are ignored.
    let r = raw
        .ask(r#"{"jsonrpc":"2.0","id":6,"method":"settings.get","params":{"whatever":1}}"#)
        .await;
    assert!(r["result"].is_object(), "{r}");

    // An over-long line, then a good request on the same connection.
    let mut long = vec![b'x'; (1 << 20) + 10];
    long.push(b'\n');
    raw.send(&long).await;
    let r = raw.line().await;
    assert_eq!(r["error"]["code"].as_i64(), Some(-32600));
    assert_eq!(r["error"]["data"]["kind"], "too_large");
    let r = raw.ask(r#"{"jsonrpc":"2.0","id":7,"method":"system.status"}"#).await;
    assert_eq!(r["id"], 7);
    assert!(r["result"]["version"].is_string());
}

#[tokio::test]
async fn batches() {
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();
    let mut raw = Raw::connect(d.socket()).await;
    let r = raw
        .ask(
            r#"[{"jsonrpc":"2.0","id":1,"method":"system.status"},
                {"jsonrpc":"2.0","method":"settings.get"},
                {"jsonrpc":"2.0","id":2,"method":"nope"},
                5,
                {"jsonrpc":"2.0","id":3,"method":"settings.set","params":{"typing":false}}]"#
                .replace('\n', " ")
                .as_str(),
        )
        .await;
    let items = r.as_array().expect("a batch answer is an array");
    // The notification gets no entry; the invalid element does.
    assert_eq!(items.len(), 4, "{r}");
    let by_id = |id: Value| items.iter().find(|i| i["id"] == id).cloned().unwrap();
    assert!(by_id(json!(1))["result"]["version"].is_string());
    assert_eq!(by_id(json!(2))["error"]["code"], -32601);
    assert_eq!(by_id(json!(3))["result"]["typing"], false);
    assert!(items.iter().any(|i| i["id"].is_null() && i["error"]["code"] == -32600));
    // An empty batch is invalid.
    let r = raw.ask("[]").await;
    assert_eq!(r["error"]["code"], -32600);
    // A batch of notifications gets no answer at all: the next answer is for id 9.
    raw.send(b"[{\"jsonrpc\":\"2.0\",\"method\":\"settings.get\"}]\n").await;
    let r = raw.ask(r#"{"jsonrpc":"2.0","id":9,"method":"system.status"}"#).await;
    assert_eq!(r["id"], 9);
}

#[tokio::test]
async fn many_requests_in_flight_and_many_clients() {
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();
    let mut raw = Raw::connect(d.socket()).await;
    let mut lines = String::new();
    for id in 0..200 {
        lines.push_str(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"system.status\"}}\n"
        ));
    }
    raw.send(lines.as_bytes()).await;
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let r = raw.line().await;
        assert!(r["result"].is_object());
        seen.insert(r["id"].as_u64().unwrap());
    }
    assert_eq!(seen, (0..200).collect());

    let clients: Vec<_> = (0..32).map(|_| d.client()).collect();
    let clients: Vec<_> =
        futures::future::join_all(clients).await.into_iter().map(Result::unwrap).collect();
    let calls = clients.iter().map(|c| c.call_value("settings.get", json!({})));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap()["read_receipts"], true);
    }
}

#[tokio::test]
async fn hello_schema_and_method_list_agree() {
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();
    let c = d.client().await.unwrap();
    let hello =
        c.call_value("system.hello", json!({"client": "tests/1.0", "protocol": 1})).await.unwrap();
    assert_eq!(hello["protocol"], 1);
    assert!(hello["daemon"].as_str().unwrap().starts_with("letstalkd "));
    let methods: Vec<String> = serde_json::from_value(hello["methods"].clone()).unwrap();
    assert_eq!(methods, letstalk_ipc::methods::method_names());

    let schema = c.call_value("system.schema", json!({})).await.unwrap();
    assert_eq!(schema["openrpc"], "1.3.2");
    let described: Vec<&str> =
        schema["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(described, methods);

    // The spec is read, not empty: the methods every version of it has had are there.
    let spec = spec_methods();
    for m in ["system.hello", "messages.send", "privacy.restore_defaults", "events.unsubscribe"] {
        assert!(spec.iter().any(|s| s == m), "{m} not found in the spec: the parser is broken");
    }
    // Every implemented method is dispatched (never -32601)...
    for m in &methods {
        if let Err(e) = c.call_value(m, json!({})).await {
            match e {
                letstalk_ipc::ClientError::Rpc(rpc) => assert_ne!(rpc.code, -32601, "{m}"),
                other => panic!("{m}: {other}"),
            }
        }
    }
    // ...and the spec's methods that are not implemented yet say so with -32601.
    for m in spec.iter().filter(|m| !methods.contains(m)) {
        let (code, _, _) = error_of(d.call(m, json!({})).await);
        assert_eq!(code, -32601, "{m}");
    }
    // A protocol version we do not speak is refused, naming the field.
    let (code, _, field) = error_of(d.call("system.hello", json!({"protocol": 2})).await);
    assert_eq!((code, field.as_deref()), (-32602, Some("protocol")));

    // The frontend's identity shows in device.info while it is connected.
    let info = c.call_value("device.info", json!({})).await.unwrap();
    assert!(info["frontends"].as_array().unwrap().iter().any(|f| f["client"] == "tests/1.0"));
    assert_eq!(info["device_id"].as_str().unwrap().len(), 32);
    assert!(
        ["wifi", "cellular", "ethernet", "none", "unknown"]
            .contains(&info["network"]["type"].as_str().unwrap())
    );
}

/// Every method named in the public spec (`shared/spec/ipc.md`, beside the checkout), read
/// from the spec itself so a method the spec gains is checked the day it appears: a
/// method is a backticked `namespace.name` followed by its params (` {`) or by ` /` (two
/// methods sharing one description), in a list item or its continuation lines; event
/// kinds (`event \`device.linked\` {..}`, the "Kinds" paragraph) are not methods.
fn spec_methods() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/spec/ipc.md");
    let spec = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}: shared/ must sit beside the checkout"));
    let mut methods = Vec::new();
    let mut in_item = false;
    for line in spec.lines() {
        in_item = line.starts_with("- `") || (in_item && line.starts_with("  "));
        if !in_item {
            continue;
        }
        let parts: Vec<&str> = line.split('`').collect();
        // Odd indexes are inside backticks.
        for i in (1..parts.len()).step_by(2) {
            let (before, token, after) = (parts[i - 1], parts[i], parts.get(i + 1).unwrap_or(&""));
            let is_name = token.split_once('.').is_some_and(|(ns, name)| {
                [ns, name]
                    .iter()
                    .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            });
            if is_name
                && (after.starts_with(" {") || after.starts_with(" /"))
                && !before.ends_with("event ")
                && !methods.iter().any(|m| m == token)
            {
                methods.push(token.to_owned());
            }
        }
    }
    methods
}

#[tokio::test]
async fn settings_round_trip_and_status_without_relay() {
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();
    let s = d.call("settings.get", json!({})).await.unwrap();
    assert_eq!(
        s,
        json!({"block_all": false, "read_receipts": true, "typing": true, "share_presence": true,
               "diagnostics_upload": false,
               "auto_download": {"wifi": true, "cellular": false}, "keepalive_s": {"wifi": 25, "cellular": 20}})
    );
    let s = d
        .call(
            "settings.set",
            json!({"auto_download": {"cellular": true}, "keepalive_s": {"wifi": 45}}),
        )
        .await
        .unwrap();
    assert_eq!(s["auto_download"], json!({"wifi": true, "cellular": true}));
    assert_eq!(s["keepalive_s"], json!({"wifi": 45, "cellular": 20}));
    // A bad value changes nothing, not even the valid part of the same call.
    let (code, _, field) = error_of(
        d.call("settings.set", json!({"typing": false, "keepalive_s": {"wifi": 1}})).await,
    );
    assert_eq!((code, field.as_deref()), (-32602, Some("keepalive_s.wifi")));
    assert_eq!(d.call("settings.get", json!({})).await.unwrap()["typing"], true);

    let st = d.call("system.status", json!({})).await.unwrap();
    assert_eq!(st["relay"]["state"], "disabled");
    assert_eq!(st["user_id"], Value::Null);
    assert_eq!(st["queued_out"], 0);
}
