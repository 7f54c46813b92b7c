//! Property tests over the `tether.v1.json` decoders: whatever text arrives, decoding returns a
//! command or a typed error (never a panic, never a stack overflow), and what the client side
//! encodes the server side decodes back unchanged.

use proptest::prelude::*;
use tether_core::codec::{
    decode_command, decode_command_limited, decode_server_message, encode_command, json_depth,
};
use tether_core::protocol::{ClientCommand, ErrorCode, StreamPosition};

/// Arbitrary JSON values, nested a few levels, biased towards the command's own keys.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![Just("subscribe"), Just("publish"), Just("ping"), Just("unsubscribe")]
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("cmd".to_owned()),
                    Just("channel".to_owned()),
                    Just("data".to_owned()),
                    Just("recover".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn command() -> impl Strategy<Value = ClientCommand> {
    let channel = "[a-z][a-z0-9:._-]{0,20}";
    prop_oneof![
        any::<u64>().prop_map(|id| ClientCommand::Ping { id }),
        (any::<u64>(), ".{0,40}").prop_map(|(id, token)| ClientCommand::Connect {
            id,
            token,
            subs: Default::default()
        }),
        (any::<u64>(), channel)
            .prop_map(|(id, channel)| ClientCommand::Unsubscribe { id, channel }),
        (any::<u64>(), channel, proptest::option::of((".{0,10}", any::<u64>()))).prop_map(
            |(id, channel, recover)| ClientCommand::Subscribe {
                id,
                channel,
                recover: recover.map(|(epoch, offset)| StreamPosition { epoch, offset }),
            }
        ),
        (any::<u64>(), channel, json_value()).prop_map(|(id, channel, data)| {
            let data = serde_json::value::to_raw_value(&data).expect("a JSON value serialises");
            ClientCommand::Publish { id, channel, data }
        }),
    ]
}

fn decoded_or_typed_error(text: &str) {
    if let Err(e) = decode_command(text) {
        assert!(
            matches!(
                e.error.code,
                ErrorCode::MalformedJson | ErrorCode::InvalidCommand | ErrorCode::UnknownCommand
            ),
            "{text:?} → {e:?}"
        );
        assert!(!e.error.message.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_decodes_or_fails_with_a_typed_error(text in ".{0,200}") {
        decoded_or_typed_error(&text);
        let _ = decode_server_message(&text);
    }

    #[test]
    fn any_json_decodes_or_fails_with_a_typed_error(value in json_value()) {
        let text = value.to_string();
        decoded_or_typed_error(&text);
        let _ = decode_server_message(&text);
    }

    #[test]
    fn commands_survive_encoding(cmd in command()) {
        let text = encode_command(&cmd);
        prop_assert_eq!(decode_command(&text).expect("an encoded command decodes"), cmd);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = "[".repeat(100_000);
    let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for text in [
        deep.clone(),
        format!(r#"{{"id":1,"cmd":"publish","channel":"c","data":{deep}"#),
        format!(r#"{{"id":1,"cmd":"publish","channel":"c","data":{closed}}}"#),
    ] {
        match decode_command(&text) {
            Ok(_) => panic!("a command nested 100,000 deep was accepted"),
            Err(e) => {
                assert_eq!(e.error.code, ErrorCode::MalformedJson);
                assert!(e.error.message.contains("deeper than 32"), "{}", e.error.message);
            }
        }
        let _ = decode_server_message(&text); // no panic, no stack overflow
    }
    // The limit counts the command object itself, and brackets inside strings do not count.
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let publish = |data: &str| format!(r#"{{"id":1,"cmd":"publish","channel":"c","data":{data}}}"#);
    assert!(decode_command_limited(&publish(&nested(3)), 4).is_ok());
    assert!(decode_command_limited(&publish(&nested(4)), 4).is_err());
    assert!(decode_command_limited(&publish(r#""[[[[[[[[\"[[[[""#), 1).is_ok());
    assert_eq!(json_depth(r#"{"a":[{"b":"]]]}"}]}"#, 10), Ok(3));
}

#[test]
fn null_is_data_too() {
    let cmd = decode_command(r#"{"id":7,"cmd":"publish","channel":"c","data":null}"#).unwrap();
    assert!(matches!(cmd, ClientCommand::Publish { ref data, .. } if data.get() == "null"));
    let e = decode_command(r#"{"id":7,"cmd":"publish","channel":"c"}"#).unwrap_err();
    assert_eq!(e.error.code, ErrorCode::InvalidCommand);
}
