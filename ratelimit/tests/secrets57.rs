//! review57 (secrets): the service's own messages about its command line
//! must not print a Redis password, wherever on the command line it is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{fixture, run_to_exit_with_env};

/// A Redis URL handed to `--redis-url-file` (the flag's name read as
/// "the Redis URL"; `--redis-url` itself is refused with the tip "a similar
/// argument exists: '--redis-url-file'"): the error names the "file", which
/// is the URL, password and all, in the service's log.
#[test]
fn a_url_given_as_the_url_file_is_not_printed_with_its_password() {
    let config = fixture("appguard.yaml").display().to_string();
    let (code, stdout, stderr) = run_to_exit_with_env(
        &[
            "--config",
            &config,
            "--validate",
            "--redis-url-file",
            "redis://default:hunter2-s3cret@redis.internal:6379/0",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "the Redis password was printed: {stdout}{stderr}"
    );
}

/// A stray URL on the command line (`--redis` left out, or a value split
/// by the shell): clap's "unexpected argument" error echoes it. The
/// operator CLI (`appguard-cli`) hides argument values in its command-line
/// errors for this reason; the service does not.
#[test]
fn a_stray_url_on_the_command_line_is_not_echoed_with_its_password() {
    let config = fixture("appguard.yaml").display().to_string();
    for args in [
        vec![
            "--config",
            config.as_str(),
            "redis://default:hunter2-s3cret@redis.internal:6379/0",
        ],
        // `--redis redis://default:$PASS@…` with a space in $PASS.
        vec![
            "--config",
            config.as_str(),
            "--redis",
            "redis://default:hunter2",
            "s3cret@redis.internal:6379/0",
        ],
    ] {
        let (code, stdout, stderr) = run_to_exit_with_env(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "{args:?}: the Redis password was printed: {stdout}{stderr}"
        );
    }
}
