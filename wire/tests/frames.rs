//! Round-trip properties, hex snapshots, limits and the fuzz body run as a property.

// Test helpers outside `#[test]` functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use letstalk_wire::*;
use proptest::prelude::*;

fn short() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,40}"
}
fn text() -> impl Strategy<Value = String> {
    ".{0,60}"
}
fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}
fn prekey() -> impl Strategy<Value = PreKey> {
    (any::<u32>(), blob(64)).prop_map(|(id, key)| PreKey { id, key })
}
fn avatar() -> impl Strategy<Value = Avatar> {
    (short(), blob(300)).prop_map(|(mime, data)| Avatar { mime, data })
}
fn avatar_meta() -> impl Strategy<Value = AvatarMeta> {
    (short(), any::<[u8; 32]>(), any::<u32>()).prop_map(|(mime, sha256, size)| AvatarMeta {
        mime,
        sha256,
        size,
    })
}
fn profile() -> impl Strategy<Value = Profile> {
    (
        short(),
        text(),
        proptest::option::of(text()),
        proptest::option::of(avatar_meta()),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(user_id, nickname, email, avatar, created_at, updated_at)| Profile {
            user_id,
            nickname,
            email,
            avatar,
            created_at,
            updated_at,
        })
}
fn presence() -> impl Strategy<Value = PresenceInfo> {
    (short(), any::<bool>(), any::<u64>(), any::<bool>()).prop_map(
        |(user_id, online, last_seen_at, hidden)| PresenceInfo {
            user_id,
            online,
            last_seen_at,
            hidden,
        },
    )
}
fn sig() -> impl Strategy<Value = [u8; 64]> {
    proptest::collection::vec(any::<u8>(), 64).prop_map(|v| {
        let mut a = [0u8; 64];
        a.copy_from_slice(&v);
        a
    })
}

