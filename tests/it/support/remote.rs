//! Looks into the files a remote test leaves behind: every file under a
//! dir, the files holding a secret, snapshots to compare, the pull key of a
//! `-sqlrsync` file. (The server and its namespace are the
//! [`Fixture`](super::fixture::Fixture).)

use std::path::{Path, PathBuf};

use crate::support::*;

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
