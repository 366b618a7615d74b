//! Child copies of the test binary running `lab_child_process`, for the Ctrl-C and stale-lab
//! tests: spawned, awaited, and killed if a test fails before they exit.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A child process that is killed if the test fails before it exits.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `lab_child_process` in a child copy of this test binary and waits for its lab.
pub fn spawn_child(mode: &str) -> (ChildGuard, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "lab_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLOWGATE_LAB_CHILD", mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = ChildGuard(child);
    let node = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test lab_child_process ... " before the test's own output.
        .find_map(|line| {
            line.split_once("LAB-READY ")
                .map(|(_, node)| node.trim().to_owned())
        })
        .expect("the child prints LAB-READY once its lab is built");
    assert!(
        Path::new("/run/netns").join(&node).exists(),
        "the child's lab exists"
    );
    (child, node)
}

pub fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        thread::sleep(Duration::from_millis(20));
    }
}