fn request() -> impl Strategy<Value = Request> {
    let users = || proptest::collection::vec(short(), 0..5);
    prop_oneof![
        (proptest::collection::vec(any::<u16>(), 0..5), text())
            .prop_map(|(versions, client)| Request::Hello { versions, client }),
        (short(), any::<[u8; 32]>(), sig()).prop_map(|(user_id, device_key, signature)| {
            Request::Auth { user_id, device_key, signature }
        }),
        (short(), text(), text(), text(), any::<[u8; 32]>(), sig(), blob(100)).prop_map(
            |(user_id, password, email, nickname, device_key, signature, identity)| {
                Request::Register {
                    user_id,
                    password,
                    email,
                    nickname,
                    device_key,
                    signature,
                    identity,
                }
            }
        ),
        (short(), text(), any::<[u8; 32]>(), sig()).prop_map(
            |(user_id, password, device_key, signature)| {
                Request::Login { user_id, password, device_key, signature }
            }
        ),
        Just(Request::Logout),
        Just(Request::DeleteAccount),
        (text(), text()).prop_map(|(old_password, new_password)| Request::ChangePassword {
            old_password,
            new_password
        }),
        Just(Request::GetProfile),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            prop_oneof![
                Just(AvatarUpdate::Keep),
                Just(AvatarUpdate::Remove),
                avatar().prop_map(AvatarUpdate::Set)
            ]
        )
            .prop_map(|(nickname, email, avatar)| Request::UpdateProfile {
                nickname,
                email,
                avatar
            }),
        short().prop_map(|user_id| Request::LookupUser { user_id }),
        short().prop_map(|user_id| Request::FetchAvatar { user_id }),
        (
            proptest::option::of(blob(100)),
            proptest::option::of(prekey()),
            proptest::collection::vec(prekey(), 0..5),
            proptest::option::of(prekey())
        )
            .prop_map(|(identity, signed_prekey, one_time_prekeys, last_resort)| {
                Request::UploadKeys { identity, signed_prekey, one_time_prekeys, last_resort }
            }),
        Just(Request::KeyCount),
        short().prop_map(|user_id| Request::FetchBundle { user_id }),
        (users(), users()).prop_map(|(add, remove)| Request::Watch { add, remove }),
        (short(), short(), blob(500)).prop_map(|(to, msg_id, body)| Request::Send {
            to,
            msg_id,
            body
        }),
        (short(), proptest::collection::vec((short(), blob(300)), 0..6)).prop_map(|(to, items)| {
            Request::SendBatch {
                to,
                messages: items
                    .into_iter()
                    .map(|(msg_id, body)| Outbound { msg_id, body })
                    .collect(),
            }
        }),
        proptest::collection::vec(any::<u64>(), 0..10)
            .prop_map(|delivery_ids| Request::Ack { delivery_ids }),
        any::<u64>().prop_map(|nonce| Request::Ping { nonce }),
        (any::<bool>(), users())
            .prop_map(|(block_all, users)| Request::SetBlocks { block_all, users }),
        (any::<bool>(), users())
            .prop_map(|(share_presence, users)| Request::SetContacts { share_presence, users }),
        (users(), short(), blob(300)).prop_map(|(to, msg_id, body)| Request::SendGroup {
            to,
            msg_id,
            body
        }),
        (any::<[u8; 16]>(), 0..=MAX_BLOB_LEN, any::<u64>(), users()).prop_map(
            |(blob_id, size, offset, recipients)| Request::BlobPut {
                blob_id,
                size,
                offset: offset % (size + 1),
                recipients
            }
        ),
        (short(), any::<[u8; 16]>())
            .prop_map(|(owner, blob_id)| Request::BlobStat { owner, blob_id }),
        (short(), any::<[u8; 16]>(), any::<u64>())
            .prop_map(|(owner, blob_id, offset)| Request::BlobGet { owner, blob_id, offset }),
        (short(), any::<[u8; 16]>())
            .prop_map(|(owner, blob_id)| Request::BlobRelease { owner, blob_id }),
        any::<[u8; 16]>().prop_map(|blob_id| Request::BlobCancel { blob_id }),
        (any::<[u8; 16]>(), short())
            .prop_map(|(call_id, peer)| Request::CallRoute { call_id, peer }),
        any::<[u8; 16]>().prop_map(|call_id| Request::CallUnroute { call_id }),
        short().prop_map(|user_id| Request::ListDevices { user_id }),
        (any::<[u8; 32]>(), blob(100))
            .prop_map(|(device_key, name)| Request::AddDevice { device_key, name }),
        any::<u32>().prop_map(|device_id| Request::RemoveDevice { device_id }),
        (any::<u32>(), blob(100))
            .prop_map(|(device_id, name)| Request::RenameDevice { device_id, name }),
        (any::<[u8; 16]>(), blob(200)).prop_map(|(slot, hello)| Request::LinkOpen { slot, hello }),
        (any::<[u8; 16]>(), blob(200)).prop_map(|(slot, data)| Request::LinkPut { slot, data }),
        any::<[u8; 16]>().prop_map(|slot| Request::LinkGet { slot }),
        (short(), device_ids())
            .prop_map(|(user_id, devices)| Request::FetchBundles { user_id, devices }),
        (short(), short(), proptest::collection::vec((any::<u32>(), blob(100)), 0..=MAX_DEVICES))
            .prop_map(|(to, msg_id, copies)| Request::SendCopies {
                to,
                msg_id,
                copies: copies
                    .into_iter()
                    .map(|(device_id, body)| Copy { device_id, body })
                    .collect(),
            }),
        (
            short(),
            proptest::collection::vec(
                (short(), proptest::collection::vec((any::<u32>(), blob(40)), 0..=3)),
                0..8,
            )
        )
            .prop_map(|(to, messages)| Request::SendCopiesBatch {
                to,
                messages: messages
                    .into_iter()
                    .map(|(msg_id, copies)| OutboundCopies {
                        msg_id,
                        copies: copies
                            .into_iter()
                            .map(|(device_id, body)| Copy { device_id, body })
                            .collect(),
                    })
                    .collect(),
            }),
    ]
}

fn device_ids() -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(any::<u32>(), 0..=MAX_DEVICES)
}

