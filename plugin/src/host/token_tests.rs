//! Compile-fail tests of the broker thread's token: rustc compiles `token.rs` (the real file) inside a
//! small crate shaped like this one (`host::token`), once with code that is allowed (it must compile,
//! so a failure below is the token's doing, not the test's) and once per forbidden use, whose error
//! is checked. `--emit=metadata` and no dependency: each case takes a fraction of a second.

use std::path::Path;
use std::process::Command;

const TOKEN_RS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugin/src/host/token.rs");

/// The crate around each case: the host layer may make the token, `log` stands for what needs it.
fn crate_source(case: &str) -> String {
    format!(
        r#"mod host {{
    #[path = {TOKEN_RS:?}]
    pub mod token;
    pub fn here() -> token::BrokerThread {{
        token::BrokerThread::here()
    }}
}}
use host::token::BrokerThread;
pub fn log(_: &BrokerThread, _line: &str) {{}}
pub fn on_the_broker_thread() {{
    let here = host::here();
    log(&here, "allowed");
}}
{case}
"#
    )
}

/// rustc's verdict on one case: Ok, or Err(its messages).
fn compile(name: &str, case: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let src = dir.path().join(format!("{name}.rs"));
    std::fs::write(&src, crate_source(case)).expect("write the case");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--edition=2021", "--crate-type=lib", "--emit=metadata"])
        .arg("--out-dir")
        .arg(dir.path())
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {rustc:?}: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn assert_refused(name: &str, case: &str, expected: &[&str]) {
    let errors = compile(name, case).expect_err("this must not compile");
    for e in expected {
        assert!(
            errors.contains(e),
            "{name}: {e:?} missing from rustc's errors:\n{errors}"
        );
    }
}

#[test]
fn the_token_compiles_where_it_is_allowed() {
    assert!(Path::new(TOKEN_RS).is_file(), "{TOKEN_RS}");
    compile("allowed", "").expect("the allowed uses compile");
}

#[test]
fn the_token_cannot_be_sent_to_another_thread() {
    assert_refused(
        "sent",
        r#"pub fn off_the_broker_thread() {
    let here = host::here();
    std::thread::spawn(move || log(&here, "from another thread"));
}"#,
        &[
            "error[E0277]",
            "cannot be sent between threads safely",
            "BrokerThread",
        ],
    );
}

#[test]
fn the_token_cannot_be_shared_with_another_thread() {
    assert_refused(
        "shared",
        r#"pub fn off_the_broker_thread() {
    let here = host::here();
    std::thread::scope(|s| {
        s.spawn(|| log(&here, "from another thread"));
    });
}"#,
        &[
            "error[E0277]",
            "cannot be shared between threads safely",
            "BrokerThread",
        ],
    );
}

#[test]
fn the_token_cannot_be_made_outside_the_host_layer() {
    assert_refused(
        "made",
        "pub fn forged() -> BrokerThread { BrokerThread::here() }",
        &["error[E0624]", "`here` is private"],
    );
    assert_refused(
        "built",
        "pub fn forged() -> BrokerThread { BrokerThread { _not_send_nor_sync: std::marker::PhantomData } }",
        &["error[E0451]", "private"],
    );
}
