//! Envelopes coming in, each applied exactly once: [`receive`] records the relay delivery
//! ID (a redelivery after a crash is recognised and only acknowledged), opens the
//! envelope (`e2e`), stores the sessions that opened it, and routes its content to the
//! handler of its kind (texts, receipts, groups, files, calls, typing, retries), all in
//! one transaction.

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::SessionRecord;

use crate::account::Account;
use crate::content::Content;
use crate::events::Effects;
use crate::store::StoreError;
use crate::{calls, contacts, e2e, files, groups, outbox, settings, texts, trust, typing};

/// What [`receive`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Already applied earlier: acknowledge it and do nothing else.
    Duplicate,
    /// Applied; the last event seq written and whether the outbox got a new row.
    Applied { last_event: Option<u64>, queued: bool },
    /// A sync from another device of ours changed the block or contact list or a
    /// privacy setting: applied, and the relay must hear this device's lists again.
    AppliedPrivacy { last_event: Option<u64> },
    /// Could not be decrypted or understood: acknowledged and dropped (keeping it would
    /// block the mailbox forever), logged without content.
    Dropped(String),
    /// Could not be decrypted: acknowledged, and a retry receipt asking the sender to
    /// send it again under a fresh session is queued.
    Retry(String),
}

/// One delivery: the sending account, its device, the relay id and the body.
pub type Delivery<'a> = (&'a str, u32, &'a str, &'a [u8]);

/// Applies one envelope from `sender`'s device `device` that the relay delivered as
/// `relay_id`, on a device whose own relay device id is not known (as in tests of one
/// device per account: see [`receive_many`]).
pub fn receive(
    conn: &mut Connection,
    me: &Account,
    sender: &str,
    device: u32,
    relay_id: &str,
    bytes: &[u8],
    now: i64,
) -> Result<Received, StoreError> {
    let me = Me { account: me, device: None };
    Ok(receive_many(conn, me, &[(sender, device, relay_id, bytes)], now)?.remove(0))
}

/// Who receives: the account, and this device's id on the relay when known (it settles
/// which of two devices that took one call at the same instant keeps it).
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub account: &'a Account,
    pub device: Option<u32>,
}

