//! The web pages: namespace listing, replica page with versions and the pull
//! command, downloads of `@N` / `@latest-N`, the same 404 for private and
//! unknown. Rendered in headless Chromium too (skipped loudly without it).

use std::process::Command;
use std::time::Duration;

use crate::support::driver::*;
use crate::support::*;

struct Site {
    f: Fixture,
    v1_hash: String,
    v2_hash: String,
}

fn site() -> Site {
    let f = Fixture::with("acme", &[]);
    let (env, server) = (&f.env, f.server());
    let acme = f.admin.clone();
    let db = env.path("shop.db");
    make_db(
        &db,
        DbSpec {
            rows: 500,
            ..Default::default()
        },
    );
    let rt = rt();
    let ws = server.ws_url();
    rt.block_on(push(
        &ws,
        "acme/shop.db",
        &db,
        &Opts {
            visibility: Some("2"),
            message: Some("first <b>import</b> & setup".into()),
            ..with_key(&acme)
        },
    ))
    .assert_ok();
    let v1_hash = version_hash(&db);
    change_rows(&db, 0.1);
    rt.block_on(push(
        &ws,
        "acme/shop.db",
        &db,
        &Opts {
            message: Some("nightly".into()),
            ..with_key(&acme)
        },
    ))
    .assert_ok();
    let v2_hash = version_hash(&db);
    rt.block_on(push(&ws, "acme/secret.db", &db, &with_key(&acme)))
        .assert_ok();
    Site {
        f,
        v1_hash,
        v2_hash,
    }
}

#[test]
fn pages_and_downloads() {
    let s = site();
    let addr = &s.f.server().addr;
    let (status, head, body) = http_get(addr, "/acme/shop.db");
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/html"));
    let html = String::from_utf8_lossy(&body);
    assert!(
        html.contains("first &lt;b&gt;import&lt;/b&gt; &amp; setup"),
        "escaped message: {html}"
    );
    assert!(html.contains("nightly"));
    assert!(
        html.contains(&format!(
            "sqlrsync acme/shop.db shop.db --server ws://{addr}"
        )),
        "{html}"
    );
    assert!(!html.contains("secret.db"));

    // Downloads: @1, @latest, @latest-1 are whole databases of that version.
    for (reference, want) in [
        ("@1", &s.v1_hash),
        ("@latest", &s.v2_hash),
        ("@latest-1", &s.v1_hash),
        ("@v2", &s.v2_hash),
    ] {
        let (status, head, body) = http_get(addr, &format!("/acme/shop.db{reference}"));
        assert_eq!(status, 200, "{reference}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-disposition: attachment"),
            "{head}"
        );
        let file =
            s.f.env
                .path(&format!("dl{}.db", reference.replace('@', "_")));
        std::fs::write(&file, body).unwrap();
        assert_integrity(&file);
        assert_eq!(&version_hash(&file), want, "{reference}");
    }
    assert_eq!(http_get(addr, "/acme/shop.db@3").0, 404);
    assert_eq!(http_get(addr, "/acme/shop.db@latest+1").0, 400);
    assert_eq!(http_get(addr, "/acme/shop.db@0").0, 400);

    // Private and unknown: the same 404, downloads included.
    let private = http_get(addr, "/acme/secret.db");
    let unknown = http_get(addr, "/acme/nothing.db");
    assert_eq!(private.0, 404);
    assert_eq!(
        (private.0, private.2.clone()),
        (unknown.0, unknown.2.clone())
    );
    assert_eq!(http_get(addr, "/acme/secret.db@1").2, unknown.2);
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| which::which(c).is_ok())
        .map(str::to_string)
}

