//! Python test programs from the rig (grpcio): run in the background, their output
//! collected.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::{python_binary, repo_path};

/// A Python process killed on drop, its stdout lines collected.
pub struct Py {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Py {
    pub fn start(script: &str, args: &[&str], env: &[(&str, &str)]) -> Py {
        let mut child = Command::new(python_binary())
            .arg(repo_path(&format!("tests/grpc/{script}")))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Py { child, lines }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A greeter answering `tag`, on `bind` (`127.0.0.1` or `[::1]`); returns its port.
pub async fn greeter(bind: &str, tag: &str) -> (Py, u16) {
    let py = Py::start("greeter.py", &[&format!("{bind}:0"), tag], &[]);
    let port = super::eventually(
        "the greeter's port",
        std::time::Duration::from_secs(30),
        || async { py.lines().first()?.parse::<u16>().ok() },
    )
    .await;
    (py, port)
}