fn bundle() -> impl Strategy<Value = Bundle> {
    (
        short(),
        any::<u32>(),
        any::<[u8; 32]>(),
        blob(100),
        proptest::option::of(prekey()),
        proptest::option::of(prekey()),
        any::<bool>(),
    )
        .prop_map(
            |(
                user_id,
                device_id,
                device_key,
                identity,
                signed_prekey,
                one_time_prekey,
                last_resort,
            )| Bundle {
                user_id,
                device_id,
                device_key,
                identity,
                signed_prekey,
                one_time_prekey,
                last_resort,
            },
        )
}

fn response() -> impl Strategy<Value = Response> {
    let kind = (1u8..=20).prop_map(ErrorKind::from_code);
    prop_oneof![
        (any::<u16>(), any::<[u8; 32]>(), text()).prop_map(|(version, challenge, server)| {
            Response::HelloOk { version, challenge, server }
        }),
        Just(Response::Ok),
        (kind, any::<u64>(), text()).prop_map(|(kind, retry_after_ms, message)| Response::Error {
            kind,
            retry_after_ms,
            message
        }),
        (short(), any::<u32>())
            .prop_map(|(user_id, device_id)| Response::Authenticated { user_id, device_id }),
        profile().prop_map(Response::Profile),
        avatar().prop_map(Response::Avatar),
        any::<u32>().prop_map(|one_time_remaining| Response::KeyCount { one_time_remaining }),
        bundle().prop_map(Response::Bundle),
        proptest::collection::vec(presence(), 0..5).prop_map(|users| Response::Presence { users }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(server_ts, duplicate)| Response::Sent { server_ts, duplicate }),
        any::<u64>().prop_map(|nonce| Response::Pong { nonce }),
        (
            any::<u64>(),
            proptest::collection::vec((short(), (1u8..=20).prop_map(ErrorKind::from_code)), 0..5)
        )
            .prop_map(|(server_ts, refused)| Response::GroupSent {
                server_ts,
                refused: refused
                    .into_iter()
                    .map(|(user_id, kind)| Refusal { user_id, kind })
                    .collect(),
            }),
        (0..=MAX_BLOB_LEN, any::<u64>())
            .prop_map(|(size, stored)| Response::Blob { size, stored: stored % (size + 1) }),
        proptest::collection::vec(
            (any::<u32>(), blob(100), any::<u64>(), any::<u64>()),
            0..=MAX_DEVICES
        )
        .prop_map(|d| Response::Devices {
            devices: d
                .into_iter()
                .map(|(device_id, name, linked_at, last_seen_at)| DeviceInfo {
                    device_id,
                    name,
                    linked_at,
                    last_seen_at,
                })
                .collect(),
        }),
        any::<u32>().prop_map(|device_id| Response::DeviceAdded { device_id }),
        (blob(100), proptest::option::of(blob(100)), proptest::option::of(blob(100))).prop_map(
            |(hello, joined, reply)| Response::LinkSlot(LinkSlot { hello, joined, reply })
        ),
        proptest::collection::vec(bundle(), 0..=MAX_DEVICES)
            .prop_map(|bundles| Response::Bundles { bundles }),
        (device_ids(), device_ids())
            .prop_map(|(missing, extra)| Response::Mismatch { missing, extra }),
    ]
}

fn push() -> impl Strategy<Value = Push> {
    prop_oneof![
        (any::<u64>(), short(), any::<u32>(), short(), any::<u64>(), blob(500)).prop_map(
            |(delivery_id, from, from_device, msg_id, server_ts, body)| Push::Message {
                delivery_id,
                from,
                from_device,
                msg_id,
                server_ts,
                body
            }
        ),
        presence().prop_map(Push::Presence),
        profile().prop_map(Push::ProfileChanged),
        Just(Push::LoggedOut),
        Just(Push::DevicesChanged),
    ]
}

