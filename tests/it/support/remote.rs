//! Support shared by the remote client tests (tests/remote_*.rs): a real
//! `sqlrsync-server` on loopback with one namespace, and small helpers to
//! run the real `sqlrsync` against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

/// A test environment with a running server and an Account Admin key.
pub struct Remote {
    pub env: TestEnv,
    pub server: TestServer,
    /// Account Admin key of namespace `team`.
    pub admin: String,
}

impl Remote {
    pub fn start() -> Remote {
        let env = TestEnv::new();
        let data = env.path("server-data");
        std::fs::create_dir_all(&data).unwrap();
        let server = TestServer::start(&env, &data);
        let admin = server.create_namespace(&env, "team");
        Remote { env, server, admin }
    }

    /// `sqlrsync ARGS --server ws://…`
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.sqlrsync();
        c.args(args).arg("--server").arg(self.server.ws_url());
        c
    }

    /// Same, with the admin key in SQLRSYNC_ADMIN_KEY.
    pub fn admin_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(args);
        c.env("SQLRSYNC_ADMIN_KEY", &self.admin);
        c
    }

    pub fn db(&self, name: &str) -> PathBuf {
        self.env.path(name)
    }

    /// A database `name` in the env dir with `rows` rows.
    pub fn make(&self, name: &str, rows: u32) -> PathBuf {
        let p = self.db(name);
        make_db(
            &p,
            DbSpec {
                rows,
                ..DbSpec::default()
            },
        );
        p
    }

    /// First push of `local` to `remote` with the admin key; returns JSON.
    pub fn first_push(&self, local: &str, remote: &str) -> serde_json::Value {
        let o = run(self
            .admin_cmd(&[local, remote, "--json"])
            .arg("-m")
            .arg("first"));
        assert_ok(&o);
        json(&o)
    }
}

/// The JSON object on the last stdout line.
#[track_caller]
pub fn json(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no stdout; stderr: {}", stderr(o)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// (path, sha256) of every file under `dir`: a snapshot to compare.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let h = file_sha256(&p);
            (p, h)
        })
        .collect()
}

/// The `--pullKey=` value of a -sqlrsync file.
pub fn dash_pull_key(db: &Path) -> String {
    let mut p = db.as_os_str().to_os_string();
    p.push("-sqlrsync");
    let text = std::fs::read_to_string(PathBuf::from(p)).unwrap();
    let at = text
        .find("--pullKey=")
        .expect("a pullKey in the -sqlrsync file")
        + "--pullKey=".len();
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}
