//! Putting rendered configuration in force: the files in `--config-dir` (written
//! atomically, a rename over the old), `nginx -t`, SIGHUP to the master, and the
//! confirmation that the new workers serve it.
//!
//! The confirmation is a server nginx runs for the agent alone: `http.conf` ends with a
//! server on a unix socket in the config directory that answers the configuration's
//! generation (a digest of the rendered text). Once it answers the new generation, the
//! new workers serve; the old ones finish their connections and exit. A configuration
//! `nginx -t` refuses, or one the master does not take (a port it can't bind), leaves the
//! previous files in place and is reported with nginx's own message.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::render::Rendered;

/// The file the main nginx.conf includes at the main level (it holds a `stream {}`).
pub const STREAM_FILE: &str = "stream.conf";
/// The file the main nginx.conf includes inside its `http {}` block.
pub const HTTP_FILE: &str = "http.conf";
/// The unix socket nginx answers the generation on.
pub const GENERATION_SOCKET: &str = "generation.sock";
/// The generation nginx last took from the control plane (absent until it took one):
/// what a readiness probe checks.
pub const APPLIED_FILE: &str = "applied";

/// Where the nginx master's pid comes from.
#[derive(Clone, Debug)]
pub enum Master {
    /// nginx runs under the agent (`--` command): its pid, 0 when not running.
    Supervised(Arc<AtomicI32>),
    /// nginx runs on its own: its pid file.
    PidFile(PathBuf),
}

impl Master {
    /// The running master's pid.
    fn pid(&self) -> Option<Pid> {
        let pid = match self {
            Master::Supervised(pid) => pid.load(Ordering::SeqCst),
            Master::PidFile(path) => std::fs::read_to_string(path).ok()?.trim().parse().ok()?,
        };
        let pid = Pid::from_raw(pid);
        (pid.as_raw() > 0 && kill(pid, None).is_ok()).then_some(pid)
    }
}

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The text is what nginx already has.
    Unchanged,
    /// Written and valid; nginx is not running and will read it when it starts.
    Written,
    /// nginx reloaded and serves it, after this long from the signal.
    Reloaded(Duration),
}

/// One nginx and its configuration directory.
#[derive(Debug)]
pub struct Nginx {
    dir: PathBuf,
    /// `nginx -t` with the options nginx runs with.
    test: Vec<OsString>,
    master: Master,
    reload_timeout: Duration,
    /// The generation of the files in force.
    generation: Option<String>,
}

/// The two files of a rendered configuration, and its generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    pub stream: String,
    pub http: String,
    pub generation: String,
}

/// The text of the files for `rendered`, for a config directory at `dir` (absolute).
pub fn files(rendered: &Rendered, dir: &Path) -> Files {
    let generation = format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{}\0{}", rendered.stream, rendered.http).as_bytes())
    );
    let header = format!(
        "# Written by dualstack-xds nginx (generation {generation}); rewritten at every change.\n"
    );
    Files {
        stream: format!("{header}{}", rendered.stream),
        http: format!(
            "{header}{}    # The agent's check that nginx serves this generation.\n    server {{\n        listen unix:{}/{GENERATION_SOCKET};\n        access_log off;\n        return 200 \"{generation}\\n\";\n    }}\n",
            rendered.http,
            dir.display()
        ),
        generation,
    }
}

