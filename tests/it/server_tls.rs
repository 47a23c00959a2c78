//! TLS: `serve --tls-cert --tls-key` answers https:// and wss:// on
//! loopback (self-signed certificate made by openssl; skipped loudly when
//! openssl or curl is missing).

use std::process::Command;

use crate::support::*;

#[test]
fn serves_https_with_the_given_certificate() {
    if which::which("openssl").is_err() || which::which("curl").is_err() {
        eprintln!("\n\n*** SKIPPED: openssl or curl missing; TLS not tested ***\n");
        return;
    }
    let env = TestEnv::new();
    let (cert, key) = (env.path("cert.pem"), env.path("key.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert_ok(&o);
    let data = env.path("data");
    let server = TestServer::start_with(
        &env,
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let o = run(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{}/", server.addr)));
    assert_ok(&o);
    assert!(stdout(&o).contains("sqlrsync server"), "{}", stdout(&o));
    // Plain http on the TLS port is not served.
    let o = run(Command::new("curl")
        .args(["-sS", "-m", "5"])
        .arg(format!("http://{}/", server.addr)));
    assert!(!stdout(&o).contains("sqlrsync server"));

    // A missing key file is one clear error line.
    let o = run(env
        .command(SERVER)
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(env.path("missing.pem"))
        .arg("--data-dir")
        .arg(env.path("data2")));
    assert_one_line_error(&o, "TLS");

    // Plain and TLS from one process (one server per data dir), each on
    // its own --listen.
    let mut child = env
        .command(SERVER)
        .args(["serve", "--listen", "http://127.0.0.1:0", "--listen"])
        .arg("https://127.0.0.1:0")
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--data-dir")
        .arg(env.path("data3"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(2)
        .map(|l| l.unwrap())
        .collect();
    let url = |scheme: &str| {
        lines
            .iter()
            .find_map(|l| {
                l.split("listening on ")
                    .nth(1)
                    .filter(|u| u.starts_with(scheme))
            })
            .unwrap_or_else(|| panic!("no {scheme} listener in {lines:?}"))
            .to_string()
    };
    let (plain, secure) = (url("http://"), url("https://"));
    let o = run(Command::new("curl")
        .args(["-sS", "-m", "5"])
        .arg(format!("{plain}/")));
    assert!(stdout(&o).contains("sqlrsync server"), "{}", stdout(&o));
    let o = run(Command::new("curl")
        .args(["-sS", "-m", "5", "--cacert"])
        .arg(&cert)
        .arg(format!("{secure}/")));
    assert!(stdout(&o).contains("sqlrsync server"), "{}", stdout(&o));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
