//! Builds the sqlite3_rsync helper executable that sqlrsync embeds.
//!
//! Sources: `vendor/sqlite3_rsync.c` (put there by `scripts/vendor-sqlite`,
//! which this script runs when vendor/ lacks it) and an SQLite amalgamation:
//! `vendor/sqlite3.c` when a local source tree supplied one, otherwise the one
//! bundled in the `libsqlite3-sys` crate, whose build script hands us its
//! folder as `DEP_SQLITE3_INCLUDE`. Next to them, our own
//! `src/helper/busy_timeout.c` gives the helper's connections a busy timeout
//! (tool/sqlite3_rsync.c itself is compiled unmodified).
//!
//! The helper is compiled with the `cc` crate's compiler (so CC, CFLAGS and
//! cross settings are honoured) into a statically linked executable where the
//! platform allows, then described in `$OUT_DIR/helper_info.rs` (content hash,
//! SQLite version) for `src/helper/`. Cargo reruns this only when a source
//! file or one of the environment variables below changes.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let vendor = manifest.join("vendor");

    println!("cargo:rerun-if-env-changed=SQLRSYNC_SQLITE_SRC");
    println!("cargo:rerun-if-env-changed=SQLRSYNC_STRICT_VENDOR");
    println!("cargo:rerun-if-env-changed=SQLRSYNC_HELPER_DYNAMIC");
    println!("cargo:rerun-if-changed=scripts/vendor-sqlite");
    println!("cargo:rerun-if-changed=vendor/sqlite3_rsync.c");
    // Not vendor/sqlite3.c: a path that does not exist makes Cargo rerun this
    // script (and recompile the helper) on every build. Watching the folder
    // notices that file appearing; when it is used, it is watched below.
    println!("cargo:rerun-if-changed=vendor");
    println!("cargo:rerun-if-changed=vendor/SOURCE");
    println!("cargo:rerun-if-changed=src/helper/busy_timeout.c");

    let tool = vendor.join("sqlite3_rsync.c");
    if !tool.exists()
        || env::var_os("SQLRSYNC_SQLITE_SRC").is_some_and(|_| !vendored_from_env(&vendor))
    {
        run_vendor_script(&manifest);
    }
    if !tool.exists() {
        fail("vendor/sqlite3_rsync.c is missing after scripts/vendor-sqlite ran");
    }

    let amalgamation_dir = if vendor.join("sqlite3.c").exists() {
        vendor.clone()
    } else {
        match env::var_os("DEP_SQLITE3_INCLUDE") {
            Some(dir) => PathBuf::from(dir),
            None => fail(
                "no SQLite amalgamation: libsqlite3-sys (bundled) did not report DEP_SQLITE3_INCLUDE",
            ),
        }
    };
    let sqlite3_c = amalgamation_dir.join("sqlite3.c");
    if !sqlite3_c.exists() {
        fail(&format!("{} does not exist", sqlite3_c.display()));
    }
    println!("cargo:rerun-if-changed={}", sqlite3_c.display());

    let helper = out.join("sqlite3_rsync");
    let busy_timeout = manifest.join("src/helper/busy_timeout.c");
    compile_helper(&[&tool, &busy_timeout], &amalgamation_dir, &helper);

    let bytes = fs::read(&helper).expect("read compiled helper");
    let hash = hex(&Sha256::digest(&bytes));
    let sqlite_version = header_define(&amalgamation_dir.join("sqlite3.h"), "SQLITE_VERSION");
    let source_id = header_define(&amalgamation_dir.join("sqlite3.h"), "SQLITE_SOURCE_ID");
    let vendor_source = fs::read_to_string(vendor.join("SOURCE")).unwrap_or_default();
    let field = |k: &str| {
        vendor_source
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("unknown")
            .to_string()
    };
    let info = format!(
        "/// SHA-256 of the embedded helper executable.\n\
         pub const HELPER_SHA256: &str = {hash:?};\n\
         /// Version of the SQLite library compiled into the helper.\n\
         pub const SQLITE_VERSION: &str = {sqlite_version:?};\n\
         /// `sqlite3_sourceid()` of that library.\n\
         pub const SQLITE_SOURCE_ID: &str = {source_id:?};\n\
         /// SQLite release that tool/sqlite3_rsync.c was taken from.\n\
         pub const TOOL_VERSION: &str = {:?};\n\
         /// Where tool/sqlite3_rsync.c was taken from.\n\
         pub const TOOL_ORIGIN: &str = {:?};\n\
         /// SHA-256 of tool/sqlite3_rsync.c.\n\
         pub const TOOL_SHA256: &str = {:?};\n",
        field("version"),
        field("origin"),
        field("sqlite3_rsync.c.sha256"),
    );
    fs::write(out.join("helper_info.rs"), info).expect("write helper_info.rs");
}

