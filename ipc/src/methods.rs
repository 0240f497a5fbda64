//! The method table: every method this version implements, with its param and result
//! types, and the OpenRPC document generated from them for `system.schema`.
//!
//! The daemon dispatches exactly these names (a test checks it); any other method of the
//! spec answers `-32601` until its issue lands and its entry is added here.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::types::*;

/// One method: its name, a one-line summary and its types.
#[derive(Debug, Clone, Copy)]
pub struct MethodSpec {
    pub name: &'static str,
    pub summary: &'static str,
    params: fn(&mut SchemaGenerator) -> Schema,
    result: fn(&mut SchemaGenerator) -> Schema,
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

macro_rules! methods {
    ($($name:literal ($params:ty) -> $result:ty : $summary:literal;)*) => {
        /// Every implemented method, in the order of the spec.
        pub const METHODS: &[MethodSpec] = &[
            $(MethodSpec {
                name: $name,
                summary: $summary,
                params: schema_of::<$params>,
                result: schema_of::<$result>,
            },)*
        ];
    };
}

methods! {
    "system.hello" (HelloParams) -> HelloResult: "Introduces the client; returns the daemon's version and methods.";
    "system.schema" (Empty) -> Value: "This OpenRPC document.";
    "system.status" (Empty) -> StatusResult: "Account, relay link, network and queue at a glance.";
    "account.register" (RegisterParams) -> Account: "Creates an account on the relay and logs this device in.";
    "account.login" (LoginParams) -> Account: "Logs this device in; the account moves here from any other device.";
    "account.logout" (Empty) -> Empty: "Removes this device's credentials; history stays.";
    "account.info" (Empty) -> Account: "This device's account.";
    "account.update" (UpdateParams) -> Account: "Changes nickname, email or avatar (null removes it); contacts see it.";
    "account.change_password" (ChangePasswordParams) -> Empty: "Changes the password on the relay.";
    "account.avatar" (AvatarParams) -> AvatarResult: "Writes one's own or a user's avatar to a file.";
    "contacts.add" (ContactsAddParams) -> Contact: "Adds a contact; not_found if no such account exists.";
    "contacts.list" (Empty) -> ContactsList: "Every contact with presence.";
    "contacts.remove" (UserIdParams) -> Empty: "Removes a contact.";
    "contacts.verify" (UserIdParams) -> VerifyResult: "The safety number and the contact's identity fingerprint.";
    "contacts.mark_verified" (MarkVerifiedParams) -> Contact: "Records that the safety number was compared.";
    "contacts.trust" (TrustParams) -> Contact: "Accepts the contact's current identity key (as verified with the current safety number).";
    "contacts.block" (UserIdParams) -> Contact: "Blocks a user: the relay refuses their messages and calls and hides your presence from them.";
    "contacts.unblock" (UserIdParams) -> Contact: "Unblocks a user.";
    "groups.create" (GroupsCreateParams) -> Group: "Creates a group; the creator is its admin.";
    "groups.list" (Empty) -> GroupsList: "The groups this user is a member of.";
    "groups.info" (GroupIdParams) -> Group: "One group.";
    "groups.add_members" (GroupMembersParams) -> Group: "Adds members (admins only).";
    "groups.remove_members" (GroupMembersParams) -> Group: "Removes members (admins only); they cannot read what follows.";
    "groups.rename" (GroupRenameParams) -> Group: "Renames a group (admins only).";
    "groups.leave" (GroupIdParams) -> Empty: "Leaves a group; its history stays on this device.";
    "messages.send" (SendParams) -> MessageResult: "Sends a text; durable on return, queued while offline.";
    "messages.list" (ListParams) -> ListResult: "A page of a conversation, oldest first.";
    "messages.get" (MessageIdParams) -> MessageResult: "One message.";
    "messages.mark_read" (MarkReadParams) -> MarkedResult: "Marks incoming messages read (and sends read receipts).";
    "messages.delete" (MessageIdParams) -> Empty: "Deletes a message on this device.";
    "messages.typing" (TypingParams) -> TypingResult: "Tells the conversation's other members that this user is typing (with settings.typing on).";
    "conversations.list" (Empty) -> ConversationsList: "Conversations, most recent first, with unread counts.";
    "conversations.mute" (MuteParams) -> Empty: "Mutes or unmutes a conversation: a muted one raises no notification events.";
    "files.send" (FilesSendParams) -> MessageResult: "Encrypts a file on the device and streams it to the relay; file.progress events follow.";
    "files.download" (FilesDownloadParams) -> FilesDownloadResult: "Downloads (resuming) and checks a received file, and writes it out.";
    "files.cancel" (MessageIdParams) -> Empty: "Cancels a file transfer, on both sides.";
    "calls.start" (CallsStartParams) -> CallSocketResult: "Calls a user; returns the call and its media socket.";
    "calls.accept" (CallIdParams) -> CallSocketResult: "Answers a ringing incoming call; returns its media socket.";
    "calls.reject" (CallIdParams) -> CallResult: "Declines a ringing incoming call.";
    "calls.hangup" (CallIdParams) -> CallResult: "Ends a call (or stops ringing one), on both sides.";
    "calls.list" (CallsListParams) -> CallsList: "The call log, most recent first.";
    "devices.link_start" (Empty) -> LinkStartResult: "A one-time code (valid 10 minutes) that links another device to this account.";
    "account.link" (LinkParams) -> Account: "Joins the account that made the code; the code's key carries its identity key, contacts, groups and settings here.";
    "devices.list" (Empty) -> DevicesList: "The account's devices.";
    "devices.remove" (DeviceIdParams) -> Empty: "Removes one of the account's devices (it is logged out).";
    "devices.rename" (DeviceRenameParams) -> LinkedDevice: "Renames one of the account's devices (any of them); every device lists the new name.";
    "settings.get" (Empty) -> Settings: "The current settings.";
    "settings.set" (SettingsPatch) -> Settings: "Changes any subset of the settings; returns them all.";
    "privacy.clear_history" (ConfirmParams) -> ClearHistoryResult: "Deletes every unsent and every unread message, for good.";
    "privacy.restore_defaults" (ConfirmParams) -> RestoreDefaultsResult: "Deletes the account (also on the relay), contacts, groups, messages, keys and settings; the daemon is then as freshly installed.";
    "device.info" (Empty) -> DeviceInfo: "Hardware, OS, network, device ID and connected frontends.";
    "diagnostics.preview" (Empty) -> PreviewResult: "Exactly what diagnostics.upload would send; never message content.";
    "diagnostics.upload" (Empty) -> UploadResult: "Sends the diagnostics report; confirm_required unless settings.diagnostics_upload is on.";
    "feedback.send" (FeedbackParams) -> FeedbackResult: "Sends in-app feedback (queued while offline).";
    "events.subscribe" (SubscribeParams) -> SubscribeResult: "Starts event notifications on this connection, replaying from `since`.";
    "events.unsubscribe" (Empty) -> Empty: "Stops event notifications on this connection.";
}

/// The names of every implemented method.
pub fn method_names() -> Vec<String> {
    METHODS.iter().map(|m| m.name.to_owned()).collect()
}

/// Whether `name` is an implemented method.
pub fn is_method(name: &str) -> bool {
    METHODS.iter().any(|m| m.name == name)
}

/// The OpenRPC document describing every method, param, result and event.
pub fn openrpc(daemon_version: &str) -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();

