//! Mount the Tether gateway into an existing axum application: the app keeps its own routes,
//! the gateway lives under `/realtime`, both share one listener, and the app publishes to
//! WebSocket subscribers from its own handlers.
//!
//! ```text
//! cargo run -p tether-server --example mount_in_axum
//! # another terminal: subscribe, then place an order through the app's own API
//! cargo run -- connect ws://127.0.0.1:3000/realtime/ws --channel orders
//! curl -X POST http://127.0.0.1:3000/orders -d 'two coffees'
//! ```

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use tether_server::{Gateway, GatewayConfig};

/// The host application's own handler: it does its work, then tells subscribers.
async fn place_order(State(gateway): State<Gateway>, body: String) -> String {
    let data = serde_json::value::to_raw_value(&serde_json::json!({ "order": body }))
        .expect("a JSON value serializes");
    match gateway.publish("orders", &data).await {
        Ok(receipt) => format!("order placed; {} live subscribers told\n", receipt.delivered),
        Err(e) => format!("order placed; live update failed: {e}\n"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = Gateway::new(GatewayConfig::default())?;
    let app = Router::new()
        .route("/", get(|| async { "the host application\n" }))
        .route("/orders", post(place_order))
        .with_state(gateway.clone())
        // The gateway's routes: /realtime/ws, /realtime/api/publish, /realtime/healthz, /realtime/metrics
        .nest("/realtime", gateway.router());

    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let shutdown = {
        let gateway = gateway.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            // Upgraded WebSocket tasks escape axum's graceful shutdown: close them ourselves.
            let report = gateway.shutdown().await;
            println!("closed {} WebSocket connections", report.connections);
        }
    };
    // Connect info gives the gateway each peer's address for its close log.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
