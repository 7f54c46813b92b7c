//! The server API's methods beyond publish and presence: `broadcast`, `history`, `info` and
//! `batch`, each with its happy path and its refusals.

mod common;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "api-methods-key-0123456789";

fn api(server: &Server, method: &str, body: Value) -> (u16, Value) {
    api_call(server, Some(KEY), method, &body.to_string())
}

fn offsets(answer: &Value) -> Vec<u64> {
    answer["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[test]
fn broadcast_history_info_and_batch_answer_and_refuse_by_name() {
    let server = Server::start(&["--api-key", KEY, "--history", "feed:*=5/10m"]);

    // broadcast: one answer per channel, in order; a bad one does not stop the others.
    let (status, body) = api(
        &server,
        "broadcast",
        json!({"channels": ["feed:a", "bad channel", "feed:b"], "data": {"n": 1}}),
    );
    assert_eq!(status, 200, "{body}");
    let r = body["responses"].as_array().unwrap();
    assert_eq!((r[0]["channel"].as_str(), r[0]["offset"].as_u64()), (Some("feed:a"), Some(1)));
    assert_eq!(r[1]["status"], 400, "{body}");
    assert!(r[1]["error"].as_str().unwrap().contains("bad channel"), "{body}");
    assert_eq!((r[2]["channel"].as_str(), r[2]["offset"].as_u64()), (Some("feed:b"), Some(1)));
    let (status, _) = api(&server, "broadcast", json!({"channels": [], "data": 1}));
    assert_eq!(status, 400);

    // history: the latest N (as far as history reaches: 5 kept), after a position, reversed.
    for n in 2..=8 {
        let (status, body) = api(&server, "publish", json!({"channel": "feed:a", "data": n}));
        assert_eq!(status, 200, "{body}");
    }
    let (status, latest) = api(&server, "history", json!({"channel": "feed:a", "limit": 3}));
    assert_eq!(status, 200, "{latest}");
    assert_eq!((offsets(&latest), latest["offset"].as_u64()), (vec![6, 7, 8], Some(8)));
    assert_eq!(latest["publications"][2]["data"], 8);
    let epoch = latest["epoch"].as_str().unwrap();
    let (_, all_kept) = api(&server, "history", json!({"channel": "feed:a", "limit": 100}));
    assert_eq!(offsets(&all_kept), vec![4, 5, 6, 7, 8], "history keeps 5");
    let since = json!({"channel": "feed:a", "since": {"epoch": epoch, "offset": 5}, "limit": 2, "reverse": true});
    assert_eq!(offsets(&api(&server, "history", since).1), vec![7, 6]);
    let (_, gone) = api(
        &server,
        "history",
        json!({"channel": "feed:a", "since": {"epoch": epoch, "offset": 1}}),
    );
    assert_eq!(gone["complete"], false, "{gone}");
    let (_, top) = api(&server, "history", json!({"channel": "feed:a", "limit": 0}));
    assert_eq!((offsets(&top), top["offset"].as_u64()), (vec![], Some(8)));
    for (params, needle) in [
        (json!({"channel": "feed:a", "limit": 100000}), "`limit`"),
        (json!({"channel": "feed:a", "since": 3}), "invalid type"),
        (json!({"chanel": "feed:a"}), "`chanel`"),
    ] {
        let (status, body) = api(&server, "history", params.clone());
        assert_eq!(status, 400, "{params}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{params}: {body}");
    }

    // channels: those with subscribers, by name; a pattern narrows them.
    let _subscribers: Vec<_> = ["feed:a", "feed:a", "other"]
        .iter()
        .map(|c| {
            let mut ws = common::json_ws::json_client(&server, "");
            let reply =
                common::json_ws::call(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": c}));
            assert!(reply["error"].is_null(), "{reply}");
            ws
        })
        .collect();
    let (status, listed) = api(&server, "channels", json!({}));
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["channels"],
        json!({"feed:a": {"num_clients": 2}, "other": {"num_clients": 1}})
    );
    let (_, narrowed) = api(&server, "channels", json!({"pattern": "feed:*"}));
    assert_eq!(narrowed["channels"], json!({"feed:a": {"num_clients": 2}}));

    // info: this node.
    let (status, info) = api(&server, "info", json!({}));
    assert_eq!(status, 200, "{info}");
    let node = &info["nodes"][0];
    assert!(node["name"].as_str().is_some_and(|n| n.len() == 12), "{info}");
    assert_eq!((node["broker"].as_str(), node["connections"].as_u64()), (Some("memory"), Some(3)));

    // batch: each command in order, each with its own status.
    let (status, body) = api(
        &server,
        "batch",
        json!({"commands": [
            {"method": "publish", "params": {"channel": "feed:c", "data": "x"}},
            {"method": "history", "params": {"channel": "feed:c", "limit": 1}},
            {"method": "nope"},
            {"method": "batch", "params": {"commands": []}},
            {"method": "publish", "params": {}},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let replies = body["replies"].as_array().unwrap();
    let statuses: Vec<u64> = replies.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 200, 404, 400, 400], "{body}");
    assert_eq!(replies[1]["result"]["publications"][0]["data"], "x");
    assert!(replies[4]["error"].as_str().unwrap().contains("`channel`"), "{body}");

    // The `history` command: a subscriber reads the channel's history over its WebSocket.
    let mut reader = common::json_ws::json_client(&server, "");
    common::json_ws::call(&mut reader, json!({"id": 1, "cmd": "subscribe", "channel": "feed:a"}));
    let page = common::json_ws::call(
        &mut reader,
        json!({"id": 2, "cmd": "history", "channel": "feed:a", "limit": 2, "reverse": true}),
    );
    assert_eq!(offsets(&page["result"]), vec![8, 7], "{page}");
    assert_eq!(page["result"]["offset"], 8, "{page}");
    let refused =
        common::json_ws::call(&mut reader, json!({"id": 3, "cmd": "history", "channel": "feed:b"}));
    assert_eq!(refused["error"]["code"], "not_subscribed", "{refused}");
    let refused = common::json_ws::call(
        &mut reader,
        json!({"id": 4, "cmd": "history", "channel": "feed:a", "limit": 20000}),
    );
    assert_eq!(refused["error"]["code"], "invalid_command", "{refused}");
}
