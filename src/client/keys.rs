//! Which key a PUSH or PULL uses, and where it came from.
//!
//! First match wins (the `--help` text): what this command line and the
//! environment give (`SQLRSYNC_AUTH_TOKEN`, `--pushKey`/`--pullKey`,
//! `--adminKey`, `SQLRSYNC_ADMIN_KEY`), then what is stored
//! (local-secrets.toml for a push, the `-sqlrsync` file for a pull), then
//! a no-echo prompt on a terminal. A key given now beats a stored one: the
//! stored one may have been revoked, and the key given is how the user says
//! so (the key the server then issues replaces the stored one). Without a terminal and without a key
//! a push fails with one line (never waits for input); a pull goes on
//! anonymously, which public and unlisted replicas allow.

use std::path::PathBuf;

use anyhow::bail;

/// Where the key of a connection came from (shown by `--dry` and `-v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `SQLRSYNC_AUTH_TOKEN` environment variable.
    AuthToken,
    /// `--pushKey` or `--pullKey`.
    Flag(&'static str),
    /// The entry of this database in local-secrets.toml.
    Secrets(PathBuf),
    /// The `-sqlrsync` file next to the database.
    DashFile(PathBuf),
    /// `--adminKey`.
    AdminFlag,
    /// `SQLRSYNC_ADMIN_KEY`.
    AdminEnv,
    /// Typed at the prompt.
    Prompt,
    /// No key: an anonymous pull.
    Anonymous,
    /// No key and no way to ask: only `--dry` gets this far, to say so.
    Missing,
}

impl KeySource {
    pub fn describe(&self) -> String {
        match self {
            KeySource::AuthToken => "SQLRSYNC_AUTH_TOKEN (environment)".into(),
            KeySource::Flag(f) => format!("{f} flag"),
            KeySource::Secrets(p) => format!("{} (stored Replica Push key)", p.display()),
            KeySource::DashFile(p) => format!("{} (Replica Pull key)", p.display()),
            KeySource::AdminFlag => "--adminKey flag (Account Admin key, not stored)".into(),
            KeySource::AdminEnv => "SQLRSYNC_ADMIN_KEY (Account Admin key, not stored)".into(),
            KeySource::Prompt => "prompt (Account Admin key, not stored)".into(),
            KeySource::Anonymous => {
                "none (anonymous pull: public or unlisted replicas only)".into()
            }
            KeySource::Missing => "nowhere: no key is set and there is no terminal to ask; \
                                   the push would fail (set SQLRSYNC_ADMIN_KEY or pass --adminKey/--pushKey)"
                .into(),
        }
    }

    /// A key read from a file of ours (it may have been revoked since).
    pub fn is_stored(&self) -> bool {
        matches!(self, KeySource::Secrets(_) | KeySource::DashFile(_))
    }

    /// An Account Admin key given for this run only (`--adminKey`, the
    /// prompt): worth asking the server for keys with, to replace stored
    /// ones. `SQLRSYNC_ADMIN_KEY` is not: set in a cron job's environment
    /// it would mint new keys on every run.
    pub fn replaces_stored(&self) -> bool {
        matches!(self, KeySource::AdminFlag | KeySource::Prompt)
    }

    /// True for Account Admin keys, which must never be written anywhere.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            KeySource::AdminFlag | KeySource::AdminEnv | KeySource::Prompt
        )
    }
}

/// A key (or the decision to go without one).
#[derive(Clone)]
pub struct Key {
    /// The key itself; None for anonymous pulls and not-yet-prompted keys.
    pub value: Option<String>,
    /// Where it came from.
    pub source: KeySource,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key, even in debug logs.
        f.debug_struct("Key")
            .field("value", &self.value.as_deref().map(crate::wire::mask_key))
            .field("source", &self.source)
            .finish()
    }
}

impl Key {
    /// The key masked for people (`ab****yz`), or "(none)".
    pub fn masked(&self) -> String {
        match &self.value {
            Some(k) => crate::wire::mask_key(k),
            None if self.source == KeySource::Prompt => "(asked for at the prompt)".into(),
            None => "(none)".into(),
        }
    }
}

/// The environment's say, read once by `cli::resolve` (so tests of the
/// order need no environment).
#[derive(Debug, Default, Clone)]
pub struct KeyEnv {
    /// `SQLRSYNC_AUTH_TOKEN`.
    pub auth_token: Option<String>,
    /// `SQLRSYNC_ADMIN_KEY`.
    pub admin_key: Option<String>,
    /// stdin and stderr are a terminal: a prompt can be answered.
    pub tty: bool,
}

