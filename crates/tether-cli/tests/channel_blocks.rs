//! `[[channel]]` blocks in a config file decide each channel's options, one option at a time
//! (the first matching block that sets it), and the flat flags of earlier versions still work
//! beside them.

mod common;
use common::json_ws::*;
use common::*;
use serde_json::{json, Value};

const BLOCKS: &str = r#"
[[channel]]
pattern = "chat:quiet"
history = "off"
client_publish = false

[[channel]]
pattern = "chat:*"
history = "3/1m"
client_publish = true
compression = false
"#;

fn config_file(name: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tether-blocks-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// Publish `n` times over the API; the epoch and the last offset.
fn publish_n(server: &Server, channel: &str, n: u64) -> (String, u64) {
    let mut last = Value::Null;
    for i in 0..n {
        last = server.publish(channel, &i.to_string());
    }
    (last["epoch"].as_str().unwrap().to_owned(), last["offset"].as_u64().unwrap())
}

/// Subscribe with `recover` from `offset`; the reply's `recovered` and the publications replayed after it.
fn recover(
    server: &Server,
    channel: &str,
    epoch: &str,
    offset: u64,
    expect: usize,
) -> (Value, Vec<u64>) {
    let mut ws = json_client(server, "");
    let from = json!({"epoch": epoch, "offset": offset});
    let reply =
        call(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": channel, "recover": from}));
    assert!(reply["error"].is_null(), "{reply}");
    let replayed = (0..expect).map(|_| next_json(&mut ws)["offset"].as_u64().unwrap()).collect();
    (reply["result"]["recovered"].clone(), replayed)
}

#[test]
fn each_option_comes_from_the_first_block_that_sets_it_and_flat_flags_still_count() {
    let (dir, file) = config_file("serve", BLOCKS);
    let server = Server::start(&["--config", file.to_str().unwrap(), "--client-publish", "news:*"]);

    // Client publishing: `chat:*` allows it, the `chat:quiet` block before it refuses it, the
    // flat flag allows `news:*`, and nothing else is allowed.
    let mut ws = json_client(&server, "");
    let mut publish = |id: u64, channel: &str| {
        call(&mut ws, json!({"id": id, "cmd": "publish", "channel": channel, "data": id}))
    };
    for (id, channel, allowed) in [
        (1, "chat:lobby", true),
        (2, "chat:quiet", false),
        (3, "news:eu", true),
        (4, "other", false),
    ] {
        let reply = publish(id, channel);
        match allowed {
            true => assert!(reply["error"].is_null(), "{channel}: {reply}"),
            false => assert_eq!(reply["error"]["code"], "publish_forbidden", "{channel}: {reply}"),
        }
    }

    // History: `chat:*` keeps the last 3 publications...
    let (epoch, top) = publish_n(&server, "chat:lobby", 6);
    let (recovered, replayed) = recover(&server, "chat:lobby", &epoch, top - 3, 3);
    assert_eq!((recovered, replayed), (json!(true), vec![top - 2, top - 1, top]));
    let (recovered, _) = recover(&server, "chat:lobby", &epoch, top - 4, 0);
    assert_eq!(recovered, json!(false), "the 4th-last is gone");
    // ...and `chat:quiet`, whose block turns history off, keeps none.
    let (epoch, top) = publish_n(&server, "chat:quiet", 2);
    let (recovered, _) = recover(&server, "chat:quiet", &epoch, top - 1, 0);
    assert_eq!(recovered, json!(false), "no history on chat:quiet");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn print_config_shows_the_blocks_and_bad_blocks_are_refused_by_name() {
    let (dir, file) = config_file("print", BLOCKS);
    let path = file.to_str().unwrap();
    let out =
        tether(&["serve", "--config", path, "--print-config", "--history", "feed=10/1m"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let cfg: toml::Value = toml::from_str(&stdout).unwrap();
    let blocks = cfg["channel"].as_array().unwrap();
    let patterns: Vec<&str> = blocks.iter().map(|b| b["pattern"].as_str().unwrap()).collect();
    assert_eq!(patterns, ["chat:quiet", "chat:*", "feed"], "written blocks first, then the flag's");
    assert_eq!(blocks[1]["history"].as_str(), Some("3/1m"));
    assert_eq!(blocks[2]["history"].as_str(), Some("10/1m"));
    assert!(cfg.get("history").is_none(), "the flat setting is shown as a block:\n{stdout}");
    // What it prints reads back the same.
    std::fs::write(&file, &stdout).unwrap();
    assert_eq!(text(&tether(&["serve", "--config", path, "--print-config"], &[])).0, stdout);

    for (block, needle) in [
        ("pattern = \"a\"\nhistory = \"lots\"", "expected SIZE/TTL"),
        ("pattern = \"a\"\nhistroy = \"1/1s\"", "histroy"),
        ("pattern = \"a\"\nhistory = \"0/1m\"", "channel.history"),
        ("history = \"1/1m\"", "pattern"),
    ] {
        std::fs::write(&file, format!("[[channel]]\n{block}\n")).unwrap();
        let out = tether(&["serve", "--config", path, "--print-config"], &[]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{block:?} should be refused");
        assert!(stderr.contains(needle), "{block:?}: expected {needle:?} in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