fn body(frame: &[u8]) -> &[u8] {
    let (body, used) = split_frame(frame, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(used, frame.len());
    body
}

proptest! {
    #[test]
    fn request_round_trips(req in request()) {
        let frame = req.encode().unwrap();
        prop_assert_eq!(Request::decode(body(&frame)).unwrap(), req);
        // Every strict prefix is an error, never a panic or a different frame.
        for cut in 0..body(&frame).len() {
            prop_assert!(Request::decode(&body(&frame)[..cut]).is_err());
        }
    }

    #[test]
    fn response_round_trips(resp in response()) {
        let frame = resp.encode().unwrap();
        prop_assert_eq!(Response::decode(body(&frame)).unwrap(), resp);
    }

    #[test]
    fn push_round_trips(p in push()) {
        let frame = p.encode().unwrap();
        prop_assert_eq!(Push::decode(body(&frame)).unwrap(), p);
    }

    #[test]
    fn trailing_bytes_are_rejected(req in request(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let mut b = body(&req.encode().unwrap()).to_vec();
        b.extend_from_slice(&extra);
        prop_assert!(Request::decode(&b).is_err());
    }

}

proptest! {
    // The fuzz body gets more cases than the round trips: it is the cheap stand-in for a
    // fuzzing run in every `cargo test`.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The fuzz target's body over random bytes, with a valid prefix half the time.
    #[test]
    fn fuzz_body_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..400), prefix in any::<bool>()) {
        let mut input = data.clone();
        if prefix {
            input = (data.len() as u32).to_be_bytes().to_vec();
            input.extend_from_slice(&data);
        }
        fuzz_frame(&input);
        let _ = Request::decode(&data);
        let _ = Response::decode(&data);
        let _ = Push::decode(&data);
    }

    /// Mutating one byte of a valid frame never panics, and what decodes is canonical.
    #[test]
    fn fuzz_body_on_mutated_frames(req in request(), at in any::<usize>(), byte in any::<u8>()) {
        let mut frame = req.encode().unwrap();
        let i = at % frame.len();
        frame[i] = byte;
        fuzz_frame(&frame);
    }
}

#[test]
fn oversized_prefix_is_rejected_before_allocation() {
    let huge = (100u32 * 1024 * 1024).to_be_bytes();
    assert!(matches!(frame_len(huge, MAX_FRAME_LEN), Err(WireError::FrameTooLarge { .. })));
    assert!(matches!(split_frame(&huge, MAX_FRAME_LEN), Err(WireError::FrameTooLarge { .. })));
    assert_eq!(split_frame(&[0, 0], MAX_FRAME_LEN), Ok(None));
    assert_eq!(split_frame(&[0, 0, 0, 2, 0x12], MAX_FRAME_LEN), Ok(None));
}

#[test]
fn oversized_fields_are_rejected() {
    let body =
        Request::Send { to: "bob".into(), msg_id: "m".into(), body: vec![0; MAX_MESSAGE_LEN + 1] };
    let frame = body.encode().unwrap();
    assert_eq!(Request::decode(&frame[4..]), Err(WireError::FieldTooLong("body")));
    // A list count larger than the bytes left is refused before allocating.
    assert_eq!(Request::decode(&[0x11, 0x03, 0xE8]), Err(WireError::Truncated));
    let big = Request::UpdateProfile {
        nickname: None,
        email: None,
        avatar: AvatarUpdate::Set(Avatar { mime: "x".into(), data: vec![0; MAX_FRAME_LEN] }),
    };
    assert!(matches!(big.encode(), Err(WireError::FrameTooLarge { .. })));
}

