//! Method dispatch: one module per namespace of the spec. Each method decodes its typed
//! params (`-32602` naming the field on error), does its work, and encodes its result.
//!
//! Names not in [`letstalk_ipc::methods::METHODS`] answer `-32601`; a test checks that
//! every name in that table is dispatched here.

mod account;
mod calls;
mod contacts;
mod device;
mod devices;
mod diagnostics;
mod events;
mod files;
mod groups;
mod messages;
mod privacy;
mod settings;
mod system;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use letstalk_ipc::RpcError;
use letstalk_ipc::jsonrpc::parse_params;

use crate::Daemon;
use crate::client::Connection;
use crate::store::StoreError;

pub(crate) use account::mark_logged_out;
pub(crate) use contacts::sync_privacy;
pub(crate) use devices::name_own_device;
pub use settings::Settings;

/// What a method produced.
#[derive(Debug)]
pub enum Reply {
    Value(Value),
    /// `events.subscribe`: the result, and the subscription to start right after the
    /// response is queued (so the response always precedes the replayed events).
    Subscribe {
        result: Value,
        start: SubscriptionStart,
    },
}

/// Where a new subscription starts.
#[derive(Debug)]
pub struct SubscriptionStart {
    /// Replay events with seq greater than this.
    pub cursor: u64,
    /// The newest event when the client subscribed: events up to here are a replay the
    /// client asked for and are paced by its reading; later ones are live and bounded.
    pub replay_until: u64,
    pub kinds: Option<Vec<String>>,
}

/// Runs `method`.
pub async fn call(
    daemon: &Arc<Daemon>,
    conn: &Arc<Connection>,
    method: &str,
    params: Value,
) -> Result<Reply, RpcError> {
    match method {
        "system.hello" => reply(system::hello(daemon, conn, parse(params)?)?),
        "system.schema" => reply(system::schema(parse(params)?)?),
        "system.status" => reply(system::status(daemon, parse(params)?).await?),
        "settings.get" => reply(settings::get(daemon, parse(params)?).await?),
        "settings.set" => reply(settings::set(daemon, parse(params)?).await?),
        "device.info" => reply(device::info(daemon, parse(params)?).await?),
        "diagnostics.preview" => reply(diagnostics::preview(daemon, parse(params)?).await?),
        "diagnostics.upload" => reply(diagnostics::upload(daemon, parse(params)?).await?),
        "feedback.send" => reply(diagnostics::feedback(daemon, parse(params)?).await?),
        "events.subscribe" => events::subscribe(daemon, parse(params)?).await,
        "events.unsubscribe" => reply(events::unsubscribe(conn, parse(params)?)?),
        "account.register" => reply(account::register(daemon, parse(params)?).await?),
        "account.login" => reply(account::login(daemon, parse(params)?).await?),
        "account.logout" => reply(account::logout(daemon, parse(params)?).await?),
        "account.info" => reply(account::info(daemon, parse(params)?).await?),
        "account.update" => reply(account::update(daemon, parse(params)?).await?),
        "account.change_password" => reply(account::change_password(daemon, parse(params)?).await?),
        "account.avatar" => reply(account::avatar(daemon, parse(params)?).await?),
        "contacts.add" => reply(contacts::add(daemon, parse(params)?).await?),
        "contacts.list" => reply(contacts::list(daemon, parse(params)?).await?),
        "contacts.remove" => reply(contacts::remove(daemon, parse(params)?).await?),
        "contacts.verify" => reply(contacts::verify(daemon, parse(params)?).await?),
        "contacts.mark_verified" => reply(contacts::mark_verified(daemon, parse(params)?).await?),
        "contacts.trust" => reply(contacts::trust(daemon, parse(params)?).await?),
        "contacts.block" => reply(contacts::block(daemon, parse(params)?).await?),
        "contacts.unblock" => reply(contacts::unblock(daemon, parse(params)?).await?),
        "groups.create" => reply(groups::create(daemon, parse(params)?).await?),
        "groups.list" => reply(groups::list(daemon, parse(params)?).await?),
        "groups.info" => reply(groups::info(daemon, parse(params)?).await?),
        "groups.add_members" => reply(groups::add_members(daemon, parse(params)?).await?),
        "groups.remove_members" => reply(groups::remove_members(daemon, parse(params)?).await?),
        "groups.rename" => reply(groups::rename(daemon, parse(params)?).await?),
        "groups.leave" => reply(groups::leave(daemon, parse(params)?).await?),
        "privacy.clear_history" => reply(privacy::clear_history(daemon, parse(params)?).await?),
        "privacy.restore_defaults" => {
            reply(privacy::restore_defaults(daemon, parse(params)?).await?)
        }
        "messages.send" => reply(messages::send(daemon, parse(params)?).await?),
        "messages.list" => reply(messages::list(daemon, parse(params)?).await?),
        "messages.get" => reply(messages::get(daemon, parse(params)?).await?),
        "messages.mark_read" => reply(messages::mark_read(daemon, parse(params)?).await?),
        "messages.delete" => reply(messages::delete(daemon, parse(params)?).await?),
        "messages.typing" => reply(messages::typing(daemon, parse(params)?).await?),
        "conversations.mute" => reply(messages::mute(daemon, parse(params)?).await?),
        "conversations.list" => reply(messages::conversations(daemon, parse(params)?).await?),
        "files.send" => reply(files::send(daemon, parse(params)?).await?),
        "files.download" => reply(files::download(daemon, parse(params)?).await?),
        "files.cancel" => reply(files::cancel(daemon, parse(params)?).await?),
        "calls.start" => reply(calls::start(daemon, parse(params)?).await?),
        "calls.accept" => reply(calls::accept(daemon, parse(params)?).await?),
        "calls.reject" => reply(calls::reject(daemon, parse(params)?).await?),
        "calls.hangup" => reply(calls::hangup(daemon, parse(params)?).await?),
        "calls.list" => reply(calls::list(daemon, parse(params)?).await?),
        "devices.link_start" => reply(devices::link_start(daemon, parse(params)?).await?),
        "account.link" => reply(devices::link(daemon, parse(params)?).await?),
        "devices.list" => reply(devices::list(daemon, parse(params)?).await?),
        "devices.remove" => reply(devices::remove(daemon, parse(params)?).await?),
        "devices.rename" => reply(devices::rename(daemon, parse(params)?).await?),
        other => Err(RpcError::method_not_found(other)),
    }
}

fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    parse_params(params)
}

fn reply<T: Serialize>(result: T) -> Result<Reply, RpcError> {
    serde_json::to_value(result)
        .map(Reply::Value)
        .map_err(|e| RpcError::internal(format!("encoding the result: {e}")))
}

/// The logged-in user, or `not_logged_in`.
async fn logged_in(daemon: &Daemon) -> Result<String, RpcError> {
    daemon.user().ok_or_else(|| {
        RpcError::new(
            letstalk_ipc::ErrorKind::NotLoggedIn,
            "no account on this device: register or log in first",
        )
    })
}

/// Store failures are internal errors: the client can do nothing but retry or report.
fn internal(e: StoreError) -> RpcError {
    tracing::error!(error = %e, "store error");
    RpcError::internal(format!("internal error: {e}"))
}