/// True when vendor/ already holds what SQLRSYNC_SQLITE_SRC names, so a
/// rebuild with the variable still set does not fetch again.
fn vendored_from_env(vendor: &Path) -> bool {
    let src = env::var("SQLRSYNC_SQLITE_SRC").unwrap_or_default();
    fs::read_to_string(vendor.join("SOURCE"))
        .map(|s| {
            s.lines()
                .any(|l| l.strip_prefix("src=") == Some(src.as_str()))
        })
        .unwrap_or(false)
}

fn run_vendor_script(manifest: &Path) {
    let script = manifest.join("scripts/vendor-sqlite");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(manifest);
    if env::var_os("SQLRSYNC_SQLITE_SRC").is_some() {
        cmd.arg("--force");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(_) => fail("scripts/vendor-sqlite failed (its messages are above)"),
        Err(e) => fail(&format!("cannot run {}: {e}", script.display())),
    }
}

/// Compiles `sources` (tool/sqlite3_rsync.c and our own C hooks) with the
/// amalgamation into the executable `output`.
fn compile_helper(sources: &[&Path], amalgamation_dir: &Path, output: &Path) {
    let mut build = cc::Build::new();
    build.opt_level(2).debug(false).warnings(false);
    let compiler = build.get_compiler();
    let defines = [
        "-DSQLITE_ENABLE_DBPAGE_VTAB",
        "-DSQLITE_THREADSAFE=0",
        "-DSQLITE_OMIT_LOAD_EXTENSION",
        "-DSQLITE_DEFAULT_MEMSTATUS=0",
        "-DSQLITE_DQS=0",
    ];
    let try_link = |static_link: bool| {
        let mut cmd = compiler.to_command();
        cmd.args(defines)
            .arg("-I")
            .arg(amalgamation_dir)
            .arg("-o")
            .arg(output)
            .args(sources)
            .arg(amalgamation_dir.join("sqlite3.c"))
            .arg("-s");
        if static_link {
            cmd.arg("-static");
        }
        cmd.args(["-lm", "-lpthread"]);
        if !static_link {
            cmd.arg("-ldl");
        }
        cmd.output()
    };
    let want_static = env::var_os("SQLRSYNC_HELPER_DYNAMIC").is_none()
        && env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if want_static {
        match try_link(true) {
            Ok(o) if o.status.success() => return,
            Ok(o) => println!(
                "cargo:warning=static link of the sqlite3_rsync helper failed, linking dynamically: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
            Err(e) => fail(&format!("cannot run the C compiler: {e}")),
        }
    }
    match try_link(false) {
        Ok(o) if o.status.success() => {}
        Ok(o) => fail(&format!(
            "compiling the sqlite3_rsync helper failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("cannot run the C compiler: {e}")),
    }
}

/// Value of `#define NAME "value"` in an SQLite header.
fn header_define(header: &Path, name: &str) -> String {
    let text = fs::read_to_string(header).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with([' ', '\t']))
        .find_map(|rest| {
            let rest = rest.trim();
            rest.strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    panic!("{msg}");
}
