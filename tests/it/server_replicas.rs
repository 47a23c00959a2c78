//! Managing replicas and reading their history, with the real server and
//! the real client: `replica show` and `replica rename` (next to a running
//! server), the client's `--versions` over the server's JSON listing (a
//! pull key, a `-sqlrsync` file, refusals), and point-in-time pulls
//! (`NAME@TIME`, `NAME@DATE`), refused clearly where they cannot be served.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;

use crate::support::*;

/// `sqlrsync-server ARGS --data-dir DATA`.
fn admin(r: &Fixture, args: &[&str]) -> Output {
    run(r
        .env
        .command(SERVER)
        .args(args)
        .arg("--data-dir")
        .arg(&r.data))
}

/// `replica show`'s `name: value` lines as pairs.
fn show(r: &Fixture, path: &str) -> Vec<(String, String)> {
    let o = admin(r, &["replica", "show", path]);
    assert_ok(&o);
    stdout(&o)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
}

/// GET over plain HTTP: (status, lowercase head, body); the server answers
/// our HTTP/1.0 request without chunking.
fn get(addr: &str, target: &str, key: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: {k}\r\n"));
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, all[split + 4..].to_vec())
}

/// A push of `local` (already pushed once) with the admin key; its JSON.
fn push(r: &Fixture, local: &str, message: &str) -> serde_json::Value {
    let o = run(&mut r.admin_cmd(&[local, "-m", message, "--json"]));
    assert_ok(&o);
    json(&o)
}

/// A replica-pull key for `path`, made by `keys create`.
fn pull_key(r: &Fixture, path: &str) -> String {
    let o = admin(
        r,
        &[
            "keys",
            "create",
            "team",
            "--kind",
            "replica-pull",
            "--replica",
            path,
        ],
    );
    assert_ok(&o);
    stdout(&o).lines().last().unwrap().trim().to_string()
}