/// Hex snapshots: the layout is a contract with deployed relays. If one of these changes,
/// the protocol changed: bump `PROTOCOL_VERSION` instead of editing the expected hex.
#[test]
fn hex_snapshots() {
    let check = |frame: Vec<u8>, expected: &str| assert_eq!(hex::encode(frame), expected);
    check(
        Request::Ping { nonce: 0x0102030405060708 }.encode().unwrap(),
        "00000009120102030405060708",
    );
    check(
        Request::Hello { versions: vec![1], client: "d".into() }.encode().unwrap(),
        "000000080100010001000164",
    );
    check(
        Request::Send { to: "bob".into(), msg_id: "m1".into(), body: vec![0xAA, 0xBB] }
            .encode()
            .unwrap(),
        "00000010100003626f6200026d3100000002aabb",
    );
    check(
        Response::Sent { server_ts: 1, duplicate: false }.encode().unwrap(),
        "0000000a89000000000000000100",
    );
    check(
        Response::Error {
            kind: ErrorKind::RateLimited,
            retry_after_ms: 500,
            message: "slow".into(),
        }
        .encode()
        .unwrap(),
        "00000010820500000000000001f40004736c6f77",
    );
    check(
        Push::Message {
            delivery_id: 7,
            from: "al".into(),
            from_device: 3,
            msg_id: "x".into(),
            server_ts: 2,
            body: vec![1],
        }
        .encode()
        .unwrap(),
        "00000021c000000000000000070002616c0000000300017800000000000000020000000101",
    );
    check(
        Request::SendCopies {
            to: "bo".into(),
            msg_id: "x".into(),
            copies: vec![Copy { device_id: 2, body: vec![9] }],
        }
        .encode()
        .unwrap(),
        "00000013370002626f0001780001000000020000000109",
    );
    check(
        Request::SendCopiesBatch {
            to: "bo".into(),
            messages: vec![OutboundCopies {
                msg_id: "x".into(),
                copies: vec![Copy { device_id: 2, body: vec![9] }],
            }],
        }
        .encode()
        .unwrap(),
        "00000015390002626f00010001780001000000020000000109",
    );
    check(
        Response::Mismatch { missing: vec![1], extra: vec![] }.encode().unwrap(),
        "00000009950001000000010000",
    );
    check(Push::LoggedOut.encode().unwrap(), "00000001c3");
    check(
        Request::BlobPut { blob_id: [0xAB; 16], size: 5, offset: 2, recipients: vec!["bo".into()] }
            .encode()
            .unwrap(),
        "0000002714abababababababababababababababab0000000000000005000000000000000200010002626f",
    );
    check(
        Request::CallRoute { call_id: [1; 16], peer: "bo".into() }.encode().unwrap(),
        "0000001518010101010101010101010101010101010002626f",
    );
    check(
        Response::Blob { size: 9, stored: 3 }.encode().unwrap(),
        "000000118b00000000000000090000000000000003",
    );
    check(
        Request::RenameDevice { device_id: 2, name: vec![0xAB, 0xCD] }.encode().unwrap(),
        "0000000b380000000200000002abcd",
    );
}

/// A device name is sealed, yet even its bytes stay out of logs: `Debug` shows the
/// device id only.
#[test]
fn device_names_are_not_debug_printed() {
    let name = b"Canary-Name".to_vec();
    let rename = format!("{:?}", Request::RenameDevice { device_id: 7, name: name.clone() });
    assert_eq!(rename, "RenameDevice { device_id: 7, .. }");
    let add = format!("{:?}", Request::AddDevice { device_key: [1; 32], name });
    assert_eq!(add, "AddDevice { .. }");
}

#[test]
fn a_rename_longer_than_a_device_name_is_refused() {
    let long = Request::RenameDevice { device_id: 1, name: vec![0; MAX_DEVICE_NAME_LEN + 1] };
    let frame = long.encode().unwrap();
    assert_eq!(Request::decode(&frame[4..]), Err(WireError::FieldTooLong("name")));
    let fits = Request::RenameDevice { device_id: 1, name: vec![0; MAX_DEVICE_NAME_LEN] };
    let frame = fits.encode().unwrap();
    assert_eq!(Request::decode(&frame[4..]), Ok(fits));
}

#[test]
fn blob_limits() {
    let put = |size, offset| {
        Request::BlobPut { blob_id: [0; 16], size, offset, recipients: vec![] }.encode().unwrap()
    };
    assert_eq!(
        Request::decode(&put(MAX_BLOB_LEN + 1, 0)[4..]),
        Err(WireError::FieldTooLong("size"))
    );
    assert_eq!(Request::decode(&put(10, 11)[4..]), Err(WireError::Invalid("offset")));
    let blob = Response::Blob { size: 3, stored: 4 }.encode().unwrap();
    assert_eq!(Response::decode(&blob[4..]), Err(WireError::Invalid("blob size")));
}
