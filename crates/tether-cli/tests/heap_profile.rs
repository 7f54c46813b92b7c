//! Heap profiles on demand from the running `tether` binary (jemalloc with profiling compiled
//! in, served as pprof by `jemalloc_pprof`), behind the API key; allocator figures in /metrics.

mod common;
use common::*;
use std::io::Read;
use std::time::Duration;

const KEY: &str = "profile-key-0123456789";

fn request(method: &str, url: &str, key: Option<&str>) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = match method {
        "POST" => agent.post(url),
        _ => agent.get(url).force_send_body(),
    };
    if let Some(key) = key {
        req = req.header("authorization", &format!("Bearer {key}"));
    }
    let mut resp = req.send_empty().expect("HTTP request");
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    resp.body_mut().as_reader().read_to_end(&mut body).unwrap();
    (status, body)
}

#[test]
fn a_heap_profile_in_pprof_format_behind_the_api_key() {
    let server =
        Server::start(&["--api-key", KEY, "--max-message-size", "1MiB", "--history", "big=100/5m"]);
    let heap = server.http("/debug/pprof/heap");
    let activate = server.http("/debug/pprof/heap/activate");

    // The API key guards it.
    assert_eq!(request("GET", &heap, None).0, 401);
    assert_eq!(request("POST", &activate, Some("wrong-key-0123456789")).0, 403);
    // Not sampling yet: a clear 409 that says what to do.
    let (status, body) = request("GET", &heap, Some(KEY));
    assert_eq!(status, 409);
    assert!(String::from_utf8_lossy(&body).contains("/debug/pprof/heap/activate"));

    let (status, body) = request("POST", &activate, Some(KEY));
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, r#"{"active":true}"#));
    // Something worth sampling: history of large publications kept in memory.
    for n in 0..40 {
        let body = format!(r#"{{"channel":"big","data":"{}{n}"}}"#, "x".repeat(200_000));
        let (status, _) = request_publish(&server, &body);
        assert_eq!(status, 200);
    }
    let (status, pprof) = request("GET", &heap, Some(KEY));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&pprof));
    assert_eq!(&pprof[..2], &[0x1f, 0x8b], "gzip");
    let mut proto = Vec::new();
    flate2::read::GzDecoder::new(&pprof[..]).read_to_end(&mut proto).unwrap();
    // The profile's mappings name the binary it sampled.
    let text = String::from_utf8_lossy(&proto);
    assert!(text.contains("tether"), "no mapping of the tether binary in {} bytes", proto.len());
    assert!(proto.len() > 200, "an empty profile: {} bytes", proto.len());

    let (status, body) = request("POST", &server.http("/debug/pprof/heap/deactivate"), Some(KEY));
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, r#"{"active":false}"#));

    // Allocator figures beside the process's.
    let metrics = server.metrics();
    for name in [
        "tether_allocator_allocated_bytes",
        "tether_allocator_active_bytes",
        "tether_allocator_resident_bytes",
    ] {
        assert!(metric_sum(&metrics, name) > 0.0, "{name} missing:\n{metrics}");
    }
}

fn request_publish(server: &Server, body: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .post(&server.http("/api/publish"))
        .header("authorization", &format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_json().unwrap_or(serde_json::Value::Null))
}