/// `replica show` tells what the store records; `replica rename` moves the
/// replica under a running server: the new path serves the same versions at
/// the next request, the old one is gone, keys and pushes follow.
#[test]
fn show_and_rename_next_to_a_running_server() {
    let r = Fixture::start();
    let db = r.make("a.db", 200);
    r.first_push("a.db", "team/a.db");
    let before = show(&r, "team/a.db");
    assert_eq!(field(&before, "path"), "team/a.db");
    assert_eq!(field(&before, "visibility"), "private");
    assert_eq!(field(&before, "latest"), "1");
    assert_eq!(field(&before, "versions"), "1");
    assert_eq!(field(&before, "message"), "first");
    assert!(field(&before, "latest size").ends_with(')'), "{before:?}");
    assert_eq!(field(&before, "uid").len(), 36, "{before:?}");
    let keys: usize = field(&before, "keys").parse().unwrap();
    assert!(keys >= 1, "the first push minted keys for it: {before:?}");
    let o = admin(&r, &["replica", "show", "team/none.db"]);
    assert_one_line_error(&o, "no replica team/none.db");

    let o = admin(&r, &["replica", "rename", "team/a.db", "team/moved/b.db"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("renamed team/a.db to team/moved/b.db"));
    // The running server serves the new path at once, the old one not.
    let o = run(&mut r.admin_cmd(&["team/moved/b.db", "b.db", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "1");
    assert_eq!(content_digest(&r.path("b.db")), content_digest(&db));
    let o = run(&mut r.admin_cmd(&["team/a.db", "old.db"]));
    assert!(!o.status.success(), "the old path still serves");
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
    assert!(!r.path("old.db").exists());
    // A push under the new name makes the next version of the same replica.
    change_rows(&db, 0.2);
    let o = run(&mut r.admin_cmd(&[
        "a.db",
        "team/moved/b.db",
        "-m",
        "after",
        "--json",
        "--force",
    ]));
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "2", "{}", stdout(&o));
    let after = show(&r, "team/moved/b.db");
    assert_eq!(field(&after, "uid"), field(&before, "uid"));
    assert_eq!(field(&after, "latest"), "2");
    assert_eq!(field(&after, "versions"), "2");
    assert_eq!(field(&after, "message"), "after");
    // The keys minted before the rename still name it (pulls and pushes
    // with the admin key since then minted more).
    let count = |f: &[(String, String)]| field(f, "keys").parse::<usize>().unwrap();
    assert!(count(&after) >= count(&before), "keys stay: {after:?}");
    let o = admin(&r, &["replica", "list", "team"]);
    let list = stdout(&o);
    assert!(
        list.contains("team/moved/b.db\t") && !list.contains("team/a.db\t"),
        "{list}"
    );
}

/// Renames that would break something are one line each, and change nothing.
#[test]
fn refused_renames() {
    let r = Fixture::start();
    r.make("a.db", 50);
    r.make("c.db", 50);
    r.first_push("a.db", "team/a.db");
    r.first_push("c.db", "team/c.db");
    let refused = |to: &str, why: &str| {
        let o = admin(&r, &["replica", "rename", "team/a.db", to]);
        assert_one_line_error(&o, why);
    };
    refused("team/c.db", "exists already");
    refused("team/a.db", "exists already");
    refused("other/a.db", "within its namespace");
    refused("team/../x.db", "invalid path");
    refused("team/a%2fb.db", "invalid path");
    refused("team/.hidden.db", "invalid path");
    refused("team", "invalid path");
    let o = admin(&r, &["replica", "rename", "team/none.db", "team/x.db"]);
    assert_one_line_error(&o, "no replica team/none.db");
    let list = stdout(&admin(&r, &["replica", "list", "team"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("team/a.db\t") && list.contains("team/c.db\t"));
}

/// `--versions` with a pull key, then with the key of a `-sqlrsync` file:
/// the table and the JSON; the listing pages; anonymous on a private
/// replica is the same refusal as an absent replica.
#[test]
fn versions_listing_with_keys_and_refusals() {
    let r = Fixture::start();
    let db = r.make("a.db", 200);
    r.first_push("a.db", "team/a.db");
    for m in ["second", "third <x>"] {
        change_rows(&db, 0.1);
        push(&r, "a.db", m);
    }
    let key = pull_key(&r, "team/a.db");
    let o = run(&mut r.cmd(&["--versions", "team/a.db", "--json", "--pullKey", &key]));
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["replicaPath"], "team/a.db");
    assert_eq!(j["latest"], 3);
    let vs = j["versions"].as_array().unwrap();
    let numbers: Vec<u64> = vs.iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1], "newest first");
    assert_eq!(vs[0]["message"], "third <x>");
    assert_eq!(vs[2]["message"], "first");
    assert_eq!(vs[0]["versionHash"].as_str().unwrap(), version_hash(&db));
    for v in vs {
        let size = v["size"].as_u64().unwrap();
        assert_eq!(
            size,
            v["pageSize"].as_u64().unwrap() * v["pageCount"].as_u64().unwrap()
        );
        assert!(v["pagesChanged"].as_u64().unwrap() >= 1);
        assert!(v["created"].as_str().unwrap().ends_with('Z'));
    }

    // The table, with the key a pull stored in the -sqlrsync file.
    let o = run(&mut r.cmd(&["team/a.db", "p.db", "--pullKey", &key]));
    assert_ok(&o);
    let o = run(&mut r.cmd(&["--versions", "team/a.db", "p.db"]));
    assert_ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].contains("VERSION") && lines[0].contains("MESSAGE"),
        "{out}"
    );
    assert!(
        lines[1].trim_start().starts_with("3 ") && lines[1].ends_with("third <x>"),
        "{out}"
    );
    assert!(
        lines[3].trim_start().starts_with("1 ") && lines[3].ends_with("first"),
        "{out}"
    );

    // Anonymous (./nokey.db has no -sqlrsync file; ./a.db's, written by the
    // push, holds a pull key), a private replica: as absent as one that
    // does not exist.
    let o = run(&mut r.cmd(&["--versions", "team/a.db", "nokey.db"]));
    assert_one_line_error(&o, "no replica team/a.db");
    let addr = &r.server().addr;
    let private = get(addr, "/sapi/versions/team/a.db", None);
    let absent = get(addr, "/sapi/versions/team/none.db", None);
    assert_eq!((private.0, &private.2), (absent.0, &absent.2));
    assert_eq!(private.0, 404);
    let o = run(&mut r.cmd(&[
        "--versions",
        "team/a.db",
        "--pullKey",
        "AAAAAAAAAAAAAAAAAAAAAAAA",
    ]));
    assert_one_line_error(&o, "401");

    // Pages, newest first, bounded.
    let (status, head, body) = get(addr, "/sapi/versions/team/a.db?limit=2", Some(&key));
    assert_eq!(status, 200);
    assert!(head.contains("application/json"), "{head}");
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["versions"].as_array().unwrap().len(), 2);
    assert_eq!(page["nextBefore"], 2);
    let (_, _, body) = get(
        addr,
        "/sapi/versions/team/a.db?limit=2&before=2",
        Some(&key),
    );
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["versions"][0]["version"], 1);
    assert!(page["nextBefore"].is_null());
    assert_eq!(
        get(addr, "/sapi/versions/team/a.db?limit=0", Some(&key)).0,
        400
    );

    // Unlisted: anyone with the path may list it, as anyone may pull it.
    assert_ok(&admin(
        &r,
        &["replica", "visibility", "team/a.db", "unlisted"],
    ));
    let o = run(&mut r.cmd(&["--versions", "team/a.db", "nokey.db", "--json"]));
    assert_ok(&o);
    assert_eq!(json(&o)["versions"].as_array().unwrap().len(), 3);
}

