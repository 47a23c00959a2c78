//! End to end with the real `sqlrsync` CLI against the real server: a
//! public push with a commit message appears on the web page, an unchanged
//! push stores no version, a version downloaded from the web equals the one
//! pulled by the CLI, and the store verifies afterwards.

use crate::support::*;

#[test]
fn cli_push_web_page_and_unchanged_push() {
    let mut r = Fixture::start();
    let a = r.make("shop.db", 2000);
    let o = run(&mut r.admin_cmd(&[
        "shop.db",
        "team/shop.db",
        "--public",
        "-m",
        "initial <load>",
        "--json",
    ]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "1");
    let v1_hash = version_hash(&a);

    // An unchanged push: no new version.
    let o = run(r.env.sqlrsync().arg(&a).arg("--json"));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "1", "{}", stdout(&o));

    change_rows(&a, 0.05);
    let o = run(r.env.sqlrsync().arg(&a).args(["-m", "second", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "2");

    // The web page lists both versions with their messages (escaped).
    let page = http_get(&r.server().addr, "/team/shop.db");
    assert_eq!(page.0, 200);
    let html = String::from_utf8_lossy(&page.1);
    assert!(html.contains("initial &lt;load&gt;"), "{html}");
    assert!(html.contains("second"));
    assert_eq!(html.matches("<tr><td class=\"num\">").count(), 2, "{html}");

    // Web download of @1 equals the CLI's anonymous pull of @1 (public).
    let dl = http_get(&r.server().addr, "/team/shop.db@1");
    assert_eq!(dl.0, 200);
    std::fs::write(r.path("web-v1.db"), &dl.1).unwrap();
    assert_eq!(version_hash(&r.path("web-v1.db")), v1_hash);
    let o = run(&mut r.cmd(&["team/shop.db@1", "cli-v1.db", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["verified"], true);
    assert_eq!(
        content_digest(&r.path("cli-v1.db")),
        content_digest(&r.path("web-v1.db"))
    );

    let data = r.data.clone();
    r.kill_server();
    assert_ok(&run(r
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data)));
}

/// GET over plain HTTP: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = all[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut b = &body[..];
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let n =
                usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
            b = &b[eol + 4 + n..];
        }
        body = out;
    }
    (status, body)
}

/// `replica list NS` and `versions NS/PATH`: what an operator sees of a
/// namespace and a replica's history, one tab-separated line each, and a
/// hostile commit message shown as one visible line.
#[test]
fn replica_list_and_versions() {
    let r = crate::support::Fixture::start();
    let db = r.make("a.db", 100);
    r.first_push("a.db", "team/a.db");
    crate::support::change_rows(&db, 0.2);
    let o = crate::support::run(
        r.cmd(&["a.db", "-m", "two\nlines\t\u{1b}[2J"])
            .env("SQLRSYNC_ADMIN_KEY", &r.admin),
    );
    crate::support::assert_ok(&o);
    let admin = |args: &[&str]| {
        crate::support::run(
            r.env
                .command(crate::support::SERVER)
                .args(args)
                .arg("--data-dir")
                .arg(&r.data),
        )
    };
    let o = admin(&["replica", "list", "team"]);
    crate::support::assert_ok(&o);
    let out = crate::support::stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("team/a.db\tprivate\t2\t")),
        "{out}"
    );
    let o = admin(&["versions", "team/a.db"]);
    crate::support::assert_ok(&o);
    let out = crate::support::stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // Newest first.
    assert!(
        lines[2].starts_with("1\t") && lines[2].ends_with("\tfirst"),
        "{out}"
    );
    let second: Vec<&str> = lines[1].split('\t').collect();
    assert_eq!(second[0], "2", "{out}");
    assert_eq!(second.len(), 6, "{out}");
    assert_eq!(second[4].len(), 64, "versionHash: {out}");
    assert!(!out.contains('\u{1b}'), "raw escape in {out:?}");
    assert!(second[5].contains("two; lines"), "{out}");
    let o = admin(&["versions", "team/none.db"]);
    assert!(!o.status.success());
    crate::support::assert_one_line_error(&o, "no replica team/none.db");

    // Visibility, changed on the running server: an anonymous pull is
    // refused while private and works once unlisted.
    let anon = || crate::support::run(&mut r.cmd(&["team/a.db", "anon.db"]));
    assert!(!anon().status.success());
    crate::support::assert_ok(&admin(&["replica", "visibility", "team/a.db", "unlisted"]));
    crate::support::assert_ok(&anon());
    let o = admin(&["replica", "list", "team"]);
    assert!(crate::support::stdout(&o).contains("team/a.db\tunlisted\t"));
    let o = admin(&["replica", "visibility", "team/a.db", "secret"]);
    assert!(!o.status.success());
}
