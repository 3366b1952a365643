//! Client processes (mosquitto_sub, paho, ...) whose stdout a test follows
//! line by line while they run, to know when they are ready and what they
//! received.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long [`Proc::expect_line`] waits on a loaded machine.
const T: Duration = Duration::from_secs(30);

/// A client process whose stdout is followed line by line while it runs.
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Self::spawn_with_stdin(cmd, None)
    }

    /// Spawns `cmd`; with `input`, writes it to the child's stdin and
    /// closes stdin.
    pub fn spawn_with_stdin(cmd: &mut Command, input: Option<&str>) -> Proc {
        let name = format!("{cmd:?}");
        let mut child = cmd
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).expect("write stdin");
        }
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The stdout lines read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Reads lines until one satisfies `pred`; false on timeout or EOF.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        if self.seen.iter().any(|l| pred(l)) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return false
                }
            }
        }
    }

    /// Panics with the output so far unless a line satisfying `pred` comes.
    pub fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) {
        if !self.wait_line(T, pred) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.drain();
            let err = self.stderr_text();
            panic!(
                "{}: no {what} within {T:?}\nstdout:\n{}\nstderr:\n{err}",
                self.name,
                self.seen.join("\n"),
            );
        }
    }

    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
    }

    pub fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Waits for the process to exit (killing it after `timeout`) and
    /// returns its exit code, every stdout line, and stderr.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let code = self.child.wait().ok().and_then(|s| s.code());
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let err = self.stderr_text();
        (code, std::mem::take(&mut self.seen), err)
    }

    /// SIGKILL: the client gets no chance to send DISCONNECT.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