impl Nginx {
    /// `dir` is made absolute (nginx reads the files from its own working directory);
    /// `test` is the nginx command line that `-t` is added to.
    pub fn new(
        dir: &Path,
        test: Vec<OsString>,
        master: Master,
        reload_timeout: Duration,
    ) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let dir = std::fs::canonicalize(dir)?;
        Ok(Nginx {
            dir,
            test,
            master,
            reload_timeout,
            generation: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the included files exist so that nginx starts before the first
    /// configuration arrives: kept when present (nginx serves the last configuration
    /// across restarts of the agent), empty otherwise. Removes a socket left by an nginx
    /// that was killed, which would keep a new one from starting.
    pub fn prepare(&mut self) -> anyhow::Result<()> {
        let empty = files(&Rendered::default(), &self.dir);
        // Files written for another directory (copied, or the directory moved) would have
        // nginx answer the generation elsewhere: start from empty ones then.
        let ours = format!("listen unix:{}/{GENERATION_SOCKET};", self.dir.display());
        let current = std::fs::read_to_string(self.dir.join(HTTP_FILE)).ok();
        let keep = current.as_deref().is_some_and(|t| t.contains(&ours))
            && self.dir.join(STREAM_FILE).exists();
        if !keep {
            if current.is_some() {
                tracing::warn!(dir = %self.dir.display(), "{HTTP_FILE} was written for another directory; starting from empty files");
            }
            write_atomic(&self.dir.join(STREAM_FILE), &empty.stream)?;
            write_atomic(&self.dir.join(HTTP_FILE), &empty.http)?;
        }
        if self.master.pid().is_none() {
            let _ = std::fs::remove_file(self.dir.join(GENERATION_SOCKET));
        }
        Ok(())
    }

    /// Puts `rendered` in force; the reason when nginx refuses it (the previous files are
    /// back in place then).
    pub async fn apply(&mut self, rendered: &Rendered) -> Result<Applied, String> {
        let files = files(rendered, &self.dir);
        if self.generation.as_deref() == Some(files.generation.as_str()) {
            return Ok(Applied::Unchanged);
        }
        let stream_path = self.dir.join(STREAM_FILE);
        let http_path = self.dir.join(HTTP_FILE);
        let previous = (
            std::fs::read_to_string(&stream_path).unwrap_or_default(),
            std::fs::read_to_string(&http_path).unwrap_or_default(),
        );
        let restore = |why: String| -> String {
            let _ = write_atomic(&stream_path, &previous.0);
            let _ = write_atomic(&http_path, &previous.1);
            why
        };
        if previous.0 == files.stream && previous.1 == files.http && self.generation.is_none() {
            // The agent restarted beside an nginx that already serves this text.
            if self.current_generation().await.as_deref() == Some(files.generation.as_str()) {
                self.took(files.generation);
                return Ok(Applied::Unchanged);
            }
        }
        write_atomic(&stream_path, &files.stream).map_err(|e| restore(e.to_string()))?;
        write_atomic(&http_path, &files.http).map_err(|e| restore(e.to_string()))?;
        if let Err(e) = self.test().await {
            return Err(restore(e));
        }
        let Some(pid) = self.master.pid() else {
            self.took(files.generation);
            return Ok(Applied::Written);
        };
        let start = Instant::now();
        // nginx handles SIGHUP only once it has started (before, the signal ends it): wait
        // until it answers; it may answer the new generation already (it read the files
        // while starting).
        loop {
            match self.current_generation().await {
                Some(g) if g == files.generation => {
                    self.took(files.generation);
                    return Ok(Applied::Reloaded(start.elapsed()));
                }
                Some(_) => break,
                None if start.elapsed() > self.reload_timeout => {
                    return Err(restore(format!(
                        "nginx (pid {pid}) does not answer on {}: its main configuration must include {HTTP_FILE} inside http {{}}",
                        self.dir.join(GENERATION_SOCKET).display()
                    )));
                }
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        if kill(pid, Signal::SIGHUP).is_err() {
            self.took(files.generation);
            return Ok(Applied::Written);
        }
        loop {
            if self.current_generation().await.as_deref() == Some(files.generation.as_str()) {
                let took = start.elapsed();
                self.took(files.generation);
                return Ok(Applied::Reloaded(took));
            }
            if start.elapsed() > self.reload_timeout {
                let error = restore(format!(
                    "nginx did not take the configuration within {:?} of the reload signal (its error log says why: a port it can't bind, for instance)",
                    self.reload_timeout
                ));
                // Should the reload still come, nginx goes back to the restored files.
                let _ = kill(pid, Signal::SIGHUP);
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Records that nginx took `generation`.
    fn took(&mut self, generation: String) {
        if let Err(e) = write_atomic(&self.dir.join(APPLIED_FILE), &generation) {
            tracing::warn!(error = %e, "writing {APPLIED_FILE}");
        }
        self.generation = Some(generation);
    }

    /// Runs `nginx -t`; its error lines when it refuses.
    async fn test(&self) -> Result<(), String> {
        let Some((program, args)) = self.test.split_first() else {
            return Ok(());
        };
        let output = tokio::process::Command::new(program)
            .args(args)
            .arg("-t")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("running {} -t: {e}", program.to_string_lossy()))?;
        if output.status.success() {
            return Ok(());
        }
        Err(nginx_error(&String::from_utf8_lossy(&output.stderr)))
    }

    /// The generation the running nginx answers, if it answers.
    pub async fn current_generation(&self) -> Option<String> {
        let socket = self.dir.join(GENERATION_SOCKET);
        let ask = async {
            let mut stream = tokio::net::UnixStream::connect(&socket).await.ok()?;
            stream
                .write_all(b"GET / HTTP/1.0\r\nHost: dualstack-xds\r\n\r\n")
                .await
                .ok()?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.ok()?;
            let (head, body) = reply.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200")
                .then(|| body.trim().to_owned())
        };
        tokio::time::timeout(Duration::from_secs(1), ask)
            .await
            .ok()
            .flatten()
    }
}

/// The lines of `nginx -t`'s output that say what is wrong.
pub fn nginx_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("[emerg]") || l.contains("[alert]") || l.contains("[crit]"))
        .map(|l| l.split_once("] ").map_or(l, |(_, rest)| rest))
        .map(|l| {
            // Drop the pid#tid: prefix of nginx's log format.
            l.split_once(": ")
                .filter(|(pid, _)| pid.contains('#'))
                .map_or(l, |(_, rest)| rest)
        })
        .collect();
    if lines.is_empty() {
        stderr.trim().to_owned()
    } else {
        lines.join("; ")
    }
}

/// Writes `text` to `path` by a rename over it: nginx never reads half a file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_error_keeps_what_is_wrong() {
        let stderr = "nginx: [emerg] duplicate \"0.0.0.0:5432\" address and port pair in /run/dsx/stream.conf:9\nnginx: configuration file /etc/nginx/nginx.conf test failed\n";
        assert_eq!(
            nginx_error(stderr),
            "duplicate \"0.0.0.0:5432\" address and port pair in /run/dsx/stream.conf:9"
        );
        assert_eq!(nginx_error("something else\n"), "something else");
    }

    /// An "nginx" whose `-t` passes, or fails with an nginx-like message.
    fn fake_nginx(ok: bool) -> Vec<OsString> {
        let script = if ok {
            "exit 0"
        } else {
            "echo 'nginx: [emerg] unknown directive \"bogus\" in /x/stream.conf:3' >&2; echo 'nginx: configuration file /x/nginx.conf test failed' >&2; exit 1"
        };
        ["sh", "-c", script, "nginx"].map(OsString::from).to_vec()
    }

    fn rendered(text: &str) -> Rendered {
        Rendered {
            stream: format!("stream {{\n{text}}}\n"),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_valid_configuration_is_written_once_and_a_refused_one_leaves_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let master = Master::PidFile(dir.path().join("none.pid"));
        let mut nginx = Nginx::new(
            dir.path(),
            fake_nginx(true),
            master.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        // Files of another directory are not kept.
        std::fs::write(
            dir.path().join(HTTP_FILE),
            "    server {\n        listen unix:/elsewhere/generation.sock;\n    }\n",
        )
        .unwrap();
        nginx.prepare().unwrap();
        assert!(dir.path().join(STREAM_FILE).exists());
        assert!(std::fs::read_to_string(dir.path().join(HTTP_FILE))
            .unwrap()
            .contains(&format!(
                "listen unix:{}/generation.sock;",
                nginx.dir().display()
            )));
        assert!(!dir.path().join(APPLIED_FILE).exists(), "nothing taken yet");

        // nginx is not running: written, valid, taken when it starts.
        let good = rendered("    # a\n");
        assert_eq!(nginx.apply(&good).await, Ok(Applied::Written));
        let stream = std::fs::read_to_string(dir.path().join(STREAM_FILE)).unwrap();
        assert!(stream.ends_with("stream {\n    # a\n}\n"));
        let generation = files(&good, nginx.dir()).generation;
        assert_eq!(
            std::fs::read_to_string(dir.path().join(APPLIED_FILE)).unwrap(),
            generation
        );
        // The same text again: nothing to do.
        assert_eq!(nginx.apply(&good).await, Ok(Applied::Unchanged));

        // `nginx -t` refuses: its message, and the previous files back.
        let mut refusing = Nginx::new(
            dir.path(),
            fake_nginx(false),
            master,
            Duration::from_secs(1),
        )
        .unwrap();
        refusing.generation = Some(generation.clone());
        let error = refusing.apply(&rendered("    bogus;\n")).await.unwrap_err();
        assert_eq!(error, "unknown directive \"bogus\" in /x/stream.conf:3");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(STREAM_FILE)).unwrap(),
            stream
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(APPLIED_FILE)).unwrap(),
            generation
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn the_generation_follows_the_text_and_is_served_on_the_socket() {
        let a = Rendered {
            stream: "stream {\n}\n".into(),
            ..Default::default()
        };
        let b = Rendered {
            stream: "stream {\n }\n".into(),
            ..Default::default()
        };
        let dir = Path::new("/run/dsx");
        let (fa, fb) = (files(&a, dir), files(&b, dir));
        assert_ne!(fa.generation, fb.generation);
        assert_eq!(fa, files(&a, dir));
        assert!(fa.http.contains("listen unix:/run/dsx/generation.sock;"));
        assert!(fa
            .http
            .contains(&format!("return 200 \"{}\\n\";", fa.generation)));
        assert!(fa.stream.ends_with("stream {\n}\n"));
    }
}