/// The DOM Chromium built for `url`. Its console goes to stderr, where a
/// resource the Content-Security-Policy blocked (the page's style sheet,
/// say) would show: that fails the test, so the headers never break a page.
fn dump_dom(browser: &str, env: &TestEnv, url: &str) -> String {
    let profile = tempfile::tempdir_in(env.dir.path()).unwrap();
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .env("HOME", env.home())
        .output()
        .expect("chromium runs");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let console = String::from_utf8_lossy(&o.stderr);
    assert!(
        !console.contains("Content Security Policy"),
        "{url}: the browser blocked part of the page:\n{console}"
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn pages_render_in_chromium() {
    let Some(browser) = chromium() else {
        eprintln!(
            "\n\n*** SKIPPED: chromium not installed; web pages not rendered in a browser ***\n"
        );
        return;
    };
    let s = site();
    let base = s.f.server().http_url();
    let dom = dump_dom(&browser, &s.f.env, &format!("{base}/acme/shop.db"));
    // The browser built a table with one row per version, newest first.
    let table = dom
        .split("<table id=\"versions\">")
        .nth(1)
        .expect("versions table in the DOM");
    let rows: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 2, "{dom}");
    assert!(rows[0].contains(">2<") && rows[0].contains("nightly"));
    assert!(
        rows[1].contains("first &lt;b&gt;import&lt;/b&gt; &amp; setup"),
        "message shown as text: {}",
        rows[1]
    );
    assert!(
        !dom.contains("<b>import</b>"),
        "message must not become markup"
    );
    assert!(dom.contains("href=\"/acme/shop.db@1\""));
    assert!(dom.contains("id=\"pull-command\""));
    let ns = dump_dom(&browser, &s.f.env, &format!("{base}/acme"));
    assert!(ns.contains("href=\"/acme/shop.db\""), "{ns}");
    assert!(!ns.contains("secret.db"));
}

/// A GET that survives a cut transfer: (status, head, the body bytes that
/// arrived, whether the body ended before its Content-Length).
fn get_cut(addr: &str, path: &str) -> (u16, String, Vec<u8>, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            // A reset is how a cut transfer may end.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading {path}: {e}"),
        }
    }
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = all[split + 4..].to_vec();
    let len: Option<usize> = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().unwrap())
    });
    let cut = len.is_some_and(|n| body.len() < n);
    (status, head, body, cut)
}