    let mut methods = Vec::new();
    for m in METHODS {
        let params_ref = (m.params)(&mut generator).to_value();
        let result = (m.result)(&mut generator).to_value();
        methods.push((m, params_ref, result));
    }
    let event = generator.subschema_for::<Event>().to_value();
    let definitions = generator.take_definitions(true);

    let methods: Vec<Value> = methods
        .into_iter()
        .map(|(m, params_ref, result)| {
            json!({
                "name": m.name,
                "summary": m.summary,
                "paramStructure": "by-name",
                "params": params_of(&params_ref, &definitions),
                "result": {"name": "result", "schema": result},
            })
        })
        .collect();

    json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "letstalkd local IPC",
            "version": format!("{}", crate::PROTOCOL_VERSION),
            "description": format!("letstalkd {daemon_version}: JSON-RPC 2.0 lines over a Unix socket. Events arrive as notifications with method `event`; their params are described by x-event."),
        },
        "methods": methods,
        "components": {"schemas": definitions},
        "x-event": event,
    })
}

/// Turns a params struct's schema into OpenRPC content descriptors, one per field.
fn params_of(params_ref: &Value, definitions: &Map<String, Value>) -> Vec<Value> {
    let schema = params_ref
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| definitions.get(name))
        .unwrap_or(params_ref);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    json!({"name": name, "required": required.contains(&name.as_str()), "schema": schema})
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A short fingerprint of the protocol definitions (method table and every schema),
/// recorded in `PROTOCOL.md` so that the two cannot drift apart unnoticed.
pub fn definitions_fingerprint() -> String {
    let doc = openrpc("");
    let mut canonical = doc.clone();
    if let Some(info) = canonical.get_mut("info").and_then(Value::as_object_mut) {
        info.remove("description");
    }
    // FNV-1a 64: stable, dependency-free, and enough to notice a change.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_describes_every_method_with_named_params() {
        let doc = openrpc("0.0.0");
        let methods = doc["methods"].as_array().unwrap();
        assert_eq!(methods.len(), METHODS.len());
        let hello = methods.iter().find(|m| m["name"] == "system.hello").unwrap();
        let names: Vec<&str> = hello["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["client", "protocol"]);
        let sub = methods.iter().find(|m| m["name"] == "settings.set").unwrap();
        assert!(sub["params"].as_array().unwrap().iter().any(|p| p["name"] == "keepalive_s"));
        assert!(doc["components"]["schemas"].get("Settings").is_some());
        assert!(doc["x-event"].is_object());
    }

    /// The tidy check of style.md: `PROTOCOL.md` records the fingerprint of the
    /// definitions, so a change to the protocol types must come with a change to the doc.
    #[test]
    fn protocol_md_is_in_step_with_the_definitions() {
        let doc = include_str!("../PROTOCOL.md");
        let fingerprint = definitions_fingerprint();
        assert!(
            doc.contains(&format!("definitions fingerprint: `{fingerprint}`")),
            "ipc/PROTOCOL.md is out of date: update it for the changed methods or events and set its \
             line `definitions fingerprint: `{fingerprint}``"
        );
        for m in METHODS {
            assert!(
                doc.contains(&format!("`{}`", m.name)),
                "PROTOCOL.md does not document {}",
                m.name
            );
        }
    }
}
