//! Property tests of the codec and of grant matching: every message round-trips, and no
//! sequence of bytes makes a decoder panic or allocate past its frame limit. The fuzz
//! targets in `fuzz/` drive the same entry points with coverage guidance.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::auth::{Grants, Pattern};

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~é✓]{{0,{max}}}"))
        .expect("regex")
        .prop_filter("fits a str8", |s| s.len() <= 255)
}

fn name() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9._-]{1,63}").expect("regex")
}

fn ports() -> impl Strategy<Value = Vec<(String, u16)>> {
    vec((name(), any::<u16>()), 0..4)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u8>(),
            prop_oneof![Just(Role::Device), Just(Role::Access)],
            text(80),
            name(),
            vec(name(), 0..8),
            ports(),
        )
            .prop_map(|(version, role, token, device, services, public)| {
                Message::Hello {
                    version,
                    role,
                    token: Token::new(token),
                    device,
                    services,
                    public,
                }
            }),
        (
            any::<u32>(),
            text(60),
            ports(),
            proptest::option::of((any::<u16>(), any::<u32>(), vec((name(), text(60)), 0..4)))
        )
            .prop_map(|(heartbeat_ms, identity, public, v2)| {
                let (limits, public_failed) = match v2 {
                    Some((max_streams, receive_window, failed)) => (
                        Some(WireLimits {
                            max_streams,
                            receive_window,
                        }),
                        failed,
                    ),
                    None => (None, vec![]),
                };
                Message::Welcome {
                    heartbeat_ms,
                    identity,
                    public,
                    limits,
                    public_failed,
                }
            }),
        (any::<u8>(), text(80)).prop_map(|(c, message)| Message::Refused {
            code: RefusalCode::from_u8(c),
            message
        }),
        (name(), name()).prop_map(|(device, service)| Message::Open { device, service }),
        (name(), name(), name(), name(), name()).prop_map(
            |(device, service, principal, caller, origin)| Message::Forward(Forward {
                device,
                service,
                principal,
                caller,
                origin
            })
        ),
        (name(), text(60), text(60)).prop_map(|(service, caller, peer)| Message::Incoming {
            service,
            caller,
            peer
        }),
        (0u8..=6, text(80)).prop_map(|(c, message)| Message::Status {
            code: StatusCode::from_u8(c).expect("valid code"),
            message
        }),
        Just(Message::List),
        vec((name(), any::<bool>(), vec(name(), 0..4)), 0..12).prop_map(|e| {
            Message::DeviceList(
                e.into_iter()
                    .map(|(device, online, services)| DeviceEntry {
                        device,
                        online,
                        services,
                    })
                    .collect(),
            )
        }),
        Just(Message::Control),
        any::<u64>().prop_map(Message::Ping),
        any::<u64>().prop_map(Message::Pong),
    ]
}

fn read(bytes: &[u8], max: usize) -> Result<Message, FrameError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut io = bytes;
    rt.block_on(read_frame(&mut io, max))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(msg in message()) {
        let frame = msg.encode().expect("encodes");
        let len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
        prop_assert_eq!(len, frame.len() - 2);
        prop_assert_eq!(Message::decode(&frame[2..]).expect("decodes"), msg.clone());
        prop_assert_eq!(read(&frame, MAX_FRAME_LEN).expect("reads"), msg);
    }

    #[test]
    fn any_bytes_never_panic_and_what_decodes_round_trips(body in vec(any::<u8>(), 0..600)) {
        if let Ok(msg) = Message::decode(&body) {
            let again = msg.encode().expect("a decoded message encodes");
            prop_assert_eq!(Message::decode(&again[2..]).expect("re-decodes"), msg);
        }
    }

    #[test]
    fn any_bytes_after_a_valid_type_byte_never_panic(
        kind in prop_oneof![Just(0x01u8), Just(0x02), Just(0x03), Just(0x10), Just(0x11),
                            Just(0x12), Just(0x14), Just(0x16), Just(0x18)],
        rest in vec(any::<u8>(), 0..300),
    ) {
        let mut body = vec![kind];
        body.extend(rest);
        let _ = Message::decode(&body);
    }

    #[test]
    fn read_frame_refuses_lengths_over_its_cap_and_never_panics(
        bytes in vec(any::<u8>(), 0..300),
        max in prop_oneof![Just(MAX_HEADER_LEN), Just(MAX_HELLO_LEN)],
    ) {
        let result = read(&bytes, max);
        if bytes.len() >= 2 && usize::from(u16::from_be_bytes([bytes[0], bytes[1]])) > max {
            let too_long = matches!(result, Err(FrameError::TooLong { .. }));
            prop_assert!(too_long);
        }
    }

    #[test]
    fn pattern_parsing_and_matching_never_panic(p in ".{0,80}", n in ".{0,80}") {
        if let Ok(pattern) = Pattern::new(&p) {
            let _ = pattern.matches(&n);
            prop_assert!(p.ends_with('*') || pattern.matches(&p));
        }
    }

    #[test]
    fn exact_patterns_match_only_their_name(a in name(), b in name()) {
        let p = Pattern::new(&a).expect("a name is a pattern");
        prop_assert!(p.matches(&a));
        prop_assert_eq!(p.matches(&b), a == b);
        prop_assert_eq!(p.exact(), Some(a.as_str()));
    }

    #[test]
    fn prefix_patterns_match_exactly_the_names_with_that_prefix(stem in name(), n in name()) {
        let p = Pattern::new(&format!("{stem}*")).expect("prefix pattern");
        prop_assert_eq!(p.matches(&n), n.starts_with(&stem));
    }

    #[test]
    fn grants_allow_only_what_a_pair_names(
        pairs in vec((name(), name()), 0..4),
        device in name(),
        service in name(),
    ) {
        let grants = pairs.iter().fold(Grants::new(), |g, (d, s)| {
            g.access(Pattern::new(d).expect("name"), Pattern::new(s).expect("name"))
        });
        let expected = pairs.iter().any(|(d, s)| *d == device && *s == service);
        prop_assert_eq!(grants.may_access(&device, &service), expected);
        prop_assert!(!grants.may_register(&device), "access grants never register");
    }
}