/// Flips one byte in the middle of page `pgno` (4 KiB pages) of `path`.
fn damage_page(path: &std::path::Path, pgno: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = (pgno - 1) * 4096 + 2000;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

#[test]
fn a_damaged_version_is_never_served_whole() {
    let f = Fixture::with_env("acme", &[], &[("SQLRSYNC_LOG", "info")]);
    let addr = f.server().addr.clone();
    // 1.6 MB: a download of several chunks, so damage is found mid-body too.
    let db = f.path("big.db");
    make_db(
        &db,
        DbSpec {
            rows: 6000,
            ..Default::default()
        },
    );
    let rt = rt();
    let public = Opts {
        visibility: Some("2"),
        ..with_key(&f.admin)
    };
    rt.block_on(push(&f.ws_url(), "acme/big.db", &db, &public))
        .assert_ok();
    let v1_hash = version_hash(&db);
    change_rows(&db, 0.02);
    rt.block_on(push(&f.ws_url(), "acme/big.db", &db, &public))
        .assert_ok();
    let v2_hash = version_hash(&db);
    let latest = std::fs::read_dir(f.data.join("replicas"))
        .unwrap()
        .map(|e| e.unwrap().path().join("v2.db"))
        .find(|p| p.exists())
        .expect("the latest file of acme/big.db");
    let whole_as = |body: &[u8]| {
        let file = f.path("whole.db");
        std::fs::write(&file, body).unwrap();
        version_hash(&file)
    };
    // Sound first: whole, and equal to what was pushed.
    let (status, _, body, cut) = get_cut(&addr, "/acme/big.db@latest");
    assert_eq!((status, cut), (200, false));
    assert_eq!(whole_as(&body), v2_hash);
    // One flipped bit: in the first chunk (found before the answer: 500),
    // in the middle and in the last page (found mid-body: cut short).
    let pages = std::fs::metadata(&latest).unwrap().len() / 4096;
    for (n, pgno, early) in [(0, 3, true), (1, pages / 2, false), (2, pages, false)] {
        damage_page(&latest, pgno);
        // The latest is damaged: never whole. Version 1 is whole where its
        // own pages are (the pages v2 changed come from the page store), so
        // a whole answer must be version 1, exactly.
        for (reference, want, damaged) in [
            ("@latest", &v2_hash, true),
            ("@2", &v2_hash, true),
            ("@latest-1", &v1_hash, false),
        ] {
            let (status, head, body, cut) = get_cut(&addr, &format!("/acme/big.db{reference}"));
            let whole = status == 200 && !cut;
            if damaged {
                assert!(
                    !whole,
                    "damaged page {pgno}: {reference} served whole with {status}: {} bytes\n{head}",
                    body.len()
                );
                let want_status = if early { 500 } else { 200 };
                assert_eq!(
                    status, want_status,
                    "damaged page {pgno}: {reference}\n{head}"
                );
            }
            if whole {
                assert_eq!(&whole_as(&body), want, "{reference} served whole but wrong");
            }
        }
        let log = f.server().log();
        assert!(
            log.matches("the store is damaged").count() > n,
            "the damage was not logged:\n{log}"
        );
        // Undo, so the next round damages one page only.
        damage_page(&latest, pgno);
    }
    // Repaired (the same bit flipped back): served whole again.
    let (status, _, body, cut) = get_cut(&addr, "/acme/big.db@latest");
    assert_eq!((status, cut), (200, false));
    assert_eq!(whole_as(&body), v2_hash);
}

#[test]
fn web_responses_carry_security_headers() {
    let s = site();
    let addr = &s.f.server().addr;
    for path in [
        "/",
        "/acme",
        "/acme/shop.db",
        "/acme/nothing.db",
        "/acme/secret.db",
        "/acme/shop.db@1",
        "/acme/shop.db@latest",
        "/acme/shop.db@0",
        "/nope",
    ] {
        let (status, head, _) = http_get(addr, path);
        let h = head.to_ascii_lowercase();
        let csp = h
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy:"))
            .unwrap_or_else(|| panic!("{path} ({status}): no Content-Security-Policy\n{head}"));
        for directive in [
            "default-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP lacks {directive}: {csp}"
            );
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(
            h.contains("\r\nx-content-type-options: nosniff"),
            "{path}\n{head}"
        );
        assert!(h.contains("\r\nx-frame-options: deny"), "{path}\n{head}");
        assert!(
            h.contains("\r\nreferrer-policy: no-referrer"),
            "{path}\n{head}"
        );
    }
}

#[test]
fn downloads_follow_page_size_and_length_changes() {
    // Older versions are read from the back deltas and the latest file
    // without being rebuilt: every geometry change between versions must
    // still give each version exactly.
    let f = Fixture::with("acme", &[]);
    let rt = rt();
    let mut want = Vec::new();
    for (i, (rows, page_size)) in [
        (2000, 4096),
        (3000, 1024),
        (400, 4096),
        (5000, 4096),
        (800, 8192),
    ]
    .into_iter()
    .enumerate()
    {
        let db = f.path(&format!("geo{i}.db"));
        make_db(
            &db,
            DbSpec {
                rows,
                page_size,
                ..Default::default()
            },
        );
        let o = rt.block_on(push(
            &f.ws_url(),
            "acme/geo.db",
            &db,
            &Opts {
                visibility: Some("2"),
                ..with_key(&f.admin)
            },
        ));
        o.assert_ok();
        want.push(version_hash(&db));
    }
    let addr = &f.server().addr;
    for (n, hash) in want.iter().enumerate() {
        let (status, head, body) = http_get(addr, &format!("/acme/geo.db@{}", n + 1));
        assert_eq!(status, 200, "@{}: {head}", n + 1);
        let out = f.path(&format!("geo-dl{n}.db"));
        std::fs::write(&out, body).unwrap();
        assert_eq!(&version_hash(&out), hash, "@{}", n + 1);
        assert_integrity(&out);
    }
}
