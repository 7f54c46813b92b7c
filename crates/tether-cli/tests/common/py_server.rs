//! A Python `websockets` server (a real third-party peer) on a free loopback port, whose
//! connection handler the test writes; stopped by its PID when dropped.

use super::{python, LineReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PyServer {
    child: Child,
    pub port: u16,
}

impl PyServer {
    /// `handler`: the body of `async def h(ws):`, each line indented by two spaces. `None` when
    /// Python with `websockets` is missing (skipped loudly, or a failure under CI).
    pub fn start(handler: &str) -> Option<PyServer> {
        let python = python()?;
        let code = format!(
            "import asyncio, json\nfrom websockets.asyncio.server import serve\n\
             async def h(ws):\n{handler}\n\
             async def m():\n  async with serve(h, '127.0.0.1', 0) as s:\n    \
             print(json.dumps({{'port': s.sockets[0].getsockname()[1]}}), flush=True)\n    \
             await asyncio.Future()\n\
             asyncio.run(m())"
        );
        let mut child =
            Command::new(python).args(["-c", &code]).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = LineReader::new(child.stdout.take().unwrap());
        let line = out.expect_line(Duration::from_secs(10), "port", |l| l.contains("port"));
        let port: serde_json::Value = serde_json::from_str(&line).unwrap();
        let port = port["port"].as_u64().expect("a port") as u16;
        Some(PyServer { child, port })
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
