//! sqlrsync as sqlite3_rsync: the ssh forms through a stand-in ssh program
//! that runs the far command on this machine (our binary on both ends, our
//! binary against the bare helper and back), and the `sqlite3_rsync` link
//! (same help, same exit codes, same syncs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::*;

/// Writes a stand-in for ssh into the env: it logs its arguments, drops
/// ssh's options (`-e none`, `-p N`, ...) and the host, and runs the rest
/// as the far side's shell would, here.
fn standin_ssh(env: &TestEnv) -> PathBuf {
    let path = env.path("fake-ssh");
    let log = env.path("ssh.log");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             echo \"$*\" >> '{}'\n\
             while [ $# -gt 0 ]; do\n\
               case \"$1\" in\n\
                 -e|-p|-o|-l|-i) shift 2 ;;\n\
                 -*) shift ;;\n\
                 *) break ;;\n\
               esac\n\
             done\n\
             shift\n\
             exec sh -c \"$*\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The embedded helper written out as a plain executable: stock
/// sqlite3_rsync, for comparing with and for running on the far side.
fn bare_helper(env: &TestEnv) -> PathBuf {
    let path = env.path("bin/sqlite3_rsync-bare");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, sqlrsync::helper::HELPER_BYTES).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn ssh_log(env: &TestEnv) -> String {
    std::fs::read_to_string(env.path("ssh.log")).unwrap_or_default()
}

/// Syncs through the stand-in ssh with `local` as the program run here and
/// `far` as `--exe`, first a new copy then after a change, both directions.
fn ssh_round_trip(env: &TestEnv, local: &Path, far: &Path) {
    let ssh = standin_ssh(env);
    let origin = env.path("origin.db");
    if !origin.exists() {
        make_db(&origin, DbSpec::default());
    }
    let tag = far.file_name().unwrap().to_string_lossy().to_string();
    // Push form: local ORIGIN, remote REPLICA.
    let pushed = env.path(&format!("pushed-{tag}.db"));
    let remote = format!("localhost:{}", pushed.display());
    for round in 0..2 {
        if round == 1 {
            change_rows(&origin, 0.01);
        }
        let o = run(env
            .command(local)
            .arg(&origin)
            .arg(&remote)
            .arg("--ssh")
            .arg(&ssh)
            .arg("--exe")
            .arg(far));
        assert_ok(&o);
        assert_eq!(content_digest(&pushed), content_digest(&origin));
        assert_integrity(&pushed);
    }
    // Pull form: remote ORIGIN, local REPLICA.
    let pulled = env.path(&format!("pulled-{tag}.db"));
    let o = run(env
        .command(local)
        .arg(format!("localhost:{}", origin.display()))
        .arg(&pulled)
        .arg("--ssh")
        .arg(&ssh)
        .arg("--exe")
        .arg(far));
    assert_ok(&o);
    assert_eq!(content_digest(&pulled), content_digest(&origin));
    let log = ssh_log(env);
    assert!(
        log.contains("--replica") && log.contains("--origin"),
        "{log}"
    );
    assert!(log.contains(&far.display().to_string()), "{log}");
}

#[test]
fn ssh_form_with_sqlrsync_on_both_ends() {
    let env = TestEnv::new();
    ssh_round_trip(&env, Path::new(SQLRSYNC), Path::new(SQLRSYNC));
}

#[test]
fn ssh_form_sqlrsync_against_the_bare_helper_and_back() {
    let env = TestEnv::new();
    let helper = bare_helper(&env);
    ssh_round_trip(&env, Path::new(SQLRSYNC), &helper);
    ssh_round_trip(&env, &helper, Path::new(SQLRSYNC));
}

#[test]
fn ssh_options_reach_ssh() {
    let env = TestEnv::new();
    let ssh = standin_ssh(&env);
    let origin = env.path("origin.db");
    make_db(&origin, DbSpec::default());
    let replica = env.path("replica.db");
    let o = run(env
        .sqlrsync()
        .arg(&origin)
        .arg(format!("me@localhost:{}", replica.display()))
        .args(["-p", "2222", "--protocol", "1", "--ssh"])
        .arg(&ssh)
        .arg("--exe")
        .arg(SQLRSYNC));
    assert_ok(&o);
    let log = ssh_log(&env);
    assert!(log.starts_with("-p 2222 -e none me@localhost "), "{log}");
    assert_eq!(content_digest(&replica), content_digest(&origin));
}

/// A link named sqlite3_rsync pointing at our binary.
fn link(env: &TestEnv) -> PathBuf {
    let dir = env.path("linkbin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("sqlite3_rsync");
    std::os::unix::fs::symlink(SQLRSYNC, &link).unwrap();
    link
}

#[test]
fn sqlite3_rsync_link_has_the_helpers_help_and_exit_codes() {
    let env = TestEnv::new();
    let link = link(&env);
    let bare = bare_helper(&env);
    let cases: &[&[&str]] = &[
        &["--help"],
        &["-help"],
        &["--version"],
        &["--bogus"],
        &["only-one.db"],
        &[],
        &["a.db", "b.db", "c.db"],
        &["-p", "0", "a.db", "h:b.db"],
        &["--origin", "--replica", "a.db", "b.db"],
        &["h:a.db", "h:b.db"],
    ];
    for args in cases {
        let ours = run(env.command(&link).args(*args));
        let stock = run(env.command(&bare).args(*args));
        assert_eq!(ours.status.code(), stock.status.code(), "{args:?}");
        assert_eq!(stdout(&ours), stdout(&stock), "{args:?}");
        assert_eq!(stderr(&ours), stderr(&stock), "{args:?}");
    }
    let help = run(env.command(&link).arg("--help"));
    assert!(stdout(&help).starts_with("sqlite3_rsync ORIGIN REPLICA"));
}

#[test]
fn sqlite3_rsync_link_syncs() {
    let env = TestEnv::new();
    let link = link(&env);
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_db(&origin, DbSpec::default());
    let o = run(env.command(&link).arg(&origin).arg(&replica));
    assert_ok(&o);
    assert_eq!(content_digest(&replica), content_digest(&origin));
    change_rows(&origin, 0.01);
    // -vvv: sqlite3_rsync's own report, and its default protocol (2), not
    // sqlrsync's LOCAL default.
    let o = run(env.command(&link).arg(&origin).arg(&replica).arg("-vvv"));
    assert_ok(&o);
    assert!(stdout(&o).contains("protocol: 2"), "{}", stdout(&o));
    assert_eq!(content_digest(&replica), content_digest(&origin));
    // The link over ssh, with the link on the far side too.
    let ssh = standin_ssh(&env);
    let far = env.path("far.db");
    let o = run(env
        .command(&link)
        .arg(&origin)
        .arg(format!("localhost:{}", far.display()))
        .arg("--ssh")
        .arg(&ssh)
        .arg("--exe")
        .arg(&link));
    assert_ok(&o);
    assert_eq!(content_digest(&far), content_digest(&origin));
}

#[test]
fn origin_and_replica_forms_pass_through() {
    // What ssh runs on the far side: `sqlrsync --replica ORIGIN REPLICA`
    // speaks the protocol on stdin/stdout; with no input it just ends.
    let env = TestEnv::new();
    let replica = env.path("replica.db");
    let o = run(env
        .sqlrsync()
        .arg("--replica")
        .arg("origin.db")
        .arg(&replica));
    assert_ok(&o);
    assert!(!replica.exists() || std::fs::metadata(&replica).unwrap().len() == 0);
}
