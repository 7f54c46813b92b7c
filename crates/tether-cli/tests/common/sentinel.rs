//! Redis with Sentinel on loopback: a master, a replica, and three Sentinels that fail over
//! quickly (`down-after-milliseconds` 1000), all started here and stopped by PID.

use super::{redis_command, wait_until, Redis};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const MASTER: &str = "main";

pub struct Sentinels {
    pub master: Redis,
    pub replica: Redis,
    sentinels: Vec<(Child, u16)>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sentinels {
    /// `None` when redis-server is missing (an error under CI).
    pub fn start() -> Option<Sentinels> {
        let master = Redis::start()?;
        let of = master.port.to_string();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &of])?;
        let synced =
            || redis_command(master.port, &["INFO", "replication"]).contains("state=online");
        assert!(wait_until(Duration::from_secs(10), synced), "the replica did not sync");
        let bin = super::which("redis-server").unwrap();
        let dir = std::env::temp_dir().join(format!("tether-sentinel-{}-{of}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER} 127.0.0.1 {of} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 4000\n",
                dir.display()
            );
            std::fs::write(&conf, text).unwrap();
            let child = Command::new(&bin)
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            sentinels.push((child, port));
        }
        let s = Sentinels { master, replica, sentinels, dir };
        // Each Sentinel has found the replica and the two other Sentinels (so a quorum can
        // agree on a failover).
        for (_, port) in &s.sentinels {
            let ready = || {
                let up = std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok();
                up && redis_command(*port, &["SENTINEL", "REPLICAS", MASTER]).starts_with("*1")
                    && redis_command(*port, &["SENTINEL", "SENTINELS", MASTER]).starts_with("*2")
            };
            assert!(
                wait_until(Duration::from_secs(20), ready),
                "a Sentinel did not see the others"
            );
        }
        Some(s)
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> =
            self.sentinels.iter().map(|(_, p)| format!("127.0.0.1:{p}")).collect();
        format!("redis-sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The port of the master as the first Sentinel names it.
    pub fn master_port(&self) -> u16 {
        let reply =
            redis_command(self.sentinels[0].1, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
        reply.lines().filter(|l| !l.starts_with(['*', '$'])).nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
