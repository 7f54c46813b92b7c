//! `wss://` with a certificate made by the test (rcgen): a private CA signs a certificate for
//! localhost. The Rust client connects when told to trust that CA, and stops with a clear
//! certificate error when it is not.

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::PathBuf;
use std::time::Duration;
use tether_client::{Event, StopReason};

const T: Duration = Duration::from_secs(10);

/// A CA and a localhost certificate it signed, as PEM files: (ca, cert, key).
fn pki(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(DnType::CommonName, "Tether test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca_trusted_by_the_client_and_refused_without_it() {
    let dir = std::env::temp_dir().join(format!("tether-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = pki(&dir);
    let server = tokio::task::spawn_blocking(move || {
        Server::start(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--client-publish",
            "news",
        ])
    })
    .await
    .unwrap();
    let url = format!("wss://localhost:{}/ws", server.addr.port());

    // Trusting the CA: connected, subscribed, and its own publication comes back over TLS.
    let config = fast_client(url.clone()).with_ca_file(&ca).unwrap();
    let (client, mut events) = tether_client::connect(config);
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    client.subscribe("news").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    let data = serde_json::value::RawValue::from_string(r#"{"over":"tls"}"#.into()).unwrap();
    client.publish("news", data).await.unwrap();
    let got =
        next_event(&mut events, T, "the publication", |e| matches!(e, Event::Publication { .. }))
            .await;
    let Event::Publication { data, .. } = got else { unreachable!() };
    assert_eq!(data.get(), r#"{"over":"tls"}"#);

    // Not trusting it: the client stops at once (retrying cannot help) and says why.
    let (_client, mut events) = tether_client::connect(fast_client(url));
    let stopped =
        next_event(&mut events, T, "stopped", |e| matches!(e, Event::Stopped { .. })).await;
    let Event::Stopped { reason: StopReason::Refused(why) } = stopped else {
        panic!("expected a refusal, got {stopped:?}")
    };
    assert!(why.contains("certificate") && why.contains("--ca-cert"), "{why}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_certificate_file_is_a_start_up_error() {
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent.pem"), "{stderr}");
}

#[test]
fn the_doctor_times_the_tls_handshake_and_names_an_untrusted_certificate() {
    let dir = std::env::temp_dir().join(format!("tether-tls-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = pki(&dir);
    let server =
        Server::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let ca = ca.to_str().unwrap();
    let out = tether(&["doctor", &url, "--ca-cert", ca, "--pings", "2", "--json"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let tls = &report["opening"]["tls"];
    assert!(tls["ms"].as_f64().unwrap() > 0.0, "{tls}");
    assert_eq!(tls["version"], "TLSv1_3", "{tls}");
    assert_eq!(report["http_stream"]["ok"], true, "the fallback over TLS too: {report:#}");

    let out = tether(&["doctor", &url, "--pings", "2"], &[]);
    let (stdout, _) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.contains("certificate") && stdout.contains("--ca-cert"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
