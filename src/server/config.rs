//! `serve --config FILE`: the `serve` flags in a TOML file, so that a
//! service's unit file is one line.
//!
//! Each key is a `serve` flag's long name (`max-connections = 512`,
//! `listen = ["127.0.0.1:8462"]`, `compat-frames = true`); `max_connections`
//! is read the same. Layers, as everywhere in sqlrsync: a flag given on the
//! command line, then its environment variable, then the file, then the
//! default. The file's values are turned into flags and parsed by the same
//! clap definitions as typed ones, so a value that the flag would refuse is
//! refused from the file too, with the flag's own message. An unknown key
//! is an error, not a silent no-op: a typo must not leave a limit unset.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::CommandFactory;
use clap::parser::ValueSource;

/// Largest config file read (a config is a few hundred bytes).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `argv` with the settings of `serve --config FILE` appended as flags,
/// for those not given on the command line or in the environment. Other
/// commands, and arguments clap would refuse anyway, are returned as they
/// are (clap then reports them).
pub fn expand(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let cmd = super::cli::ServerCli::command();
    // Lenient: what the file will supply (--data-dir) may be missing yet.
    let Ok(matches) = cmd.clone().ignore_errors(true).try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(file) = serve.get_one::<std::path::PathBuf>("config") else {
        return Ok(argv);
    };
    let table = read(file)?;
    let serve_cmd = cmd.find_subcommand("serve").expect("serve exists");
    let mut out = argv;
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let known = serve_cmd
            .get_arguments()
            .any(|a| a.get_id() == id.as_str() && a.get_long().is_some());
        if !known || id == "config" {
            bail!(
                "{}: unknown setting {key:?} (settings are the long names of the serve flags, e.g. max-connections; see 'sqlrsync-server serve --help')",
                file.display()
            );
        }
        let given = matches!(
            serve.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            out.extend(
                as_flags(&id.replace('_', "-"), value)
                    .with_context(|| format!("{}: setting {key:?}", file.display()))?,
            );
        }
    }
    Ok(out)
}

/// The file as a TOML table, read with a size bound.
fn read(file: &Path) -> anyhow::Result<toml::Table> {
    use std::io::Read;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!("{} is larger than 1 MiB; not a config file", file.display());
    }
    toml::from_str(&text).with_context(|| format!("{} is not valid TOML", file.display()))
}

/// One setting as the flags that say the same.
fn as_flags(name: &str, value: &toml::Value) -> anyhow::Result<Vec<OsString>> {
    let flag = |v: String| OsString::from(format!("--{name}={v}"));
    Ok(match value {
        toml::Value::Boolean(true) => vec![OsString::from(format!("--{name}"))],
        toml::Value::Boolean(false) => vec![],
        toml::Value::String(s) => vec![flag(s.clone())],
        toml::Value::Integer(i) => vec![flag(i.to_string())],
        toml::Value::Float(f) => vec![flag(f.to_string())],
        toml::Value::Array(items) => {
            let mut v = Vec::new();
            for item in items {
                v.extend(as_flags(name, item)?);
            }
            v
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => {
            bail!("a table or date is not a flag's value")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_settings_become_flags_unless_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "data-dir = '/srv/d'\nmax_connections = 7\nlisten = ['127.0.0.1:1', '127.0.0.1:2']\ncompat-frames = true\nmax-db-size = '1MiB'\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let out = expand(argv(&[
            "sqlrsync-server",
            "serve",
            "--config",
            f,
            "--max-db-size",
            "2MiB",
        ]))
        .unwrap();
        let out: Vec<String> = out.iter().map(|s| s.to_string_lossy().into()).collect();
        for want in [
            "--data-dir=/srv/d",
            "--max-connections=7",
            "--listen=127.0.0.1:1",
            "--listen=127.0.0.1:2",
            "--compat-frames",
        ] {
            assert!(out.iter().any(|a| a == want), "{want} missing in {out:?}");
        }
        assert!(!out.iter().any(|a| a == "--max-db-size=1MiB"), "{out:?}");
        std::fs::write(&file, "max-conections = 7\n").unwrap();
        let e = expand(argv(&["sqlrsync-server", "serve", "--config", f])).unwrap_err();
        assert!(
            format!("{e}").contains("unknown setting \"max-conections\""),
            "{e}"
        );
        // Other commands are left alone.
        let same = argv(&["sqlrsync-server", "verify", "--data-dir", "/x"]);
        assert_eq!(expand(same.clone()).unwrap(), same);
    }
}
