//! The fixture of every test that needs a server: an isolated HOME
//! ([`TestEnv`]), a real `sqlrsync-server` on loopback with its data dir,
//! and one namespace with its Account Admin key. The fault tests kill the
//! server and restart it on the same data dir (support/faults.rs adds the
//! looks into its metadata).

use std::path::PathBuf;
use std::process::Command;

use super::*;

pub struct Fixture {
    /// The running server (None between `kill_server` and
    /// `restart_server`). Declared before `env`, so it is killed before
    /// its data dir is removed.
    server: Option<TestServer>,
    pub env: TestEnv,
    /// The server's data dir (`server-data` in the env unless the test
    /// chose another), kept across restarts.
    pub data: PathBuf,
    /// Its Account Admin key.
    pub admin: String,
    /// Extra `serve` arguments and environment, repeated on every restart.
    serve_args: Vec<String>,
    serve_env: Vec<(String, String)>,
}

impl Fixture {
    /// Namespace `team`, default `serve` options.
    pub fn start() -> Fixture {
        Self::with("team", &[])
    }

    /// Namespace `namespace`, `serve` with `serve_args`.
    pub fn with(namespace: &str, serve_args: &[&str]) -> Fixture {
        Self::with_env(namespace, serve_args, &[])
    }

    /// Same, with `serve_env` in the server's environment.
    pub fn with_env(namespace: &str, serve_args: &[&str], serve_env: &[(&str, &str)]) -> Fixture {
        let env = TestEnv::new();
        let data = env.path("server-data");
        Self::build(env, data, namespace, serve_args, serve_env)
    }

    /// The same in an env the test prepared (files the server needs before
    /// it starts, such as TLS certificates), with the data dir `data`.
    pub fn in_env(env: TestEnv, data: PathBuf, namespace: &str, serve_args: &[&str]) -> Fixture {
        Self::build(env, data, namespace, serve_args, &[])
    }

    fn build(
        env: TestEnv,
        data: PathBuf,
        namespace: &str,
        serve_args: &[&str],
        serve_env: &[(&str, &str)],
    ) -> Fixture {
        std::fs::create_dir_all(&data).unwrap();
        let mut f = Fixture {
            server: None,
            env,
            data,
            admin: String::new(),
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            serve_env: serve_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        f.restart_server();
        f.admin = f.server().create_namespace(&f.env, namespace);
        f
    }

    pub fn server(&self) -> &TestServer {
        self.server.as_ref().expect("server running")
    }

    pub fn server_mut(&mut self) -> &mut TestServer {
        self.server.as_mut().expect("server running")
    }

    pub fn ws_url(&self) -> String {
        self.server().ws_url()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.env.path(name)
    }

    /// A database `name` in the env dir with `rows` rows.
    pub fn make(&self, name: &str, rows: u32) -> PathBuf {
        let p = self.path(name);
        make_db(
            &p,
            DbSpec {
                rows,
                ..DbSpec::default()
            },
        );
        p
    }

    /// `sqlrsync ARGS --server ws://…`, no key.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.sqlrsync();
        c.args(args).arg("--server").arg(self.ws_url());
        c
    }

    /// Same, with the admin key in SQLRSYNC_ADMIN_KEY.
    pub fn admin_cmd(&self, args: &[&str]) -> Command {
        self.admin_cmd_to(&self.ws_url(), args)
    }

    /// Same, against another URL (a proxy in front of the server).
    pub fn admin_cmd_to(&self, url: &str, args: &[&str]) -> Command {
        let mut c = self.env.sqlrsync();
        c.args(args)
            .arg("--server")
            .arg(url)
            .env("SQLRSYNC_ADMIN_KEY", &self.admin);
        c
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

    /// SIGKILLs the server and reaps it.
    pub fn kill_server(&mut self) {
        let mut s = self.server.take().expect("server running");
        sigkill(&mut s.child);
        let _ = s.child.wait();
    }

    /// SIGTERMs the server (a graceful stop), waits up to 30 s for it to
    /// exit and returns the address it listened on.
    pub fn stop_server(&mut self) -> String {
        let mut s = self.server.take().expect("server running");
        unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the server did not stop within 30 s of SIGTERM; its log:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s.addr.clone()
    }

    /// Starts the server again on the same data dir and on `addr` (the
    /// port a graceful stop freed), so clients reconnect to the same URL.
    pub fn restart_server_at(&mut self, addr: &str) {
        assert!(self.server.is_none(), "stop the server first");
        let mut args: Vec<&str> = self.serve_args.iter().map(String::as_str).collect();
        args.extend(["--listen", addr]);
        let vars = &self.serve_env;
        self.server = Some(TestServer::start_cmd(&self.env, &self.data, &args, |c| {
            c.envs(vars.iter().map(|(k, v)| (k, v)));
        }));
    }

    /// Starts the server again on the same data dir (a new port).
    pub fn restart_server(&mut self) {
        assert!(self.server.is_none(), "kill the server first");
        let args: Vec<&str> = self.serve_args.iter().map(String::as_str).collect();
        let vars = &self.serve_env;
        self.server = Some(TestServer::start_cmd(&self.env, &self.data, &args, |c| {
            c.envs(vars.iter().map(|(k, v)| (k, v)));
        }));
    }
}
