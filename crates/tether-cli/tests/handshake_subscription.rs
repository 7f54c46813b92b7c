//! A `?channel=` subscription exists once the handshake is answered: a publication made right
//! after the client sees its WebSocket open reaches it. (Before: the subscription was made
//! when hyper finished the upgrade, after the 101 had gone out, and a publication in between
//! was missed; CI saw it under load.)

mod common;
use common::*;
use futures_util::StreamExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_right_after_the_handshake_reaches_a_channel_subscriber() {
    let server = Server::start(&[]);
    for i in 0..300 {
        let channel = format!("race{i}");
        let (mut ws, _) =
            tokio_tungstenite::connect_async(server.ws_url(&format!("?channel={channel}")))
                .await
                .unwrap();
        server.publish(&channel, &i.to_string());
        let got = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
        match got {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), i.to_string()),
            other => panic!("connection {i}: the publication made right after the handshake was missed: {other:?}"),
        }
    }
}
