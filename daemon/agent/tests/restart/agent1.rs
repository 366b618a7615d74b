//! Agent 1 of the restart test: a child copy of the test binary running `restart_agent_child`
//! (load pinned, attach, apply, read the ring), spawned, followed by its output, and killed.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowgate::lab::Lab;

use super::support::PinDir;

/// A child copy of this test binary running agent 1; killed if the test fails first.
pub struct Agent1 {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Agent1 {
    pub fn spawn(lab: &Lab, pins: &PinDir, pods: &[(String, String, u32)]) -> Self {
        let config = serde_json::json!({
            "netns": lab.node_netns(),
            "pin_dir": pins.path,
            "pods": pods,
        });
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "restart_agent_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FLOWGATE_RESTART_CHILD", config.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The value of the first line `<tag> <value>` (libtest may print before it on the line).
    pub fn wait_for(&self, tag: &str, done: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("agent 1 never printed {tag}"));
            if let Some((_, value)) = line.split_once(&format!("{tag} "))
                && let Ok(value) = value.trim().parse()
                && done(value)
            {
                return value;
            }
        }
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Agent1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
