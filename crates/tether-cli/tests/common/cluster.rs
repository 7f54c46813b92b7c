//! A Redis Cluster on loopback: three masters and three replicas (`cluster-node-timeout`
//! 1000 ms, so a killed master's replica takes over within seconds), made with
//! `redis-cli --cluster create`, every process started here and stopped by PID.

use super::{redis_command, require, wait_until, which, Redis};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    /// `None` when redis-server or redis-cli is missing (an error under CI).
    pub fn start() -> Option<Cluster> {
        let cli = require("redis-cli (apt-get install redis-tools)", which("redis-cli"))?;
        let mut nodes = Vec::new();
        for _ in 0..6 {
            // The cluster bus port is PORT+10000 unless given: above 55535 that is no port.
            let bus = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let bus = bus.port().to_string();
            let args = [
                "--cluster-port",
                &bus,
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                "--repl-diskless-sync-delay",
                "0",
            ];
            nodes.push(Redis::start_with(&args)?);
        }
        let mut create = Command::new(cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let status = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Cluster { nodes };
        for node in &cluster.nodes {
            let ok = || redis_command(node.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok");
            assert!(wait_until(Duration::from_secs(20), ok), "the cluster did not form");
        }
        // Every replica in sync with its master: one that never synced may not take over.
        for node in &cluster.nodes {
            let synced = || {
                let info = redis_command(node.port, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            };
            assert!(wait_until(Duration::from_secs(20), synced), "a replica did not sync");
        }
        Some(cluster)
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> =
            self.nodes[..3].iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// The index of the master that owns `key`'s slot now.
    pub fn owner(&self, key: &str) -> usize {
        let slot = redis_command(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = slot.trim().trim_start_matches(':').parse().unwrap();
        let nodes = redis_command(self.nodes[0].port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            if owns {
                let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master owns slot {slot}: {nodes}");
    }
}