/// What the caller found for this database (flag, stored key).
#[derive(Debug, Default)]
pub struct Candidates {
    /// `--pushKey` (push) or `--pullKey` (pull) and its flag name.
    pub flag: Option<(String, &'static str)>,
    /// Stored key and the file it is in.
    pub stored: Option<(String, KeySource)>,
    /// `--adminKey`.
    pub admin_flag: Option<String>,
}

/// Resolves the key in the documented order. `need_key` says a missing key
/// is an error (push) rather than an anonymous attempt (pull). A prompt is
/// not shown here: the result says [`KeySource::Prompt`] with no value, and
/// [`prompt`] asks when the connection is about to be made.
pub fn resolve(env: &KeyEnv, c: Candidates, need_key: bool, what: &str) -> anyhow::Result<Key> {
    let found = |value: String, source| {
        Ok(Key {
            value: Some(value),
            source,
        })
    };
    if let Some(t) = &env.auth_token {
        return found(t.trim().to_string(), KeySource::AuthToken);
    }
    if let Some((k, flag)) = c.flag {
        return found(k, KeySource::Flag(flag));
    }
    if let Some(k) = c.admin_flag {
        return found(k, KeySource::AdminFlag);
    }
    if let Some(k) = &env.admin_key {
        return found(k.trim().to_string(), KeySource::AdminEnv);
    }
    if let Some((k, src)) = c.stored {
        return found(k, src);
    }
    if !need_key {
        return Ok(Key {
            value: None,
            source: KeySource::Anonymous,
        });
    }
    if env.tty {
        return Ok(Key {
            value: None,
            source: KeySource::Prompt,
        });
    }
    bail!(
        "{what} needs a key and there is no terminal to ask for one: set SQLRSYNC_ADMIN_KEY or \
         SQLRSYNC_AUTH_TOKEN, or pass --adminKey/--pushKey"
    )
}

/// Asks for an Account Admin key on the terminal without echo.
pub fn prompt(for_what: &str) -> anyhow::Result<String> {
    let k = rpassword::prompt_password(format!("Account Admin key for {for_what}: "))
        .map_err(|e| anyhow::anyhow!("cannot read a key from the terminal: {e}"))?;
    let k = k.trim().to_string();
    if k.is_empty() {
        bail!("no key entered");
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(flag: bool, stored: bool, admin: bool) -> Candidates {
        Candidates {
            flag: flag.then(|| ("flagkey".to_string(), "--pushKey")),
            stored: stored.then(|| ("storedkey".to_string(), KeySource::Secrets("s".into()))),
            admin_flag: admin.then(|| "adminflag".to_string()),
        }
    }

    #[test]
    fn order() {
        let env = KeyEnv {
            auth_token: Some("token".into()),
            admin_key: Some("adminenv".into()),
            tty: false,
        };
        let k = resolve(&env, cands(true, true, true), true, "push").unwrap();
        assert_eq!(
            (k.value.unwrap(), k.source),
            ("token".into(), KeySource::AuthToken)
        );
        let env = KeyEnv {
            auth_token: None,
            ..env
        };
        let k = resolve(&env, cands(true, true, true), true, "push").unwrap();
        assert_eq!(k.value.unwrap(), "flagkey");
        // Keys given now beat the stored one.
        let k = resolve(&env, cands(false, true, true), true, "push").unwrap();
        assert_eq!(k.source, KeySource::AdminFlag);
        let k = resolve(&env, cands(false, true, false), true, "push").unwrap();
        assert_eq!(k.source, KeySource::AdminEnv);
        let no_env = KeyEnv {
            admin_key: None,
            ..env.clone()
        };
        let k = resolve(&no_env, cands(false, true, false), true, "push").unwrap();
        assert_eq!(k.value.unwrap(), "storedkey");
        let none = KeyEnv::default();
        assert!(resolve(&none, cands(false, false, false), true, "push").is_err());
        let k = resolve(&none, cands(false, false, false), false, "pull").unwrap();
        assert_eq!(k.source, KeySource::Anonymous);
        let tty = KeyEnv {
            tty: true,
            ..KeyEnv::default()
        };
        let k = resolve(&tty, cands(false, false, false), true, "push").unwrap();
        assert_eq!(k.source, KeySource::Prompt);
        assert!(k.source.is_admin());
        assert!(!format!("{k:?}").contains("adminflag"));
    }
}
