//! A server that fails (here: a damaged store) tells its client that it
//! failed in words of its own, never the paths, pack offsets or store
//! errors behind it; those go to its log, where the operator needs them.

use crate::support::driver::*;
use crate::support::remote::*;
use crate::support::*;

/// The data dir's path in every form a message could show it.
fn leaks(text: &str, data: &std::path::Path) -> Vec<String> {
    let data = data.display().to_string();
    let canon = std::fs::canonicalize(&data).map_or(data.clone(), |p| p.display().to_string());
    [
        data.as_str(),
        canon.as_str(),
        "server-data",
        "pack-0",
        "offset",
        "staging/",
        "replicas/",
    ]
    .into_iter()
    .filter(|needle| text.contains(needle))
    .map(str::to_string)
    .collect()
}

#[test]
fn abort_texts_name_no_server_paths_and_the_log_keeps_the_detail() {
    let r = Fixture::start();
    r.make("a.db", 400);
    r.first_push("a.db", "team/a.db");
    change_rows(&r.path("a.db"), 0.3);
    assert_ok(&run(&mut r.cmd(&["a.db"])));
    let key = dash_pull_key(&r.path("a.db"));
    let rt = rt();
    let ws = r.ws_url();

    // Version 1 is rebuilt from the page store: with its pack cut short
    // the rebuild fails, and the store's error names the pack and offset.
    let packs = files_under(&r.data.join("packs"));
    assert!(!packs.is_empty(), "no pack to damage");
    for p in &packs {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    let o = rt.block_on(pull(
        &ws,
        "team/a.db",
        &r.path("v1.db"),
        &Opts {
            version: Some("1".into()),
            ..with_key(&key)
        },
    ));
    let abort = o
        .abort
        .clone()
        .unwrap_or_else(|| panic!("no ABORT: {o:#?}"));
    assert_eq!(abort, "the server could not read version 1");
    let cli = run(&mut r.cmd(&["team/a.db@1", "old.db", "--pullKey", &key]));
    assert_one_line_error(&cli, "could not read version 1");
    assert_eq!(
        leaks(&stderr(&cli), &r.data),
        Vec::<String>::new(),
        "{}",
        stderr(&cli)
    );
    assert!(!r.path("old.db").exists());

    // The latest file gone: the helper cannot open it, and what it says
    // reaches the client in the stream too (it names the file it was
    // given, which is why the server gives it a bare name).
    let latest = files_under(&r.data.join("replicas"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .max()
        .unwrap();
    std::fs::remove_file(&latest).unwrap();
    let o = rt.block_on(pull(&ws, "team/a.db", &r.path("v2.db"), &with_key(&key)));
    assert!(!o.ok(), "a damaged latest file pulled fine: {o:#?}");
    let told = format!("{:?} {:?} {:?}", o.abort, o.messages, o.ended_by);
    assert_eq!(leaks(&told, &r.data), Vec::<String>::new(), "{told}");
    let cli = run(&mut r.cmd(&["team/a.db", "new.db", "--pullKey", &key]));
    assert!(!cli.status.success());
    assert_eq!(
        leaks(&stderr(&cli), &r.data),
        Vec::<String>::new(),
        "{}",
        stderr(&cli)
    );

    // The log has what the operator needs: which file, where.
    let log = r.server().log();
    let pack_line = log
        .lines()
        .find(|l| l.contains("could not read version 1") && l.contains("pack-000001"))
        .unwrap_or_else(|| panic!("the log lacks the store's error:\n{log}"));
    assert!(
        pack_line.contains(&r.data.display().to_string()),
        "{pack_line}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