/// A server without the listing (sqlrsync.com answers 404 for it): one
/// line, a non-zero exit.
#[test]
fn versions_against_a_server_without_the_listing() {
    let env = TestEnv::new();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
    });
    let o = run(env
        .sqlrsync()
        .args(["--versions", "team/a.db", "--server"])
        .arg(format!("ws://{addr}")));
    assert_one_line_error(&o, "does not offer the versions listing");
    server.join().unwrap();
}

/// The commit times of the replica's versions, oldest first, as the
/// listing gives them.
fn commit_times(r: &Fixture, key: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let o = run(&mut r.cmd(&["--versions", "team/a.db", "--json", "--pullKey", key]));
    assert_ok(&o);
    let mut t: Vec<_> = json(&o)["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v["created"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc)
        })
        .collect();
    t.reverse();
    t
}

fn at(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `NAME@TIME` pulls the last version committed at or before TIME, `@DATE`
/// up to the end of that day; a time before the first version, or without a
/// zone, is refused before anything is written.
#[test]
fn point_in_time_pulls() {
    let r = Fixture::start();
    let db = r.make("a.db", 200);
    r.first_push("a.db", "team/a.db");
    let mut digests = vec![content_digest(&db)];
    for m in ["second", "third"] {
        std::thread::sleep(std::time::Duration::from_millis(20));
        change_rows(&db, 0.2);
        push(&r, "a.db", m);
        digests.push(content_digest(&db));
    }
    let key = pull_key(&r, "team/a.db");
    let t = commit_times(&r, &key);
    assert!(t[0] < t[1] && t[1] < t[2], "{t:?}");
    let pull_at = |when: &str, into: &str| {
        run(&mut r.cmd(&[
            &format!("team/a.db@{when}"),
            into,
            "--pullKey",
            &key,
            "--json",
        ]))
    };
    let mid = |a: chrono::DateTime<chrono::Utc>, b| a + (b - a) / 2;
    for (when, into, want) in [
        (at(t[0]), "at-v1.db", 0),
        (at(mid(t[0], t[1])), "mid-v1.db", 0),
        (at(t[1]), "at-v2.db", 1),
        (at(mid(t[1], t[2])), "mid-v2.db", 1),
        (t[2].format("%Y-%m-%d").to_string(), "day.db", 2),
    ] {
        let o = pull_at(&when, into);
        assert_ok(&o);
        assert_eq!(json(&o)["version"], (want + 1).to_string(), "@{when}");
        assert_eq!(content_digest(&r.path(into)), digests[want], "@{when}");
    }
    let o = pull_at(&at(t[0] - chrono::Duration::milliseconds(1)), "early.db");
    assert_one_line_error(&o, "no version was committed at or before");
    assert!(!r.path("early.db").exists());
    let o = pull_at("2000-01-01", "y2k.db");
    assert_one_line_error(
        &o,
        "no version was committed at or before 2000-01-01T23:59:59.999Z",
    );
    let o = pull_at("2026-11-30T12:00:00", "nozone.db");
    assert_one_line_error(&o, "invalid time");
    assert_eq!(o.status.code(), Some(1));

    // Downloads take the same refs.
    assert_ok(&admin(
        &r,
        &["replica", "visibility", "team/a.db", "unlisted"],
    ));
    let (status, _, body) = get(
        &r.server().addr,
        &format!("/team/a.db@{}", at(mid(t[0], t[1]))),
        None,
    );
    assert_eq!(status, 200);
    std::fs::write(r.path("web-v1.db"), &body).unwrap();
    assert_eq!(content_digest(&r.path("web-v1.db")), digests[0]);
    let early = at(t[0] - chrono::Duration::seconds(1));
    assert_eq!(
        get(&r.server().addr, &format!("/team/a.db@{early}"), None).0,
        404
    );
    // The replica page lists a page of versions, from `before` as the
    // listing does.
    let (status, _, body) = get(&r.server().addr, "/team/a.db?before=3", None);
    assert_eq!(status, 200);
    let html = String::from_utf8_lossy(&body);
    assert_eq!(html.matches("<tr><td class=\"num\">").count(), 2, "{html}");
    assert!(
        !html.contains("@3\"") && !html.contains("id=\"older\""),
        "{html}"
    );
    assert_eq!(get(&r.server().addr, "/team/a.db?before=x", None).0, 400);
}

/// Against a server that does not answer the point-in-time offer (any other
/// server serves the latest version instead), the pull is refused with one
/// line, and the local database is not touched.
#[test]
fn point_in_time_refused_by_a_server_without_it() {
    use crate::support::fake::{Fake, honest};
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    make_db(
        &origin,
        DbSpec {
            rows: 50,
            ..DbSpec::default()
        },
    );
    let local = env.path("local.db");
    make_db(
        &local,
        DbSpec {
            rows: 10,
            ..DbSpec::default()
        },
    );
    let before = file_sha256(&local);
    let cfg = sqlrsync::wire::ServerConfig::default();
    let fake = Fake::start_many(vec![
        honest("--origin", origin.clone(), cfg.clone()),
        honest("--origin", origin.clone(), cfg),
    ]);
    let pull = |into: &Path| {
        run(env
            .sqlrsync()
            .arg("team/x.db@2026-11-30T12:00:00Z")
            .arg(into)
            .args(["--force", "--server", &fake.url]))
    };
    let o = pull(&local);
    assert_one_line_error(&o, "does not offer point-in-time versions");
    assert_eq!(
        file_sha256(&local),
        before,
        "the local database was touched"
    );
    let fresh = env.path("fresh.db");
    let o = pull(&fresh);
    assert_one_line_error(&o, "does not offer point-in-time versions");
    assert!(!fresh.exists());
    fake.sent();
}

/// A subscriber of the old path is not told to pull a path that no longer
/// serves: the first commit after the rename closes it, its reconnection
/// finds the old path absent, and it stops with the server's 404.
#[test]
fn a_subscriber_of_a_renamed_replica_stops() {
    use std::process::Stdio;
    let r = Fixture::start();
    let db = r.make("a.db", 200);
    r.first_push("a.db", "team/a.db");
    let key = pull_key(&r, "team/a.db");
    let mut child = r
        .cmd(&[
            "team/a.db",
            "sub.db",
            "--subscribe",
            "--json",
            "--pullKey",
            &key,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = JsonLines::of(&mut child);
    assert_eq!(lines.next("the first pull")["version"], "1");
    assert_ok(&admin(&r, &["replica", "rename", "team/a.db", "team/b.db"]));
    change_rows(&db, 0.1);
    let o = run(&mut r.admin_cmd(&["a.db", "team/b.db", "--force", "--json"]));
    assert_ok(&o);
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "the subscriber of the old path kept going"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("404"), "{err}");
    assert!(r.server().log().contains("the replica was renamed"));
}