/// [`receive`] for several deliveries in one transaction (one disk sync for all), each
/// applied in its own savepoint, in order.
pub fn receive_many(
    conn: &mut Connection,
    me: Me<'_>,
    items: &[Delivery<'_>],
    now: i64,
) -> Result<Vec<Received>, StoreError> {
    let own_device = me.device;
    let me = me.account;
    let mut tx = conn.transaction()?;
    let mut out = Vec::with_capacity(items.len());
    for (sender, device, relay_id, bytes) in items {
        let sp = tx.savepoint()?;
        out.push(receive_in(&sp, me, own_device, sender, *device, relay_id, bytes, now)?);
        sp.commit()?;
    }
    // What the batch queued for its senders that is due now (a retry receipt, a group
    // key) is encrypted before the one commit, so the sender has no transaction of its
    // own to sync before it hands it to the relay. A delivery receipt alone waits
    // (`outbox::RECEIPT_DELAY_MS`), unsealed, for the receipts of the messages after it.
    let mut senders: Vec<&str> = items.iter().map(|(s, _, _, _)| *s).collect();
    senders.sort_unstable();
    senders.dedup();
    for sender in senders {
        if outbox::unsealed_due(&tx, sender, now)? && !trust::is_untrusted(&tx, sender)? {
            e2e::seal_queued(&tx, sender, e2e::SEAL_MAX, &mut rand_core::OsRng, now)?;
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Applies one delivery inside the caller's transaction; everything it writes is meant
/// to be committed, also when the delivery is dropped (so it is not applied twice).
#[expect(clippy::too_many_arguments, reason = "one delivery's parts, as received")]
fn receive_in(
    tx: &Connection,
    me: &Account,
    own_device: Option<u32>,
    sender: &str,
    device: u32,
    relay_id: &str,
    bytes: &[u8],
    now: i64,
) -> Result<Received, StoreError> {
    let seen: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM received WHERE sender = ?1 AND relay_id = ?2")?
        .query_row(params![sender, relay_id], |r| r.get(0))
        .optional()?;
    if seen.is_some() {
        return Ok(Received::Duplicate);
    }
    tx.prepare_cached("INSERT INTO received (sender, relay_id, at) VALUES (?1, ?2, ?3)")?
        .execute(params![sender, relay_id, now])?;

    if let Some((gid, message)) = groups::parse_frame(bytes) {
        if contacts::is_blocked(tx, sender)? || settings::blocks_everyone(tx)? {
            return Ok(Received::Dropped("refused: blocked".into()));
        }
        return Ok(match groups::on_message(tx, sender, device, relay_id, gid, message, now)? {
            Ok(e) => Received::Applied { last_event: e.last_event, queued: e.queued },
            Err(why) => Received::Dropped(why),
        });
    }

    // Decrypt on a copy of the sessions; the stored ones change only if this succeeds.
    match e2e::open(tx, me, sender, device, bytes)? {
        e2e::Opened::Plain(record, plaintext) => {
            tracing::debug!(target: crate::clock::PATH, relay = %relay_id, "decrypted");
            apply_plaintext(tx, me, own_device, sender, device, *record, plaintext, now)
        }
        e2e::Opened::Duplicate => Ok(Received::Dropped("duplicate message".into())),
        e2e::Opened::Undecryptable(why) => undecryptable(tx, sender, device, relay_id, why, now),
    }
}

/// A pairwise envelope from `sender` that no session opens: unless the sender is
/// blocked, a retry receipt naming it goes back (under our current session with the
/// sender, or a new one), and the sender re-sends it under a fresh session.
fn undecryptable(
    tx: &Connection,
    sender: &str,
    device: u32,
    relay_id: &str,
    why: String,
    now: i64,
) -> Result<Received, StoreError> {
    if contacts::is_blocked(tx, sender)? || settings::blocks_everyone(tx)? {
        return Ok(Received::Dropped(why));
    }
    // The receipt goes out under a fresh session (a prekey message the sender can
    // always open), so two devices whose sessions both broke never trade retry
    // receipts neither can read; late messages under the old one still open.
    e2e::archive_session(tx, sender, device, now)?;
    outbox::enqueue(tx, sender, None, &Content::Retry { ids: vec![relay_id.to_owned()] }, now)?;
    Ok(Received::Retry(why))
}

/// Stores the sessions that opened a delivery and applies its plaintext.
#[expect(clippy::too_many_arguments, reason = "one delivery's parts, as opened")]
fn apply_plaintext(
    tx: &Connection,
    me: &Account,
    own_device: Option<u32>,
    sender: &str,
    device: u32,
    record: SessionRecord,
    plaintext: Vec<u8>,
    now: i64,
) -> Result<Received, StoreError> {
    let plaintext = zeroize::Zeroizing::new(plaintext);
    if sender == me.user_id {
        return from_own_device(tx, me, own_device, device, record, &plaintext, now);
    }
    e2e::save_record(tx, sender, device, &record, now)?;
    let conversation = format!("user:{sender}");
    let queued = false;
    let seen = match record.remote_identity() {
        Some(identity) => trust::observe(tx, sender, identity, now)?,
        None => trust::Observed::default(),
    };
    let last_event = seen.event;

    if contacts::is_blocked(tx, sender)? {
        // Read (the session stays in step) and discarded.
        return Ok(Received::Applied { last_event, queued });
    }
    let me_id = me.user_id.as_str();
    let mut effects = Effects { last_event, queued };
    let outcome = match Content::decode(&plaintext) {
        // "Block everyone" refuses messages; receipts, keys and group news still apply.
        Some(Content::Text { .. }) if settings::blocks_everyone(tx)? => Ok(Effects::default()),
        Some(text @ Content::Text { .. }) => {
            Ok(texts::apply_text(tx, sender, &conversation, text, now)?)
        }
        Some(Content::Receipt { state, ids }) => {
            Ok(texts::apply_receipt(tx, sender, state, &ids, now)?)
        }
        // The record's current session is the one that opened this message.
        Some(update @ Content::Group { .. }) => match record.remote_identity() {
            Some(key) => groups::on_update(tx, me_id, sender, key, &update, now)?,
            None => Err("group update without a session".into()),
        },
        // "Block everyone" refuses files as it refuses texts (calls: `calls::receive`).
        Some(Content::File { .. }) if settings::blocks_everyone(tx)? => Ok(Effects::default()),
        Some(c @ (Content::File { .. } | Content::FileCancel { .. })) => {
            files::receive(tx, sender, &conversation, &c, now)?
        }
        Some(
            c @ (Content::CallOffer { .. } | Content::CallAnswer { .. } | Content::CallEnd { .. }),
        ) => Ok(calls::receive(tx, sender, &c, now)?),
        Some(Content::Typing { gid, at }) => {
            Ok(typing::receive(tx, sender, gid.as_deref(), at, now)?)
        }
        Some(Content::GroupLeave { gid, grant }) => {
            Ok(groups::on_leave(tx, me_id, sender, &gid, grant.as_ref(), now)?)
        }
        // A new key never becomes a group's sender-key source before the user accepts
        // it: the sender key waits and is applied by `contacts.trust`.
        Some(Content::SenderKey { .. }) if seen.untrusted => {
            trust::hold(tx, sender, device, &plaintext, now)?;
            Ok(Effects::default())
        }
        // The key of the device whose session carried it, never of another.
        Some(Content::SenderKey { gid, key }) => {
            groups::on_sender_key(tx, me_id, sender, device, &gid, &key, now)?
        }
        Some(Content::SenderKeyRequest { gid, ids }) => {
            groups::on_key_request(tx, me_id, sender, &gid, &ids, now)?
        }
        // "Block everyone" refuses group messages (see above) in this form too.
        Some(Content::GroupResend { .. }) if settings::blocks_everyone(tx)? => {
            Ok(Effects::default())
        }
        Some(Content::GroupResend { gid, content }) => {
            groups::on_resend(tx, sender, &gid, *content, now)?
        }
        Some(Content::Retry { ids }) => Ok(e2e::resend(tx, sender, device, &ids, now)?),
        // Only our own devices tell us what we sent or read.
        Some(
            Content::Sent { .. }
            | Content::SentFile { .. }
            | Content::ReadSync { .. }
            | Content::ContactSync { .. }
            | Content::SettingsSync { .. },
        ) => Err("another account's sent copy, read sync or account sync".to_owned()),
        None => Err("unknown content".to_owned()),
    };
    match outcome {
        Ok(e) => {
            effects.merge(e);
            Ok(Received::Applied { last_event: effects.last_event, queued: effects.queued })
        }
        Err(why) => Ok(Received::Dropped(why)),
    }
}

/// A message from another device of our own account. It must hold the account's
/// identity key (a device the relay made up holds none), and it only tells what that
/// device sent (a text, or a file with its key) or read, a file it sent and cancelled, a group change it made or its leaving a group, that it took or
/// declined a call, a contact or account setting it changed (or asks for a retry):
/// anything else is dropped.
fn from_own_device(
    tx: &Connection,
    me: &Account,
    own_device: Option<u32>,
    device: u32,
    record: SessionRecord,
    plaintext: &[u8],
    now: i64,
) -> Result<Received, StoreError> {
    if record.remote_identity() != Some(&me.identity.public()) {
        return Ok(Received::Dropped("our own account under another identity key".into()));
    }
    e2e::save_record(tx, &me.user_id, device, &record, now)?;
    let outcome = match Content::decode(plaintext) {
        Some(sent @ (Content::Sent { .. } | Content::SentFile { .. }))
            if matches!(&sent, Content::Sent { to, .. } | Content::SentFile { to, .. }
                if to.starts_with("group:")) =>
        {
            groups::apply_sent(tx, &me.user_id, sent, now)?
        }
        Some(sent @ Content::Sent { .. }) => texts::apply_sent(tx, &me.user_id, sent, now)?,
        Some(Content::SentFile { to, file }) => {
            files::apply_sent(tx, &me.user_id, &to, &file, now)?
        }
        // A file to self sent on another of our devices: ours, already sent, fetched
        // from the relay like any sent copy.
        Some(file @ Content::File { .. }) => {
            let to = format!("user:{}", me.user_id);
            files::show_sent(tx, &me.user_id, &to, &file, now)?
        }
        // A file it sent and then cancelled: our copy stops fetching it.
        Some(Content::FileCancel { id }) => Ok(files::cancel_sent(tx, &id, now)?),
        // A note to self written on another of our devices: ours, already sent.
        Some(Content::Text { id, at, text, reply_to }) => {
            let to = format!("user:{}", me.user_id);
            let sent = Content::Sent { to, id, at, text, reply_to };
            texts::apply_sent(tx, &me.user_id, sent, now)?
        }
        Some(Content::ReadSync { conversation, ids }) => {
            Ok(texts::apply_read_sync(tx, &conversation, &ids, now)?)
        }
        // A group change made on another of our devices (as its admin), or our leaving
        // there: checked as from any admin (our identity key is the account's).
        Some(update @ Content::Group { .. }) => {
            let ours = me.identity.public();
            groups::on_update(tx, &me.user_id, &me.user_id, &ours, &update, now)?
        }
        Some(Content::GroupLeave { gid, grant }) => {
            Ok(groups::on_leave(tx, &me.user_id, &me.user_id, &gid, grant.as_ref(), now)?)
        }
        Some(Content::Retry { ids }) => Ok(e2e::resend(tx, &me.user_id, device, &ids, now)?),
        Some(c @ (Content::ContactSync { .. } | Content::SettingsSync { .. })) => {
            return Ok(match crate::sync::apply(tx, &me.user_id, &c, now)? {
                Ok(a) if a.privacy_changed => {
                    Received::AppliedPrivacy { last_event: a.effects.last_event }
                }
                Ok(a) => {
                    Received::Applied { last_event: a.effects.last_event, queued: a.effects.queued }
                }
                Err(why) => Received::Dropped(why),
            });
        }
        // Another of our devices took or declined a call that rings here too.
        Some(c @ (Content::CallAnswer { .. } | Content::CallEnd { .. })) => {
            Ok(calls::receive_own(tx, &c, device, own_device, now)?)
        }
        Some(_) => Err("not something our own devices tell each other".to_owned()),
        None => Err("unknown content".to_owned()),
    };
    Ok(match outcome {
        Ok(e) => Received::Applied { last_event: e.last_event, queued: e.queued },
        Err(why) => Received::Dropped(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account;
    use crate::account::generate_prekeys;
    use crate::contacts;
    use crate::e2e::{DeviceBundle, load_record};
    use crate::messages::{self, NewMessage};
    use crate::outbox::{Outgoing, Prepared};
    use crate::outbox::{enqueue, sent};
    use crate::sender::prepare_next;
    use crate::settings::Settings;
    use letstalk_crypto::PreKeyBundle;
    use letstalk_ipc::types::{Direction, MessageKind, MessageState};
    use rand_core::OsRng;

    struct Device {
        _dir: tempfile::TempDir,
        store: crate::store::Store,
        account: Account,
        prekeys: Vec<letstalk_crypto::PreKeySecret>,
    }

    fn device(name: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let account = Account::generate(
            name.into(),
            format!("{name}@x.org"),
            name.into(),
            None,
            1,
            &mut OsRng,
        );
        let prekeys = generate_prekeys(&account.identity, &mut OsRng);
        store
            .with(|c| {
                account.save(c)?;
                for k in &prekeys {
                    account::save_prekey(c, k, 1)?;
                }
                Ok(())
            })
            .unwrap();
        Device { _dir: dir, store, account, prekeys }
    }

    fn bundle(d: &Device, one_time: usize) -> Vec<DeviceBundle> {
        vec![DeviceBundle {
            device: 1,
            device_key: [0; 32],
            bundle: PreKeyBundle {
                identity: d.account.identity.public(),
                signed_prekey: d.prekeys[0].signed_public().unwrap(),
                one_time_prekey: d.prekeys[2 + one_time].one_time_public(),
            },
        }]
    }

    fn send_text(from: &Device, to: &str, id: &str, text: &str) {
        from.store
            .with(|c| {
                let content =
                    Content::Text { id: id.into(), at: 5, text: text.into(), reply_to: None };
                let new = NewMessage {
                    message_id: id,
                    conversation: &format!("user:{to}"),
                    sender: &from.account.user_id,
                    direction: Direction::Out,
                    kind: MessageKind::Text,
                    text: Some(text),
                    reply_to: None,
                    client_msg_id: None,
                    created_at: 5,
                    received_at: None,
                    state: MessageState::Queued,
                    read: true,
                };
                messages::insert(c, &new)?;
                enqueue(c, to, Some(id), &content, 5)
            })
            .unwrap();
    }

    fn next(from: &Device, to: &str, bundle: Option<&[DeviceBundle]>) -> Prepared {
        from.store.with(|c| prepare_next(c, &from.account, to, bundle, 1, &mut OsRng, 6)).unwrap()
    }

    /// The one copy of a pairwise row (every account here has one device).
    fn body(o: &Outgoing) -> &[u8] {
        assert_eq!(o.copies.len(), 1, "{o:?}");
        &o.copies[0].body
    }

    fn deliver(to: &Device, from: &str, o: &Outgoing) -> Received {
        to.store.with(|c| receive(c, &to.account, from, 1, &o.relay_id, body(o), 7)).unwrap()
    }

    #[test]
    fn another_account_cannot_sync_our_contacts_or_settings() {
        let alice = device("alice");
        let bob = device("bob");
        for content in [
            Content::ContactSync {
                user_id: "carol".into(),
                nickname: "Carol".into(),
                alias: None,
                blocked: true,
                removed: false,
                verified: None,
            },
            Content::SettingsSync {
                block_all: true,
                read_receipts: false,
                typing: false,
                share_presence: false,
            },
        ] {
            bob.store.with(|c| enqueue(c, "alice", None, &content, 5)).unwrap();
        }
        let mut bundles = Some(bundle(&alice, 0));
        for _ in 0..2 {
            let Prepared::Ready(rows, _) = next(&bob, "alice", bundles.take().as_deref()) else {
                panic!()
            };
            let got = deliver(&alice, "bob", &rows[0]);
            assert!(matches!(got, Received::Dropped(_)), "{got:?}");
            bob.store.with(|c| sent(c, &[rows[0].seq], 6)).unwrap();
        }
        alice
            .store
            .with(|c| {
                assert!(contacts::get(c, "carol")?.is_none());
                assert_eq!(Settings::load(c)?, Settings::default());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_round_trip_with_receipts_exactly_once() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "hello bob");
        assert!(matches!(next(&alice, "bob", None), Prepared::NeedBundle));
        let Prepared::Ready(mut first, _) = next(&alice, "bob", Some(&bundle(&bob, 0)[..])) else {
            panic!()
        };
        let first = first.remove(0);
        // Retransmission after a crash sends the very same ciphertext.
        let Prepared::Ready(mut again, _) = next(&alice, "bob", None) else { panic!() };
        let again = again.remove(0);
        assert_eq!(
            (first.seq, body(&first), &first.relay_id),
            (again.seq, body(&again), &again.relay_id)
        );
        assert!(!body(&first).windows(9).any(|w| w == b"hello bob"));

        // Two events: `message.received` and its `notification`.
        assert_eq!(
            deliver(&bob, "alice", &first),
            Received::Applied { last_event: Some(2), queued: true }
        );
        // The relay redelivers (our ack was lost): shown once.
        assert_eq!(deliver(&bob, "alice", &first), Received::Duplicate);
        let got = bob.store.with(|c| messages::get(c, "m1")).unwrap().unwrap();
        assert_eq!(
            (got.text.as_deref(), got.direction, got.from.as_str()),
            (Some("hello bob"), Direction::In, "alice")
        );
        // The one-time prekey is gone once used.
        assert!(bob.store.with(|c| account::load_prekey(c, FIRST)).unwrap().is_none());

        // The relay accepted alice's message: sent. Then bob's delivery receipt: delivered.
        alice.store.with(|c| sent(c, &[first.seq], 8)).unwrap();
        assert_eq!(
            alice.store.with(|c| messages::get(c, "m1")).unwrap().unwrap().state,
            MessageState::Sent
        );
        let Prepared::Ready(mut receipt, _) = next(&bob, "alice", None) else { panic!() };
        let receipt = receipt.remove(0);
        assert!(matches!(deliver(&alice, "bob", &receipt), Received::Applied { .. }));
        assert_eq!(
            alice.store.with(|c| messages::get(c, "m1")).unwrap().unwrap().state,
            MessageState::Delivered
        );
        // A late `sent` never moves it back.
        alice.store.with(|c| messages::advance_state(c, "m1", MessageState::Sent)).unwrap();
        assert_eq!(
            alice.store.with(|c| messages::get(c, "m1")).unwrap().unwrap().state,
            MessageState::Delivered
        );
    }

    const FIRST: u32 = account::FIRST_ONE_TIME_ID;

    #[test]
    fn garbage_is_dropped_and_leaves_the_session_working() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        let Prepared::Ready(mut m1, _) = next(&alice, "bob", Some(&bundle(&bob, 0)[..])) else {
            panic!()
        };
        let m1 = m1.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m1), Received::Applied { .. }));
        let mut forged = m1.clone();
        forged.relay_id = "other".into();
        if let Some(b) = forged.copies[0].body.last_mut() {
            *b ^= 1;
        }
        // A used message number (here tampered with): a replay, dropped without a retry.
        assert!(matches!(deliver(&bob, "alice", &forged), Received::Dropped(_)));
        alice.store.with(|c| sent(c, &[m1.seq], 8)).unwrap();
        send_text(&alice, "bob", "m2", "two");
        let Prepared::Ready(mut m2, _) = next(&alice, "bob", None) else { panic!() };
        let m2 = m2.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m2), Received::Applied { .. }));
        assert_eq!(
            bob.store.with(|c| messages::get(c, "m2")).unwrap().unwrap().text.as_deref(),
            Some("two")
        );
    }

    /// Everything queued from `from` to `to`, prepared (with `bundle` if a session must
    /// start) and delivered in order.
    fn flush(from: &Device, to: &Device, bundle: Option<&[DeviceBundle]>) -> Vec<Received> {
        let (to_id, from_id) = (to.account.user_id.clone(), from.account.user_id.clone());
        let prepared = from
            .store
            .with(|c| prepare_next(c, &from.account, &to_id, bundle, 64, &mut OsRng, 6))
            .unwrap();
        let Prepared::Ready(rows, _) = prepared else { panic!("{prepared:?}") };
        let seqs: Vec<i64> = rows.iter().map(|o| o.seq).collect();
        from.store.with(|c| sent(c, &seqs, 8)).unwrap();
        rows.iter().map(|o| deliver(to, &from_id, o)).collect()
    }

    fn text_of(d: &Device, id: &str) -> Option<String> {
        d.store.with(|c| messages::get(c, id)).unwrap().and_then(|m| m.text)
    }

    #[test]
    fn a_message_the_peer_cannot_open_is_resent_under_a_fresh_session() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        assert!(matches!(
            flush(&alice, &bob, Some(&bundle(&bob, 0)[..]))[0],
            Received::Applied { .. }
        ));
        // bob loses his sessions; alice's next message cannot be opened.
        bob.store.with(|c| Ok(c.execute("DELETE FROM sessions", [])?)).unwrap();
        send_text(&alice, "bob", "m2", "two");
        let got = flush(&alice, &bob, None);
        assert!(matches!(got[0], Received::Retry(_)), "{got:?}");
        assert_eq!(text_of(&bob, "m2"), None);
        // bob's retry receipt (with m1's delivery receipt) reaches alice under a new
        // session; alice queues m2 again, to go out under a fresh session of her own.
        let got = flush(&bob, &alice, Some(&bundle(&alice, 0)[..]));
        assert!(got.iter().all(|r| matches!(r, Received::Applied { .. })), "{got:?}");
        assert!(matches!(
            alice.store.with(|c| prepare_next(c, &alice.account, "bob", None, 64, &mut OsRng, 9)),
            Ok(Prepared::NeedBundle)
        ));
        let got = flush(&alice, &bob, Some(&bundle(&bob, 1)[..]));
        assert!(matches!(got[0], Received::Applied { .. }), "{got:?}");
        assert_eq!(text_of(&bob, "m2").as_deref(), Some("two"));
        // bob's delivery receipt for m2 ends the retry window for it.
        flush(&bob, &alice, None);
        let kept: i64 = alice
            .store
            .with(|c| {
                Ok(c.query_row("SELECT count(*) FROM resend WHERE message_id = 'm2'", [], |r| {
                    r.get(0)
                })?)
            })
            .unwrap();
        assert_eq!(kept, 0);
    }

    #[test]
    fn a_verified_contacts_new_key_holds_messages_until_accepted() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        flush(&alice, &bob, Some(&bundle(&bob, 0)[..]));
        alice
            .store
            .with(|c| {
                c.execute(
                    "INSERT INTO contacts (user_id, verified, added_at) VALUES ('bob', 1, 0)",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        assert!(alice.store.with(|c| trust::is_verified(c, "bob")).unwrap());

        // bob on a new device (a new identity key) writes first.
        let bob2 = device("bob");
        send_text(&bob2, "alice", "n1", "new phone");
        let got = flush(&bob2, &alice, Some(&bundle(&alice, 0)[..]));
        assert!(matches!(got[0], Received::Applied { .. }), "{got:?}");
        assert_eq!(text_of(&alice, "n1").as_deref(), Some("new phone"));
        let (verified, untrusted, changed) = alice
            .store
            .with(|c| {
                Ok((
                    trust::is_verified(c, "bob")?,
                    trust::is_untrusted(c, "bob")?,
                    trust::changed_at(c, "bob")?,
                ))
            })
            .unwrap();
        assert_eq!((verified, untrusted, changed), (false, true, Some(7)));
        // The delivery receipt for n1 (and anything else) waits.
        let held =
            alice.store.with(|c| prepare_next(c, &alice.account, "bob", None, 64, &mut OsRng, 9));
        assert!(matches!(held, Ok(Prepared::Held { .. })), "{held:?}");

        // Accepted (as unverified): it goes out, to the new key.
        alice
            .store
            .with(|c| trust::accept(c, "alice", "bob", false, 10).map(|r| r.is_ok()))
            .unwrap();
        let got = flush(&alice, &bob2, None);
        assert!(matches!(got[0], Received::Applied { .. }), "{got:?}");
        assert_eq!(
            bob2.store.with(|c| messages::get(c, "n1")).unwrap().unwrap().state,
            MessageState::Delivered
        );
    }

    #[test]
    fn a_repeated_prekey_message_never_replaces_the_session() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        let Prepared::Ready(mut m1, _) = next(&alice, "bob", Some(&bundle(&bob, 0)[..])) else {
            panic!()
        };
        let m1 = m1.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m1), Received::Applied { .. }));
        let before = bob.store.with(|c| load_record(c, "alice", 1)).unwrap().unwrap().to_bytes();
        // The same prekey message under another relay id (a replay): refused, no retry,
        // the session unchanged.
        let mut replay = m1.clone();
        replay.relay_id = "replayed".into();
        assert!(matches!(deliver(&bob, "alice", &replay), Received::Dropped(_)));
        let after = bob.store.with(|c| load_record(c, "alice", 1)).unwrap().unwrap().to_bytes();
        assert_eq!(before.as_slice(), after.as_slice());
    }

    /// An outbox row's (whether it is still unsealed, its copies).
    type Queued = (bool, Option<Vec<u8>>);

    fn outbox_of(d: &Device, to: &str) -> Vec<Queued> {
        d.store
            .with(|c| {
                let rows = c
                    .prepare(
                        "SELECT copies IS NULL, copies FROM outbox WHERE recipient = ?1 ORDER BY seq",
                    )?
                    .query_map([to], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .unwrap()
    }

    /// Issue 17: a message sealed in the transaction that queues it goes out as that
    /// ciphertext (never encrypted again), and texts received owe one receipt, which
    /// waits unsealed for the receipts of the texts after it; a row due behind it takes
    /// it along at once.
    #[test]
    fn sealed_where_queued_and_one_receipt_per_batch() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        // No session yet: nothing sealed, the sender starts one from a bundle.
        let seal = |d: &Device, to: &str| {
            d.store.with(|c| e2e::seal_queued(c, to, 64, &mut OsRng, 6)).unwrap()
        };
        assert_eq!(seal(&alice, "bob"), 0);
        assert!(matches!(
            flush(&alice, &bob, Some(&bundle(&bob, 0)[..]))[0],
            Received::Applied { .. }
        ));
        send_text(&alice, "bob", "m2", "two");
        send_text(&alice, "bob", "m3", "three");
        assert_eq!(seal(&alice, "bob"), 2);
        let queued = outbox_of(&alice, "bob");
        assert!(queued.iter().all(|(p, e)| !p && e.is_some()), "{queued:?}");
        let Prepared::Ready(rows, _) = alice
            .store
            .with(|c| prepare_next(c, &alice.account, "bob", None, 64, &mut OsRng, 7))
            .unwrap()
        else {
            panic!()
        };
        let sent_as: Vec<Option<Vec<u8>>> =
            rows.iter().map(|o| Some(outbox::encode_copies(&o.copies))).collect();
        assert_eq!(sent_as, queued.into_iter().map(|(_, e)| e).collect::<Vec<_>>());

        let items: Vec<Delivery<'_>> =
            rows.iter().map(|o| ("alice", 1, o.relay_id.as_str(), body(o))).collect();
        let me = Me { account: &bob.account, device: None };
        let got = bob.store.with(|c| receive_many(c, me, &items, 8)).unwrap();
        assert!(got.iter().all(|r| matches!(r, Received::Applied { .. })), "{got:?}");
        assert_eq!(
            (text_of(&bob, "m2"), text_of(&bob, "m3")),
            (Some("two".into()), Some("three".into()))
        );
        // m1's receipt, merged with m2's and m3's into one row: not sealed, not due yet.
        let receipts = outbox_of(&bob, "alice");
        assert_eq!(receipts.len(), 1, "{receipts:?}");
        assert!(receipts.iter().all(|(p, e)| *p && e.is_none()));
        let due =
            |d: &Device, now: i64| d.store.with(|c| outbox::pending_recipients(c, now)).unwrap();
        assert!(due(&bob, 8).is_empty());
        let waits_until = bob.store.with(|c| outbox::next_due(c, 8)).unwrap().unwrap();
        assert!(waits_until > 8 && waits_until <= 8 + outbox::RECEIPT_DELAY_MS);
        assert_eq!(due(&bob, waits_until), vec!["alice".to_owned()]);
        // A text to alice is due at once and takes the receipt along.
        send_text(&bob, "alice", "b1", "hi");
        assert_eq!(due(&bob, 8), vec!["alice".to_owned()]);
        let got = flush(&bob, &alice, None);
        assert!(got.iter().all(|r| matches!(r, Received::Applied { .. })), "{got:?}");
        for id in ["m1", "m2", "m3"] {
            let state = alice.store.with(|c| messages::get(c, id)).unwrap().unwrap().state;
            assert_eq!(state, MessageState::Delivered, "{id}");
        }
    }

    /// Issue 19: a sender key counts for the device whose session carried it. alice's
    /// second device (same account, same identity key) hands bob its own key: it lands
    /// beside the first device's key, not over it; a later one passed off (by the relay)
    /// as the first device's is opened by no session and changes no key. (A *prekey*
    /// message passed off as another device of the same account would start a session
    /// for that device: devices of one account share the identity key, and only the
    /// relay tells them apart, as in Signal.)
    #[test]
    fn a_sender_key_lands_under_the_device_whose_session_carried_it() {
        let alice = device("alice");
        let bob = device("bob");
        let mut second = Account::generate(
            "alice".into(),
            "alice@x.org".into(),
            "alice".into(),
            None,
            1,
            &mut OsRng,
        );
        second.identity = alice.account.identity.clone();
        let desktop = {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::Store::open(dir.path()).unwrap();
            let prekeys = generate_prekeys(&second.identity, &mut OsRng);
            store
                .with(|c| {
                    second.save(c)?;
                    for k in &prekeys {
                        account::save_prekey(c, k, 1)?;
                    }
                    Ok(())
                })
                .unwrap();
            Device { _dir: dir, store, account: second, prekeys }
        };
        let g = groups::GroupState {
            id: "g1".into(),
            name: "Crew".into(),
            created_at: 1,
            version: 1,
            members: ["alice", "bob"].map(String::from).into(),
            admins: ["alice"].map(String::from).into(),
            proof: None,
        };
        bob.store.with(|c| groups::apply(c, "bob", None, &g, "alice", 1).map(drop)).unwrap();
        let key_of = |d: &Device| {
            let key = letstalk_crypto::SenderKey::generate(b"g1", &mut OsRng).unwrap();
            let key = hex::encode(key.distribution().encode().as_slice());
            d.store
                .with(|c| enqueue(c, "bob", None, &Content::SenderKey { gid: "g1".into(), key }, 5))
                .unwrap();
        };
        let state = |device: u32| -> Option<Vec<u8>> {
            bob.store
                .with(|c| {
                    Ok(c.query_row(
                        "SELECT state FROM group_receivers WHERE sender = 'alice' AND device = ?1",
                        [device],
                        |r| r.get(0),
                    )
                    .optional()?)
                })
                .unwrap()
        };
        key_of(&alice);
        assert!(matches!(
            flush(&alice, &bob, Some(&bundle(&bob, 0)[..]))[0],
            Received::Applied { .. }
        ));
        let phone_key = state(1).expect("the phone's key");

        let desktop_send = |bundles: Option<&[DeviceBundle]>| {
            key_of(&desktop);
            let prepared = desktop
                .store
                .with(|c| prepare_next(c, &desktop.account, "bob", bundles, 8, &mut OsRng, 6))
                .unwrap();
            let Prepared::Ready(rows, _) = prepared else { panic!("{prepared:?}") };
            let seqs: Vec<i64> = rows.iter().map(|o| o.seq).collect();
            desktop.store.with(|c| sent(c, &seqs, 8)).unwrap();
            rows.into_iter().next().unwrap()
        };
        let as_device = |o: &Outgoing, device: u32, relay_id: &str| {
            bob.store
                .with(|c| receive(c, &bob.account, "alice", device, relay_id, body(o), 7))
                .unwrap()
        };
        // The desktop's first key starts its session with bob, as device 2: beside the
        // phone's key, not over it.
        let first = desktop_send(Some(&bundle(&bob, 1)[..]));
        assert!(matches!(as_device(&first, 2, &first.relay_id), Received::Applied { .. }));
        let desktop_key = state(2).expect("the desktop's key");
        assert_eq!(state(1).as_deref(), Some(phone_key.as_slice()));

        // Its next key, passed off by the relay as the phone's: the phone's session does
        // not open it, and no key changes.
        let next = desktop_send(None);
        let lied = as_device(&next, 1, "lie");
        assert!(matches!(lied, Received::Retry(_) | Received::Dropped(_)), "{lied:?}");
        assert_eq!(state(1).as_deref(), Some(phone_key.as_slice()));
        assert_eq!(state(2).as_deref(), Some(desktop_key.as_slice()));
        // As itself, it replaces the desktop's own key only.
        assert!(matches!(as_device(&next, 2, &next.relay_id), Received::Applied { .. }));
        assert_ne!(state(2).as_deref(), Some(desktop_key.as_slice()));
        assert_eq!(state(1).as_deref(), Some(phone_key.as_slice()));
    }
}
